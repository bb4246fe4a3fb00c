"""What a worker has instead of a store: its own spool series and the store process over AMP.

A worker never opens the store. ``WorkerIntake`` acknowledges records once its own series
(``spool/<worker>``) has them on disk, exactly as ``SpoolIntake`` does, and tells the store
process how far the series is durable after each group commit; the store process's loader
reads the segments and deletes them once stored (``Forget`` keeps this worker's size on disk
right for ``SpoolMaxBytes``). ``RemoteStore`` passes the store reads and writes of the routes
that need them (short links, accounts, ``/ppi/``) to the store process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.protocols import amp

from sfpltracker.pipeline.spool_intake import SpoolIntake, writer_metric_families
from sfpltracker.store.errors import StoreError
from sfpltracker.store.schema import DEFAULT_DATABASE
from sfpltracker.workers import protocol as cmds

log = Logger()

# seconds: how often a worker tells the store process its series grew. Each message wakes the
# store process's loader for a read; at 0.05 s those wakes cost it ~10 us of reactor CPU per
# GET event at 1,950 req/s, at 0.25 s ~5 (docs/performance.md): the loader's batches wait up to
# MaxBatchTime (2 s) anyway, so a quarter of a second later changes no insert.
APPENDED_INTERVAL = 0.25


class _WorkerAMP(amp.AMP):
    def __init__(self, link: StoreLink):
        super().__init__()
        self.link = link

    @cmds.Forget.responder
    def forget(self, series: str, segments: list[int]):
        self.link.forgotten(series, segments)
        return {}

    @cmds.LinksVersion.responder
    def links_version(self, version: list):
        self.link.links_told(tuple(version))
        return {}

    # ACME with workers (workers/tls_share.py): the store process obtains, every worker serves.
    @cmds.AcmeHttp01.responder
    def acme_http01(self, token: str, domain: str, key_authorization: str, remove: bool):
        self.link.tls_receiver().take_http01(token, domain, key_authorization, remove)
        return {}

    @cmds.AcmeAlpn.responder
    def acme_alpn(self, domain: str, fullchain: bytes, key: bytes, remove: bool):
        self.link.tls_receiver().take_alpn(domain, fullchain, key, remove)
        return {}

    @cmds.TlsCertificate.responder
    def tls_certificate(self, domain: str, fullchain: bytes, key: bytes):
        self.link.tls_receiver().take_certificate(domain, fullchain, key)
        return {}

    def connectionMade(self):
        super().connectionMade()
        self.link.proto = self

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.link.lost(self)


class StoreLink:
    """The worker's connection to the store process, re-made with backoff when it drops."""

    def __init__(self, data_dir: Path, reactor):
        self.reactor = reactor
        self.path = cmds.socket_path(data_dir, cmds.STORE_SOCKET)
        self.proto: _WorkerAMP | None = None
        self.intake: WorkerIntake | None = None
        self.tls: Any = None  # tls_share.WorkerTls: set by the edge when it serves TLS
        self.links: Any = None  # the short-link cache, told the store's version (the gateway)
        self.connects = 0
        factory = protocol.Factory.forProtocol(lambda: _WorkerAMP(self))
        self.service = ClientService(
            endpoints.UNIXClientEndpoint(reactor, self.path),  # type: ignore[arg-type]
            factory,  # type: ignore[arg-type]
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=2.0),
            clock=reactor,
            prepareConnection=self._connected,
        )

    @property
    def connected(self) -> bool:
        return self.proto is not None

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> defer.Deferred:
        return self.service.stopService()

    def _connected(self, proto) -> defer.Deferred | None:
        self.connects += 1
        if self.intake is not None and self.intake.started:
            return self.intake.hello()
        return None

    def lost(self, proto: _WorkerAMP) -> None:
        if self.proto is proto:
            self.proto = None

    def tls_receiver(self):
        if self.tls is None:
            raise RuntimeError("this worker has no TLS listener")
        return self.tls

    def links_told(self, version: tuple) -> None:
        if self.links is not None:
            self.links.told(version).addErrback(
                lambda f: log.warn("short links not refreshed: {why}", why=f.getErrorMessage())
            )

    def forgotten(self, series: str, segments: list[int]) -> None:
        if self.intake is not None and series == self.intake.series:
            self.intake.writer.forget(segments)

    def call(self, command, **kw) -> defer.Deferred:
        if self.proto is None:
            return defer.fail(StoreError("the store process is not reachable"))
        return self.proto.callRemote(command, **kw)

    def notify(self, command, **kw) -> bool:
        """A command without an answer; dropped when disconnected (``Hello`` catches up)."""
        if self.proto is None:
            return False
        try:
            self.proto.callRemote(command, **kw)
        except Exception:  # never into the spool writer's commit that called us
            log.failure("the store process link: {command}", command=command.__name__)
            return False
        return True


class RemoteStore:
    """The store as a worker sees it: reads and writes done by the store process."""

    insert_tokens = False
    cluster = ""
    server_version = ""
    deadletters: Any = None  # the store process keeps them

    def __init__(self, link: StoreLink, kind: str, database: str = ""):
        self.link = link
        self.kind = kind
        self.database = database or DEFAULT_DATABASE

    @property
    def where(self) -> str:
        return f"the store process ({self.link.path})"

    def start(self) -> defer.Deferred:
        self.link.start()
        return defer.succeed(None)

    def stop(self) -> defer.Deferred:
        return self.link.stop()

    def load_schema(self) -> defer.Deferred:
        return defer.succeed(0)  # the store process loads it

    def insert(self, table, rows, dedup=False, token=None) -> defer.Deferred:
        d = self.link.call(cmds.Insert, table=table, rows=rows, dedup=dedup, token=token)
        return d.addCallback(lambda r: r["stored"])

    def without_stored(self, table, rows) -> defer.Deferred:
        return defer.fail(StoreError("a worker does not load its spool"))

    def query(self, sql, fmt="JSONEachRow", params=None, database=None) -> defer.Deferred:
        d = self.link.call(cmds.Query, sql=sql, fmt=fmt, params=params or {}, database=database)
        return d.addCallback(lambda r: r["body"])

    def user_query(self, sql, fmt, database=None, limits=None) -> defer.Deferred:
        return defer.fail(StoreError("the query listener is the store process's"))

    def execute(self, sql) -> defer.Deferred:
        return self.link.call(cmds.Execute, sql=sql).addCallback(lambda r: r["body"])

    def ping(self) -> defer.Deferred:
        return self.link.call(cmds.Ping)

    def metric_families(self):
        return ()  # the store process reports the store's


class WorkerIntake(SpoolIntake):
    """``SpoolIntake`` writing this worker's series only; the store process loads it."""

    def __init__(self, directory: Path, series: str, batcher, reactor, link: StoreLink, **kw):
        super().__init__(directory, batcher, reactor, series=series, **kw)
        self.series = series
        self.link = link
        link.intake = self
        self._unsent_records = 0
        self._appended_call = None
        self._told_segment = 0  # the newest segment the store process was told of

    @defer.inlineCallbacks
    def start(self):
        yield self.writer.open()
        self.started = True
        self.writer.listeners.append(self._appended)
        if self.link.connected:
            yield self.hello()

    def hello(self) -> defer.Deferred:
        sizes = {str(seq): size for seq, size in self.writer.sizes.items()}
        d = self.link.call(cmds.Hello, series=self.series, sizes=sizes)
        d.addErrback(lambda f: log.warn("spool: hello to the store process: {f}", f=f.value))
        return d

    def _appended(self) -> None:
        """After a group commit: tell the store process within ``APPENDED_INTERVAL``, once for
        every commit meanwhile. Per commit (hundreds a second under load), the message and
        the disk read it starts in the store process cost more than the loader needs: its
        batches wait up to ``MaxBatchTime`` anyway."""
        if self._appended_call is None:
            self._appended_call = self.reactor.callLater(APPENDED_INTERVAL, self._send_appended)

    def _send_appended(self) -> None:
        if self._appended_call is not None and self._appended_call.active():
            self._appended_call.cancel()
        self._appended_call = None
        end = self.writer.end
        # A segment the writer finished since the last message goes first with its final
        # size: the loader moves on to a newer segment from where it knows an older one to
        # end, so without it the frames committed there meanwhile were never loaded (and
        # the segment was deleted once the loader passed it).
        for seq in sorted(s for s in self.writer.sizes if self._told_segment <= s < end.segment):
            self.link.notify(
                cmds.Appended,
                series=self.series,
                segment=seq,
                offset=self.writer.sizes[seq],
                records=0,
            )
        if self.link.notify(
            cmds.Appended,
            series=self.series,
            segment=end.segment,
            offset=end.offset,
            records=self._unsent_records,
        ):
            self._unsent_records = 0
            self._told_segment = end.segment

    def _written(self, end, records, accepted_ms, size) -> None:
        self._unsent_records += len(records)  # the store process's loader reads them from disk

    @defer.inlineCallbacks
    def close(self):
        self.closing = True
        if not self.started:
            return
        yield self.writer.flush()
        self._send_appended()  # the last commit's end, before the link closes
        yield self.writer.close()

    def store_unreachable(self) -> bool:
        return not self.link.connected

    def _retry_after(self) -> int:
        return 5 if self.store_unreachable() else 1

    def report(self) -> dict:
        w = self.writer
        return {
            "durability": "spool",
            "directory": str(w.directory),
            "series": self.series,
            "bytes": w.bytes_on_disk,
            "max_bytes": self.max_bytes,
            "segments": len(w.sizes),
            "commits": w.groups,
            "fsync": w.fsync.report(),
            "write_errors": w.write_errors,
            "last_error": w.last_error,
            "refused_requests": self.refused,
            "store_reachable": not self.store_unreachable(),
            "free_disk_bytes": self._free_disk,
        }

    def metric_families(self):
        w = self.writer
        yield GaugeMetricFamily(
            "sfpl_spool_bytes", "Bytes of spool segments on disk", w.bytes_on_disk
        )
        yield from writer_metric_families(w, self.refused_reasons)
