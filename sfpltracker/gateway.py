"""The composition root: every part of the running gateway, built from the config.

``Gateway`` builds the one-way flow, event model (ingest) -> intake (the point of
acknowledgement) -> batcher -> store, with the NATS notifiers and the short links, and hands
each part what it needs; no part reaches back to change the gateway (``tests/
test_interfaces.py`` checks). ``service.py`` builds the web root and the edge on top of it and
lists their metrics. Web resources receive the gateway and call into it; nothing in
``ingest``, ``pipeline`` or ``store`` knows about HTTP. The contracts between the parts:
``store/interface.py``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sfpltracker import __version__
from sfpltracker.config import Config
from sfpltracker.edge.limits import DailyLimiter
from sfpltracker.export import Exporter
from sfpltracker.fsutil import write_atomic
from sfpltracker.ingest import bounds
from sfpltracker.ingest.event import EventModel
from sfpltracker.ingest.urls import UrlNormaliser
from sfpltracker.links.service import ShortLinkService
from sfpltracker.notify.facebook import (
    FacebookOutput,
    facebook_entries,
    make_capture,
    make_outputs,
    total_families,
)
from sfpltracker.notify.nats import NatsNotifier, PublishingIntake, make_notifiers
from sfpltracker.pipeline.batcher import LOADER_HOLD, Batcher
from sfpltracker.pipeline.intake import MemoryIntake
from sfpltracker.privacy import build_enrichers
from sfpltracker.privacy.geoip import open_geoip
from sfpltracker.privacy.identity import CookielessIds, CookiePolicy, DailySalts
from sfpltracker.privacy.ip import IPPolicy, TrustedProxies
from sfpltracker.store.interface import Intake, MetricSource, Store
from sfpltracker.store.schema import DEFAULT_DATABASE
from sfpltracker.workers import LIMIT_KEY_ENV, SINGLE, Role

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


def make_store(cfg: Config, reactor) -> Store:
    entry = cfg.store_entry()
    if entry.Type == "embedded":
        from sfpltracker.store.embedded.store import EmbeddedStore

        return EmbeddedStore(cfg.data_dir, reactor, database=entry.Database or DEFAULT_DATABASE)
    if entry.Type == "clickhouse":
        from sfpltracker.store.clickhouse.store import ClickHouseStore

        return ClickHouseStore.from_config(entry, cfg, reactor)
    if entry.Type == "duckdb":
        from sfpltracker.store.duckdb.store import DuckDBStore

        path = cfg.path(entry.File) if entry.File else cfg.data_dir / "sfpla.duckdb"
        return DuckDBStore(path, cfg.data_dir, reactor, database=entry.Database or DEFAULT_DATABASE)
    raise NotImplementedError(f"store type {entry.Type!r} is not available yet")


def make_intake(
    cfg: Config,
    batcher: Batcher,
    store: Store,
    reactor,
    notifiers: list[NatsNotifier],
    role: Role = SINGLE,
) -> Intake:
    """The point of acknowledgement: the durable spool, RAM with ``Durability: "memory"``, or
    a JetStream stream (the last such Notify entry); NATS publishers wrap it."""
    streams = [n.intake for n in notifiers if n.intake is not None]
    intake: Intake
    if streams:
        intake = streams[-1]
        log.info(
            "durability: the JetStream stream {stream} is the spool (acknowledged after its "
            "PubAck; the local spool and Durability are not used)",
            stream=streams[-1].entry.Stream,
        )
    else:
        intake = _local_intake(cfg, batcher, store, reactor, role)
    publishers = [n.publisher for n in notifiers if n.publisher is not None]
    return PublishingIntake(intake, publishers) if publishers else intake


def _local_intake(cfg: Config, batcher: Batcher, store: Store, reactor, role: Role) -> Intake:
    if cfg.Durability == "memory":
        return MemoryIntake(batcher)
    if role.kind == "worker":  # its own series; the store process loads it
        from sfpltracker.workers.worker_side import RemoteStore, WorkerIntake

        assert isinstance(store, RemoteStore)
        return WorkerIntake(
            cfg.data_dir / "spool",
            role.name,
            batcher,
            reactor,
            store.link,
            max_bytes=cfg.SpoolMaxBytes,
            commit_window=cfg.SpoolCommitWindowMs / 1000,
        )
    from sfpltracker.pipeline.spool_intake import SpoolIntake

    return SpoolIntake(
        cfg.data_dir / "spool",
        batcher,
        reactor,
        store=store,
        max_bytes=cfg.SpoolMaxBytes,
        commit_window=cfg.SpoolCommitWindowMs / 1000,
    )


def _spool_is_local(cfg: Config, notifiers: list[NatsNotifier]) -> bool:
    return cfg.Durability == "spool" and not any(n.intake is not None for n in notifiers)


def output_sink(intake: Intake):
    """What hands the outputs their records: the spool's loader, or the memory intake."""
    inner = getattr(intake, "inner", intake)  # NATS publishing wraps the spool
    return getattr(inner, "loader", inner)


def remote_store(cfg: Config, reactor) -> Store:
    """A worker's store: the store process, over AMP (workers/worker_side.py)."""
    from sfpltracker.workers.worker_side import RemoteStore, StoreLink

    entry = cfg.store_entry()
    return RemoteStore(StoreLink(cfg.data_dir, reactor), entry.Type, entry.Database)


class Gateway:
    def __init__(self, cfg: Config, reactor, store: Store | None = None, role: Role = SINGLE):
        self.cfg = cfg
        self.reactor = reactor
        # Workers > 1: a worker has no store of its own; the store process loads its series.
        self.role = role
        if store is None and role.kind == "worker":
            store = remote_store(cfg, reactor)
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
        # Conversions API outputs (notify/facebook.py): fed by the loader after acceptance.
        # Workers > 1: a worker captures, the store process's series loaders feed the outputs
        # (one outbox, one sender; a worker's own would send the outbox a second time).
        self.outputs: list[FacebookOutput] = (
            make_outputs(cfg, reactor) if role.kind != "worker" else []
        )
        salts = DailySalts(cfg.data_dir / "cookieless", cfg.CookielessSalt.encode())
        self.events = EventModel(
            ip_policy=IPPolicy(cfg.IPMode, ip_secret),
            cookie_policy=CookiePolicy(cfg.RequireConsent, cfg.HonorDNT),
            cookieless=CookielessIds(salts),
            hash_key=cfg.PrefixPrivateHash.encode() or secret,
            drop_bots=cfg.DropBots,
            enrichers=build_enrichers(self.geoip),
            # what the Conversions API outputs need of an event that its row does not keep
            capture=make_capture(cfg),
            normalise_url=(
                UrlNormaliser(cfg.UrlFilter, cfg.UrlFilterMatchGroup) if cfg.NormalizeURLs else None
            ),
        )
        self.store: Store = store if store is not None else make_store(cfg, reactor)
        self.batcher = Batcher(self.store, reactor, cfg.Batching)
        # NATS publishers / JetStream as the spool: they decide what the intake is.
        self.notifiers = make_notifiers(cfg, reactor, self.batcher, worker=role.kind == "worker")
        self.intake: Intake = make_intake(
            cfg, self.batcher, self.store, reactor, self.notifiers, role
        )
        for notifier in self.notifiers:  # "Consume": tic.* messages go through the intake too
            notifier.consume_into(self.intake, self.events.ip_policy)
        # With workers the store process polls the links' version and tells every worker.
        store_link = getattr(self.store, "link", None) if role.kind == "worker" else None
        poll = {"poll_seconds": None} if store_link is not None else {}
        self.links = ShortLinkService(cfg, self.store, reactor, **poll)
        if store_link is not None:
            store_link.links = self.links.cache
        if self.outputs:
            output_sink(self.intake).outputs.extend(self.outputs)
        self.open_connections = 0
        # Parts with a life of their own (the short-link cache that polls the store, ...):
        # each has start() and stop() -> Deferred; started once the store is ready, stopped
        # before it closes.
        self.components: list[Any] = [self.links]
        # The workers' spool series and their loaders: in the store process, and in a single
        # process too, which so loads what workers left when Workers went from N to 1. With a
        # JetStream (or memory) spool, what a spool-mode run left, its main series too.
        self.series: Any = None
        self.store_server: Any = None  # the store process's AMP server for its workers
        self.priority: Any = None  # the store process's CPU priority (StoreNice)
        spool_local = _spool_is_local(cfg, self.notifiers)
        if spool_local:
            self.batcher.hold = LOADER_HOLD  # the spool's loader: fewer, larger inserts
        if role.kind != "worker":
            from sfpltracker.workers.store_side import SeriesLoaders, left_over

            if spool_local or left_over(cfg.data_dir / "spool"):
                self.series = SeriesLoaders(
                    cfg.data_dir / "spool",
                    self.store,
                    reactor,
                    cfg.Batching,
                    self.outputs,
                    left_over_only=not spool_local,
                )
                self.components.append(self.series)
        if role.kind == "store":  # the workers' store reads and writes (a JetStream spool too)
            from sfpltracker.workers.store_side import StoreServer

            loading = self.series if spool_local else None  # workers write series only then
            self.store_server = StoreServer(cfg.data_dir, self.store, loading, reactor)
            self.components.append(self.store_server)
            self.links.cache.listeners.append(self.store_server.links_version)
            if loading is not None and cfg.StoreNice > 0:  # the spools hold the difference
                from sfpltracker.workers.store_priority import StorePriority

                self.priority = StorePriority(reactor, cfg.StoreNice, loading.behind_seconds)
                self.components.append(self.priority)
        self.reporter: Any = None  # Workers > 1: counters to the supervisor, totals back
        if role.kind != "single":
            from sfpltracker.workers.reporter import Reporter

            self.reporter = Reporter(
                cfg.data_dir, reactor, role.kind, role.name, self._counters, self._own_status
            )
            self.components.append(self.reporter)
        # RateLimitPerDay (edge/limits.py); with workers, counted over all of them.
        self.limiter: DailyLimiter | None = None
        if cfg.RateLimitPerDay > 0:
            shared = os.environ.pop(LIMIT_KEY_ENV, "") if role.kind == "worker" else ""
            key = bytes.fromhex(shared) if shared else None
            self.limiter = DailyLimiter(cfg.RateLimitPerDay, reactor, key=key)
            if self.reporter is not None and role.kind == "worker":
                self.reporter.limiter = self.limiter
        # Callables yielding prometheus metric families, read at scrape time; service.py adds
        # the web root's and the edge's.
        self.metric_sources: list[Callable[[], Iterable[Any]]] = []
        if isinstance(self.store, MetricSource):
            self.metric_sources.append(self.store.metric_families)
        self.metric_sources.append(self._intake_metrics)
        self.metric_sources += [n.metrics for n in self.notifiers]
        self.metric_sources.append(self.links.metrics)
        self.metric_sources += [output.metric_families for output in self.outputs]
        if role.kind == "worker":  # NATS counters over every process (JetStream: the loader's)
            for notifier in self.notifiers:
                notifier.totals = self.total_counters
        if role.kind == "worker" and facebook_entries(cfg):  # the store process's outputs
            self.metric_sources.append(lambda: total_families(self.total_counters()))
        if self.series is not None:
            self.metric_sources.append(self.series.metric_families)
        # Scheduled export of new rows to S3 or a directory (export.py), after the links.
        self.exporter: Exporter | None = None
        if cfg.Export.Target and role.kind != "worker":  # the store's process exports
            self.exporter = Exporter(cfg.Export, self.store, cfg.data_dir, reactor, cfg.path("."))
            self.components.append(self.exporter)
            self.metric_sources.append(self.exporter.metric_families)
        self.store_ready = False
        self.counters: dict[str, int] = {
            "events_accepted": 0,
            "events_rejected": 0,
            "requests_refused": 0,
            "payments_accepted": 0,
        }

    def connection_opened(self) -> None:
        self.open_connections += 1

    def connection_closed(self) -> None:
        self.open_connections -= 1

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    @defer.inlineCallbacks
    def start(self):
        yield self.store.start()
        for output in self.outputs:  # before the loader, which replays into them
            yield output.start()
        yield self.intake.start()  # the spool opens its files
        self.store_ready = True
        for notifier in self.notifiers:
            yield notifier.start()
        log.info("store ready: {kind} at {where}", kind=self.store.kind, where=self.store.where)
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
        intake = self.intake  # read at scrape time: a test or bench may swap it
        return intake.metric_families() if isinstance(intake, MetricSource) else ()

    def extra_metrics(self):
        for source in self.metric_sources:
            yield from source()

    def _counters(self) -> dict[str, int]:
        """What this process reports to the supervisor: its counters and, in the store
        process, what its batchers stored (a worker's /metrics shows those too); a worker's
        own batcher stores only with Durability "memory" (through the store process)."""
        out = dict(self.counters)
        for notifier in self.notifiers:
            out.update(notifier.counters())
        for output in self.outputs:
            out.update(output.counters())
        batchers = [self.batcher, *(self.series.batchers() if self.series is not None else [])]
        for batcher in batchers:
            st = batcher.stats
            for key, n in (
                ("batches_stored", st.total_batches),
                ("rows_stored", st.total_items),
                ("batches_failed", st.failed_batches),
                ("insert_attempts_failed", st.failed_attempts),
                *((f"rows_stored_{t}", n) for t, n in st.rows_by_table.items()),
            ):
                out[key] = out.get(key, 0) + n
        return out

    def _own_status(self) -> str:
        return self.intake.health()["status"] if self.store_ready else "down"

    def total_counters(self) -> dict[str, int]:
        """The counters over every process (Workers > 1: the supervisor's totals, exactly as
        it answered, so whichever worker a scrape reaches a counter never goes backwards),
        else this process's."""
        totals = self.reporter.totals if self.reporter is not None else None
        return dict(totals["counters"]) if totals else self.counters

    def refresh_totals(self) -> defer.Deferred | None:
        """Workers > 1: ask the supervisor for the totals now (``/metrics``); else None."""
        return self.reporter.report() if self.reporter is not None else None

    def health(self) -> dict:
        intake = self.intake.health()
        status = intake["status"] if self.store_ready else "down"
        out = {
            "status": status,
            "store": {
                "kind": self.store.kind,
                "ready": self.store_ready,
                "circuit": self.batcher.breaker.state,
            },
            "spool": intake.get("spool"),
        }
        if self.series is not None:
            out["series"] = self.series.report()
            if status == "ok" and self.series.store_failing():
                out["status"] = "degraded"
        totals = self.reporter.totals if self.reporter is not None else None
        if totals:
            out["processes"] = totals["processes"]
            # another process degraded too: a JetStream spool's loader (the store process)
            # that cannot store is this worker's concern as much as its own would be
            others_down = any(
                p["status"] in ("down", "failing", "degraded") for p in totals["processes"]
            )
            if out["status"] == "ok" and others_down:
                out["status"] = "degraded"
        return out
