"""The NATS connection the publisher and JetStream share: nats-py on Twisted's asyncio reactor.

nats-py is asyncio code: the gateway runs on Twisted's asyncio reactor (``notify.reactor``) and
coroutines are bridged with ``Deferred.fromFuture`` / ``asFuture``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

TABLE_HEADER = "Sfpl-Table"
MSG_ID_HEADER = "Nats-Msg-Id"
DUPLICATE_WINDOW = 120.0  # seconds JetStream remembers a Nats-Msg-Id


def deferred(coro) -> defer.Deferred:
    """Run a coroutine on the reactor's asyncio loop; its result as a Deferred."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


def to_json(row: dict) -> bytes:
    return json.dumps(row, separators=(",", ":"), default=str).encode()


def message_id(table: str, row: dict, payload: bytes) -> str:
    """The JetStream dedup id: the event's eid, else the row's id, else a hash of the row."""
    if table == "events" and row.get("eid"):
        return str(row["eid"])
    key = row.get("id") or hashlib.sha256(payload).hexdigest()[:32]
    return f"{table}:{key}"


def subject_for(subject: str, table: str) -> str:
    return subject if table == "events" else f"{subject}.{table}"


@dataclass
class NatsStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    publish_failed: int = 0
    js_published: int = 0
    js_refused: int = 0
    loaded: int = 0
    redelivered: int = 0
    load_failed: int = 0
    poison: int = 0
    resent: int = 0  # interrupted inserts sent again from the journal
    copies: int = 0  # messages a fetch held twice (loaded once)


class NatsClient:
    """One nats-py connection that connects in the background and reconnects forever.

    Start-up never waits for NATS unless the entry is ``Critical``; until it is connected the
    plain publisher counts failures and the JetStream intake refuses (503).
    """

    def __init__(self, entry, index: int, stats: NatsStats):
        self.entry = entry
        self.index = index
        self.stats = stats
        self.servers = [h if "://" in h else f"nats://{h}" for h in entry.Hosts]
        # What logs and errors say: no credentials (``nats://user:password@host`` is allowed).
        self.shown = ", ".join(_without_userinfo(s) for s in self.servers)
        self.nc: Any = None  # nats.aio.client.Client once connected
        self.js: Any = None  # its JetStream context
        # Set while connected; made in start(), on the asyncio loop.
        self.ready: asyncio.Event = asyncio.Event()
        self._task: asyncio.Future | None = None
        self._reported_failure = False

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self) -> defer.Deferred:
        self.ready = asyncio.Event()
        self._task = asyncio.ensure_future(self._connect())
        if self.entry.Critical:
            return deferred(self._wait_ready(self.entry.Timeout))
        return defer.succeed(None)

    async def _wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise ConnectionError(
                f"Notify[{self.index}] is Critical and NATS at {self.shown} "
                f"did not answer within {timeout:.0f}s"
            ) from None

    async def connected_within(self, timeout: float) -> bool:
        """Wait until connected, at most ``timeout`` seconds; whether it is (never raises)."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _connect(self) -> None:
        import nats

        options: dict[str, Any] = dict(
            servers=self.servers,
            name="sfpltracker",
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # also retries the first connect, in the background
            reconnect_time_wait=1,
            connect_timeout=max(1, int(self.entry.Timeout)),
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_connected,
        )
        tls = self._tls()
        if tls is not None:
            options["tls"] = tls
        if self.entry.Password:
            options.update(user=self.entry.Username, password=self.entry.Password)
        self.nc = await nats.connect(**options)
        self.js = self.nc.jetstream(timeout=self.entry.Timeout)
        await self._on_connected()

    def _tls(self) -> ssl.SSLContext | None:
        e = self.entry
        if not (e.Secure or e.CACert or e.Cert):
            return None
        context = ssl.create_default_context(cafile=e.CACert or None)
        if e.Cert:
            context.load_cert_chain(e.Cert, e.Key or None)
        return context

    async def _on_connected(self) -> None:
        self.stats.connects += 1
        self._reported_failure = False
        self.ready.set()
        log.info("NATS connected: {servers}", servers=self.shown)

    async def _on_disconnected(self) -> None:
        if self.ready.is_set():
            self.stats.disconnects += 1
            log.warn("NATS disconnected from {servers}; reconnecting", servers=self.shown)

    async def _on_error(self, e: Exception) -> None:
        if not self._reported_failure:  # one line per outage, not one per attempt
            self._reported_failure = True
            log.warn("NATS: {error}", error=f"{type(e).__name__}: {e}" if str(e) else repr(e))

    def stop(self) -> defer.Deferred:
        return deferred(self._close())

    async def _close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            if self.connected:
                try:
                    await self.nc.flush(timeout=2)  # what the publisher handed over leaves now
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            await self.nc.close()


def _without_userinfo(url: str) -> str:
    """``nats://user:password@host:4222`` -> ``nats://host:4222``."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return scheme + sep + netloc.rpartition("@")[2] + slash + path
