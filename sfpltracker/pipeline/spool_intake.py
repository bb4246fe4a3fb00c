"""``SpoolIntake``: acknowledge records once they are on disk in the spool.

Same contract as ``MemoryIntake.accept(records)``: the Deferred fires when the records are
safe — here, after the group commit (write + fdatasync) that holds them — or fails with
``Refused`` (503 + ``Retry-After``) when the spool cannot take them: over ``SpoolMaxBytes``,
the disk nearly full, a write error, or shutting down. A loader drains the spool into the
store through the batcher; while the store is down, records wait on disk and ``/health`` says
``degraded``; when nothing can be accepted it says ``down``.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from twisted.internet import defer
from twisted.logger import Logger

from sfpltracker.pipeline.intake import Record, Refused
from sfpltracker.pipeline.loader import Loader
from sfpltracker.pipeline.spool import Frame, Position, SpoolWriter, encode_frame

log = Logger()

SERIES = "main"  # the single process's (and the store process's) series; workers: w1, w2, ...
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
MIN_FREE_DISK_BYTES = 32 * 1024 * 1024  # refuse before the disk is completely full
FREE_DISK_CHECK_SECONDS = 1.0
SHUTDOWN_DRAIN_SECONDS = 15.0


def segment_bytes_for(max_bytes: int) -> int:
    """Segments of an eighth of the spool: loaded segments are deleted soon enough that the
    limit stays about the bytes waiting, not the bytes already loaded."""
    return max(MIN_SEGMENT_BYTES, min(MAX_SEGMENT_BYTES, max_bytes // 8))


def writer_metric_families(writer: SpoolWriter, refused_reasons: dict[str, int]):
    """The writing side's metrics (group commits, errors, refusals, fsync latency): the same
    for the one process's spool and for a worker's series (workers/worker_side.py)."""
    yield CounterMetricFamily("sfpl_spool_commits", "Group commits (one fsync each)", writer.groups)
    yield CounterMetricFamily("sfpl_spool_write_errors", "Failed spool writes", writer.write_errors)
    refused = CounterMetricFamily(
        "sfpl_spool_refused_requests", "Requests the spool refused", labels=["reason"]
    )
    for reason, n in sorted(refused_reasons.items()):
        refused.add_metric([reason], n)
    yield refused
    fsync = HistogramMetricFamily(
        "sfpl_spool_fsync_seconds", "Group commit write + fdatasync latency"
    )
    fsync.add_metric([], writer.fsync.cumulative(), sum_value=writer.fsync.total)
    yield fsync


class SpoolIntake:
    def __init__(
        self,
        directory: Path,
        batcher,
        reactor,
        store=None,
        max_bytes: int = 1 << 30,
        commit_window: float = 0.002,
        min_free_disk: int = MIN_FREE_DISK_BYTES,
        writer_blocking=None,
        loader_blocking=None,
        series: str = SERIES,
    ):
        self.directory = Path(directory)
        self.batcher = batcher
        self.reactor = reactor
        self.max_bytes = max_bytes
        self.min_free_disk = min_free_disk
        self.writer = SpoolWriter(
            self.directory / series,
            reactor,
            commit_window=commit_window,
            segment_bytes=segment_bytes_for(max_bytes),
            blocking=writer_blocking,
        )
        self.loader = Loader(self.writer, batcher, reactor, store=store, blocking=loader_blocking)
        self.started = False
        self.closing = False
        self.refused = 0
        self.refused_reasons: dict[str, int] = {}
        self._free_disk: int | None = None
        self._free_checked = -1e9

    @defer.inlineCallbacks
    def start(self):
        yield self.writer.open()
        yield self.loader.start()
        self.started = True

    # -- accepting --------------------------------------------------------------------------

    def accept(self, records: list[Record]) -> defer.Deferred:
        if not records:
            return defer.succeed(None)
        if self.closing:
            return self._refuse("shutting down", "closing", 1)
        if not self.started:
            return self._refuse("starting up", "not_open", 1)
        accepted_ms = int(self.reactor.seconds() * 1000)
        try:
            frame = encode_frame(records, accepted_ms)
        except (TypeError, ValueError, OverflowError):
            return defer.fail()  # a row that is not plain data: a bug upstream, logged there
        used = self.writer.bytes_on_disk + self.writer.pending_bytes
        if used + len(frame) > self.max_bytes:
            return self._refuse(
                "the spool is full: events are waiting for the store", "full", self._retry_after()
            )
        if self._disk_is_full(len(frame)):
            return self._refuse("the disk holding the spool is full", "disk", 5)
        d = self.writer.append(frame, len(records))
        d.addCallbacks(
            self._written, self._write_failed, callbackArgs=(records, accepted_ms, len(frame))
        )
        return d

    def _written(self, end: Position, records: list[Record], accepted_ms: int, size: int) -> None:
        start = Position(end.segment, end.offset - size)
        self.loader.offer(Frame(start, end, accepted_ms, records, size))

    def _write_failed(self, failure):
        failure.trap(OSError)
        self._count_refusal("write")
        return defer.fail(
            Refused(f"the spool cannot write: {failure.value.strerror or failure.value}", 5)
        )

    def _refuse(self, reason: str, kind: str, retry_after: int) -> defer.Deferred:
        self._count_refusal(kind)
        return defer.fail(Refused(reason, retry_after))

    def _count_refusal(self, kind: str) -> None:
        self.refused += 1
        self.refused_reasons[kind] = self.refused_reasons.get(kind, 0) + 1

    def _retry_after(self) -> int:
        if self.loader.store_failing or self.batcher.breaker.state != "closed":
            return max(5, int(self.batcher.breaker.seconds_until_trial() + 0.999))
        return 1

    def _disk_is_full(self, extra: int) -> bool:
        now = self.reactor.seconds()
        if now - self._free_checked >= FREE_DISK_CHECK_SECONDS:
            self._free_checked = now
            try:
                st = os.statvfs(self.writer.directory)
                self._free_disk = st.f_bavail * st.f_frsize
            except OSError:
                self._free_disk = None
        if self._free_disk is None:
            return False
        return self._free_disk - self.writer.pending_bytes - extra < self.min_free_disk

    # -- shutdown ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def close(self):
        """Stop accepting, commit what was accepted, load it if the store takes it, stop."""
        self.closing = True
        if not self.started:
            return  # never opened (a Gateway built but not started): nothing to close
        try:
            yield self.writer.flush()
            yield self.loader.drain(SHUTDOWN_DRAIN_SECONDS)
            left = self.loader.pending_records
            if left:
                log.info("spool: {n} records stay in the spool for the next start", n=left)
        finally:
            yield self.loader.stop()
            yield self.writer.close()

    # -- health and numbers -----------------------------------------------------------------

    def store_unreachable(self) -> bool:
        breaker = self.batcher.breaker
        return self.loader.store_failing or breaker.state != "closed" or breaker.failures > 0

    def status(self) -> str:
        used = self.writer.bytes_on_disk + self.writer.pending_bytes
        room = self.max_bytes - used
        if not self.started or self.closing:
            return "down"
        if room < min(16384, self.max_bytes // 64) or self.writer.last_error:
            return "down"
        if self._free_disk is not None and self._free_disk < self.min_free_disk:
            return "down"
        return "degraded" if self.store_unreachable() else "ok"

    def health(self) -> dict:
        return {"status": self.status(), "spool": self.report()}

    def report(self) -> dict:
        w, ld = self.writer, self.loader
        return {
            "durability": "spool",
            "directory": str(w.directory),
            "bytes": w.bytes_on_disk,
            "max_bytes": self.max_bytes,
            "segments": len(w.sizes),
            "records_pending": ld.pending_records,
            "oldest_pending_age_seconds": round(ld.oldest_pending_age(), 3),
            "records_in_flight_bytes": ld.in_flight_bytes,
            "loaded_records": ld.loaded_records,
            "replayed_records": ld.replayed_records,
            "interrupted_inserts": {
                "in_doubt": len(ld.journal.in_doubt()),
                "resent": ld.resent_batches,
                "not_stored": ld.settled_batches,
                "not_resent_after_reboot": ld.after_reboot_batches,
            },
            "committed": {"segment": ld.committed.segment, "offset": ld.committed.offset},
            "commits": w.groups,
            "fsync": w.fsync.report(),
            "write_errors": w.write_errors,
            "last_error": w.last_error,
            "refused_requests": self.refused,
            "store_reachable": not self.store_unreachable(),
            "free_disk_bytes": self._free_disk,
        }

    def metric_families(self):
        """Prometheus families for ``Gateway.metric_sources``."""
        w, ld = self.writer, self.loader
        yield GaugeMetricFamily(
            "sfpl_spool_bytes", "Bytes of spool segments on disk", w.bytes_on_disk
        )
        yield GaugeMetricFamily("sfpl_spool_max_bytes", "SpoolMaxBytes", self.max_bytes)
        yield GaugeMetricFamily(
            "sfpl_spool_records_pending",
            "Acknowledged records not yet confirmed stored",
            ld.pending_records,
        )
        yield GaugeMetricFamily(
            "sfpl_spool_oldest_pending_age_seconds",
            "Age of the oldest record waiting in the spool",
            ld.oldest_pending_age(),
        )
        yield CounterMetricFamily(
            "sfpl_spool_replayed_records",
            "Records re-sent to the store with dedup (restart or failed batch)",
            ld.replayed_records,
        )
        yield CounterMetricFamily(
            "sfpl_spool_resent_batches",
            "Interrupted inserts sent again with their token (the views' missing parts written)",
            ld.resent_batches,
        )
        yield CounterMetricFamily(
            "sfpl_spool_loaded_records",
            "Records confirmed stored from the spool",
            ld.loaded_records,
        )
        yield from writer_metric_families(w, self.refused_reasons)
