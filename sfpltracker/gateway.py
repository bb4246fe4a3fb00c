"""The running gateway's parts, built from the config and shared by every listener.

``Gateway`` owns the one-way flow: event model (ingest) -> intake (the point of
acknowledgement) -> batcher -> store. Web resources receive it and call into it; nothing in
``ingest``, ``pipeline`` or ``store`` knows about HTTP.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from sfpltracker import __version__, admin
from sfpltracker.config import Config
from sfpltracker.fsutil import write_atomic
from sfpltracker.ingest import bounds
from sfpltracker.ingest.event import EventModel
from sfpltracker.notify import facebook as notify_facebook
from sfpltracker.notify import nats as notify_nats
from sfpltracker.pipeline.batcher import Batcher
from sfpltracker.pipeline.intake import MemoryIntake
from sfpltracker.privacy import build_enrichers
from sfpltracker.privacy.geoip import open_geoip
from sfpltracker.privacy.identity import CookielessIds, CookiePolicy, DailySalts
from sfpltracker.privacy.ip import IPPolicy, TrustedProxies
from sfpltracker.store.schema import DEFAULT_DATABASE

log = Logger()


def load_or_create_secret(path: Path, configured: str = "") -> bytes:
    """A secret from the config, else one generated once and kept in ``DataDirectory``."""
    if configured:
        return configured.encode()
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    write_atomic(path, value, 0o600)
    return value


def make_store(cfg: Config, reactor):
    entry = cfg.store_entry()
    if entry.Type == "embedded":
        from sfpltracker.store.embedded.store import EmbeddedStore

        return EmbeddedStore(cfg.data_dir, reactor, database=entry.Database or DEFAULT_DATABASE)
    if entry.Type == "clickhouse":
        from sfpltracker.store.clickhouse.store import ClickHouseStore

        return ClickHouseStore.from_config(entry, cfg, reactor)
    raise NotImplementedError(f"store type {entry.Type!r} is not available yet")


def make_intake(cfg: Config, batcher, store, reactor):
    """The point of acknowledgement: the durable spool, or RAM with ``Durability: "memory"``."""
    if cfg.Durability == "memory":
        return MemoryIntake(batcher)
    from sfpltracker.pipeline.spool_intake import SpoolIntake

    return SpoolIntake(
        cfg.data_dir / "spool",
        batcher,
        reactor,
        store=store,
        max_bytes=cfg.SpoolMaxBytes,
        commit_window=cfg.SpoolCommitWindowMs / 1000,
    )


class Gateway:
    def __init__(self, cfg: Config, reactor, store=None):
        self.cfg = cfg
        self.reactor = reactor
        self.version = __version__
        self.started_at = time.time()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        secret = load_or_create_secret(cfg.data_dir / "secret.key")
        self.trusted_proxies = TrustedProxies(cfg.TrustedProxies)
        ip_secret = cfg.IPHashSecret.encode() if cfg.IPHashSecret else secret
        # GeoIP reads a local file only (GeoIPDatabase); None: no geo fields, /ppi/geoip 503.
        self.geoip = open_geoip(cfg.path(cfg.GeoIPDatabase)) if cfg.GeoIPDatabase else None
        # How deep, how many keys, how big client JSON may be (ingest/bounds.py).
        bounds.configure(bounds.JsonLimits.from_config(cfg))
        salts = DailySalts(cfg.data_dir / "cookieless", cfg.CookielessSalt.encode())
        self.events = EventModel(
            ip_policy=IPPolicy(cfg.IPMode, ip_secret),
            cookie_policy=CookiePolicy(cfg.RequireConsent, cfg.HonorDNT),
            cookieless=CookielessIds(salts),
            hash_key=cfg.PrefixPrivateHash.encode() or secret,
            drop_bots=cfg.DropBots,
            enrichers=build_enrichers(self.geoip),
        )
        self.store = store if store is not None else make_store(cfg, reactor)
        self.batcher = Batcher(self.store, reactor, cfg.Batching)
        self.intake = make_intake(cfg, self.batcher, self.store, reactor)
        self.open_connections = 0
        # Callables yielding prometheus metric families (spool, TLS, ...), read at scrape time.
        self.metric_sources: list = []
        # Parts with a life of their own (the short-link cache that polls the store, ...):
        # each has start() and stop() -> Deferred; started once the store is ready, stopped
        # before it closes.
        self.components: list = []
        if hasattr(self.store, "metric_families"):
            self.metric_sources.append(self.store.metric_families)
        self.metric_sources.append(self._intake_metrics)
        self.store_ready = False
        self.admin_token = ""
        self.counters: dict[str, int] = {
            "events_accepted": 0,
            "events_rejected": 0,
            "requests_refused": 0,
            "payments_accepted": 0,
        }
        # NATS publishers / JetStream spool (may wrap or replace self.intake); last, on purpose.
        self.notifiers = notify_nats.attach(self)
        # Conversions API outputs, fed by the loader after acceptance (notify/facebook.py).
        self.outputs = notify_facebook.attach(self)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    @defer.inlineCallbacks
    def start(self):
        yield self.store.start()
        for output in self.outputs:  # before the loader, which replays into them
            yield output.start()
        start_intake = getattr(self.intake, "start", None)  # the spool opens its files
        if start_intake is not None:
            yield start_intake()
        self.store_ready = True
        for notifier in self.notifiers:
            yield notifier.start()
        self.admin_token = admin.create_token(self.cfg.data_dir)
        log.info("store ready: {kind} at {where}", kind=self.store.kind, where=_where(self.store))
        for component in self.components:
            yield component.start()

    @defer.inlineCallbacks
    def stop(self):
        for component in reversed(self.components):
            yield component.stop()
        try:
            yield self.intake.close()
            for notifier in reversed(self.notifiers):
                yield notifier.stop()
            for output in self.outputs:
                yield output.stop()
        finally:
            self.batcher.stop()
            yield self.store.stop()

    def _intake_metrics(self):
        # Read at scrape time: another part may have wrapped or replaced the intake.
        source = getattr(self.intake, "metric_families", None)
        return source() if source is not None else ()

    def extra_metrics(self):
        for source in self.metric_sources:
            yield from source()

    def health(self) -> dict:
        intake = self.intake.health()
        return {
            "status": intake["status"] if self.store_ready else "down",
            "store": {
                "kind": self.store.kind,
                "ready": self.store_ready,
                "circuit": self.batcher.breaker.state,
            },
            "spool": intake.get("spool"),
        }


def _where(store) -> str:
    return str(getattr(store, "where", "") or getattr(store, "path", ""))
