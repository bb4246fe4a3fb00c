"""The store process's side: the workers' spool series loaded, the store served over AMP.

Each worker writes its own series ``spool/<worker>``; here one ``Loader`` per series (the same
loader as the single process's, with its insert journal in the series' directory) reads it
into the store through one batcher shared by every series: a chDB insert costs ~100 ms of
CPU for its materialized views whatever its size, so N workers' rows go in one insert per
``MaxBatchTime``, not N. A batch holding rows of several series is begun in each of their
journals with every entry's span (``JournalBatch.spans``), so the loader of any of them can
rebuild the whole batch and finish it after a crash.

A loader may read a series only as far as its writer made it durable. ``RemoteSeries`` is the
loader's view of a writer in another process: at start-up the segments on disk (the last one
up to its last whole, checksummed frame), then the durable ends the worker sends after each
group commit (``Appended``) or when it (re)connects (``Hello``). Segments the loader deletes are
sent back to their worker (``Forget``).
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer, endpoints, protocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols import amp

from sfpltracker.pipeline.batcher import LOADER_HOLD, Batcher
from sfpltracker.pipeline.loader import Loader
from sfpltracker.pipeline.spool import (
    MAGIC,
    Position,
    list_segments,
    load_committed,
    scan_segment,
    segment_path,
)
from sfpltracker.pipeline.spool_intake import SERIES, SHUTDOWN_DRAIN_SECONDS
from sfpltracker.workers import protocol as cmds
from sfpltracker.workers.tls_share import TlsShare

log = Logger()


def is_worker_series(name: str) -> bool:
    return name != SERIES and not name.startswith(".")


class RemoteSeries:
    """What a ``Loader`` uses of a ``SpoolWriter``, for a series another process writes."""

    def __init__(self, directory: Path, name: str, on_forget):
        self.directory = directory
        self.name = name
        self.sizes: dict[int, int] = {}
        self.first_new = Position(0, 0)
        self.listeners: list = []
        self._on_forget = on_forget
        self.loader: Loader | None = None

    def scan(self) -> dict[int, int]:
        """The durable sizes on disk (blocking, on a thread): the writer may be mid-write in
        the last segment, so that one counts up to its last whole frame."""
        sizes = {}
        segments = list_segments(self.directory)
        for seq in segments:
            try:
                sizes[seq] = segment_path(self.directory, seq).stat().st_size
            except FileNotFoundError:
                continue
        if segments and segments[-1] in sizes:
            last = segments[-1]
            valid = scan_segment(segment_path(self.directory, last), verify=True).valid_end
            sizes[last] = max(valid, len(MAGIC))
        return sizes

    def adopt(self, scanned: dict[int, int]) -> None:
        """Start from the scan, with what ``appended`` learnt meanwhile (reactor thread)."""
        for seq, size in self.sizes.items():
            scanned[seq] = max(size, scanned.get(seq, 0))
        self.sizes = scanned
        self.first_new = self.end  # everything before it may have been loaded before

    @property
    def end(self) -> Position:
        if not self.sizes:
            return Position(0, 0)
        seq = max(self.sizes)
        return Position(seq, self.sizes[seq])

    def forget(self, segments) -> None:
        segments = [s for s in segments if s in self.sizes]
        for seq in segments:
            del self.sizes[seq]
        if segments:
            self._on_forget(self.name, segments)

    def appended(self, segment: int, offset: int, records: int = 0) -> None:
        if self.sizes and segment < min(self.sizes):
            return  # a segment already loaded and deleted
        self.sizes[segment] = max(offset, self.sizes.get(segment, 0))
        loader = self.loader
        if loader is not None and records:  # what SpoolIntake tells its loader in offer()
            loader.pending_records += records
            if loader.oldest_ms is None:
                loader.oldest_ms = int(loader.reactor.seconds() * 1000)
        for listener in list(self.listeners):
            listener()

    def hello(self, sizes: dict[int, int]) -> None:
        floor = min(self.sizes) if self.sizes else 0
        for seq, size in sizes.items():
            if seq >= floor:
                self.sizes[seq] = max(size, self.sizes.get(seq, 0))
        for listener in list(self.listeners):
            listener()


class SeriesLoaders:
    """Every worker series in ``spool/``, each with its loader; a ``Gateway`` component."""

    def __init__(self, spool_dir: Path, store, reactor, batching, outputs=(), left_over_only=False):
        self.spool_dir = Path(spool_dir)
        # The spool is not local (JetStream, memory): no process writes a series any more;
        # load what an earlier spool-mode run left, the single process's main series too.
        self.left_over_only = left_over_only
        self.store = store
        self.reactor = reactor
        self.batching = batching
        self.outputs = list(outputs)
        self.series: dict[str, tuple[RemoteSeries, Loader, Batcher]] = {}
        # One batcher for every series: one insert (and one part per view) for all of them.
        self.batcher = Batcher(store, reactor, batching, hold=LOADER_HOLD)
        # Known at once, so the durable ends sent while its loader starts are not lost.
        self.remote: dict[str, RemoteSeries] = {}
        self._adding: dict[str, defer.Deferred] = {}
        self.connections: dict[str, amp.AMP] = {}
        self.started = False

    @defer.inlineCallbacks
    def start(self):
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        names = yield deferToThread(_series_names, self.spool_dir, self.left_over_only)
        for name in names:
            yield self.ensure(name)
        self.started = True

    def ensure(self, name: str) -> defer.Deferred:
        """The loader of ``name``, started once (concurrent callers wait for the same)."""
        if name in self.series:
            return defer.succeed(self.series[name])
        if name not in self._adding:
            self._adding[name] = self._add(name)
        d: defer.Deferred = defer.Deferred()

        def also(result):
            d.callback(result)
            return result

        self._adding[name].addBoth(also)
        return d

    @defer.inlineCallbacks
    def _add(self, name: str):
        try:
            series = self.remote[name] = RemoteSeries(self.spool_dir / name, name, self._forget)
            scanned = yield deferToThread(series.scan)
            series.adopt(scanned)
            batcher = self.batcher
            loader = Loader(series, batcher, self.reactor, store=self.store)  # type: ignore[arg-type]
            loader.outputs.extend(self.outputs)
            loader.output_series = name  # its positions are its own (the outbox's replay marks)
            series.loader = loader
            yield loader.start()
        finally:
            del self._adding[name]  # a failed start is tried again by the next Hello
        log.info(
            "spool {name}: loading a worker's series from segment {seg} offset {off}",
            name=name,
            seg=loader.read_pos.segment,
            off=loader.read_pos.offset,
        )
        self.series[name] = (series, loader, batcher)
        return self.series[name]

    def _forget(self, name: str, segments: list[int]) -> None:
        conn = self.connections.get(name)
        if conn is not None:
            conn.callRemote(cmds.Forget, series=name, segments=segments)

    @defer.inlineCallbacks
    def hello(self, name: str, sizes: dict[int, int], conn: amp.AMP):
        if not is_worker_series(name):
            raise ValueError(f"not a worker series: {name}")
        self.connections[name] = conn
        series, _, _ = yield self.ensure(name)
        series.hello(sizes)

    def appended(self, name: str, segment: int, offset: int, records: int) -> None:
        series = self.remote.get(name)
        if series is not None:
            series.appended(segment, offset, records)
        elif is_worker_series(name):
            self.ensure(name)  # a series not seen yet (its Hello raced): load it

    def disconnected(self, conn: amp.AMP) -> None:
        for name, c in list(self.connections.items()):
            if c is conn:
                del self.connections[name]
                self._rescan(name)

    def _rescan(self, name: str) -> None:
        """A worker's link dropped (it stopped or died): what it made durable since its last
        ``Appended`` (sent at most every 50 ms) is loaded now, not at its next ``Hello``."""
        series = self.remote.get(name)
        if series is None:
            return
        d = deferToThread(series.scan)
        d.addCallback(series.hello)
        d.addErrback(lambda f: log.warn("spool {name}: rescan: {f}", name=name, f=f.value))

    @defer.inlineCallbacks
    def stop(self):
        """Load what the workers made durable (they stop first), then stop the loaders."""
        try:
            for series, loader, _ in list(self.series.values()):
                try:
                    yield loader.drain(SHUTDOWN_DRAIN_SECONDS)
                    if loader.pending_records > 0:
                        log.info(
                            "spool {name}: {n} records stay for the next start",
                            name=series.name,
                            n=loader.pending_records,
                        )
                finally:
                    yield loader.stop()
        finally:
            self.batcher.stop()

    # -- numbers ------------------------------------------------------------------------------

    def store_failing(self) -> bool:
        return any(ld.store_failing for _, ld, _ in self.series.values())

    def behind_seconds(self) -> float:
        """How long the oldest acknowledged record of any series has waited to be stored."""
        return max((ld.oldest_pending_age() for _, ld, _ in self.series.values()), default=0.0)

    def report(self) -> dict:
        return {
            name: {
                "records_pending": max(0, ld.pending_records),
                "loaded_records": ld.loaded_records,
                "replayed_records": ld.replayed_records,
                "committed": {"segment": ld.committed.segment, "offset": ld.committed.offset},
                "bytes": sum(series.sizes.values()),
                "connected": name in self.connections,
            }
            for name, (series, ld, _) in sorted(self.series.items())
        }

    def metric_families(self):
        loaders = [ld for _, ld, _ in self.series.values()]
        yield GaugeMetricFamily(
            "sfpl_workers_spool_records_pending",
            "Acknowledged records in the workers' spool series not yet confirmed stored",
            sum(max(0, ld.pending_records) for ld in loaders),
        )
        yield CounterMetricFamily(
            "sfpl_workers_spool_loaded_records",
            "Records confirmed stored from the workers' spool series",
            sum(ld.loaded_records for ld in loaders),
        )

    def batchers(self) -> list[Batcher]:
        return [self.batcher] if self.series else []


def _series_names(spool_dir: Path, main_too: bool = False) -> list[str]:
    """Worker series with a segment (a worker's first segment exists once it opened); with
    ``main_too`` the single process's series as well."""
    try:
        entries = list(os.scandir(spool_dir))
    except FileNotFoundError:
        return []
    return sorted(
        e.name
        for e in entries
        if e.is_dir()
        and (is_worker_series(e.name) or (main_too and e.name == SERIES))
        and list_segments(Path(e.path))
    )


def left_over(spool_dir: Path) -> bool:
    """Whether a spool-mode run left records past a series' committed position."""
    for name in _series_names(spool_dir, main_too=True):
        directory = Path(spool_dir) / name
        done = load_committed(directory) or Position(0, 0)
        for seq in list_segments(directory):
            try:
                size = segment_path(directory, seq).stat().st_size
            except FileNotFoundError:
                continue
            if size > len(MAGIC) and Position(seq, size) > done:
                return True
    return False


class _StoreAMP(amp.AMP):
    def __init__(self, server: StoreServer):
        super().__init__()
        self.server = server

    @cmds.Hello.responder
    def hello(self, series: str, sizes: dict):
        if self.server.loaders is None:  # a JetStream spool: workers publish to the stream
            raise ValueError("this store process loads no spool series (JetStream is the spool)")
        d = self.server.loaders.hello(series, {int(k): int(v) for k, v in sizes.items()}, self)
        return d.addCallback(lambda _: {})

    @cmds.Appended.responder
    def appended(self, series: str, segment: int, offset: int, records: int):
        if self.server.loaders is not None:
            self.server.loaders.appended(series, segment, offset, records)
        return {}

    @cmds.Query.responder
    def query(self, sql: str, fmt: str, params: dict, database: str | None):
        d = self.server.store.query(sql, fmt, params=params or None, database=database)
        return d.addCallback(lambda body: {"body": body})

    @cmds.Insert.responder
    def insert(self, table: str, rows: list, dedup: bool, token: str | None):
        d = self.server.store.insert(table, rows, dedup=dedup, token=token)
        return d.addCallback(lambda n: {"stored": int(n or 0)})

    @cmds.Execute.responder
    def execute(self, sql: str):
        return self.server.store.execute(sql).addCallback(lambda body: {"body": body or b""})

    @cmds.Ping.responder
    def ping(self):
        return self.server.store.ping().addCallback(lambda _: {})

    def connectionMade(self):
        super().connectionMade()
        self.server.tls.attach(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.server.tls.detach(self)
        if self.server.loaders is not None:
            self.server.loaders.disconnected(self)


class StoreServer:
    """The AMP server the workers call, on ``DataDirectory/store.amp``; a ``Gateway``
    component started once the store is ready."""

    def __init__(self, data_dir: Path, store, loaders: SeriesLoaders | None, reactor):
        self.path = cmds.socket_path(data_dir, cmds.STORE_SOCKET)
        self.store = store
        self.loaders = loaders
        self.reactor = reactor
        self.port = None
        # ACME's challenge answers and certificates, pushed to every worker (tls_share.py).
        self.tls = TlsShare(reactor)

    def links_version(self, version: tuple) -> None:
        """Tell every worker the short links' version this process's cache just read: only
        this process polls the store for it (links/cache.py)."""
        for conn in list(self.tls.conns):  # the connected workers (TlsShare keeps the set)
            try:
                conn.callRemote(cmds.LinksVersion, version=list(version))
            except Exception:  # a connection going away; the next poll tells it again
                log.failure("short-link version not sent to a worker")

    @defer.inlineCallbacks
    def start(self):
        try:
            os.unlink(self.path)  # left by a store process that was killed
        except FileNotFoundError:
            pass
        factory = protocol.Factory.forProtocol(lambda: _StoreAMP(self))
        self.port = yield endpoints.UNIXServerEndpoint(self.reactor, self.path, mode=0o600).listen(
            factory
        )

    @defer.inlineCallbacks
    def stop(self):
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
