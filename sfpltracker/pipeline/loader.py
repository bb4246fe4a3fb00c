"""The loader: drains one spool series into the store, in order, through the batcher.

It reads frames from the spool (never past what the writer has made durable), hands their rows
to the batcher, and moves a *committed position* forward only over a prefix of frames whose
rows the store confirmed. That position is saved (after asking the store to make its writes
durable) about once a second, and segments entirely before it are deleted.

Memory stays bounded: at most ``max_in_flight_bytes`` of frames are between the spool and the
store. While the store is down the rest waits on disk, not in RAM.

Exactly once: a frame is inserted with ``dedup=True`` (rows whose key is stored are skipped)
whenever it may already have reached the store: frames past the committed position at start-up
(the last run may have stored them before it died) and frames re-read after a failed batch.
Only frames never handed to the store before are inserted plainly.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from .spool import (
    MAGIC,
    Frame,
    Position,
    ReadResult,
    SpoolWriter,
    load_committed,
    read_frames,
    save_committed,
    scan_segment,
    segment_path,
)

log = Logger()

MAX_IN_FLIGHT_BYTES = 16 * 1024 * 1024
PERSIST_INTERVAL = 1.0  # seconds between saves of the committed position
RETRY_SECONDS = 1.0  # least wait before re-reading after the store refused a batch


@dataclass
class _InFlight:
    frame: Frame
    waiting: int  # tables whose rows are not yet settled
    failed: bool = False

    @property
    def settled(self) -> bool:
        return self.waiting == 0


@dataclass
class Backlog:
    """What is waiting in a series at start-up."""

    start: Position
    records: int = 0
    first_ms: int | None = None
    deleted: tuple[int, ...] = ()


class Loader:
    def __init__(
        self,
        writer: SpoolWriter,
        batcher,
        reactor,
        store=None,
        max_in_flight_bytes: int = MAX_IN_FLIGHT_BYTES,
        persist_interval: float = PERSIST_INTERVAL,
        blocking: Callable[..., defer.Deferred] | None = None,
    ):
        self.writer = writer
        self.directory: Path = writer.directory
        self.batcher = batcher
        self.reactor = reactor
        self.store = store
        self.max_in_flight_bytes = max_in_flight_bytes
        self.persist_interval = persist_interval
        self._blocking = blocking or deferToThread
        self.committed = Position(0, 0)
        self.persisted = Position(0, 0)
        self.read_pos = Position(0, 0)
        self.replay_until = Position(0, 0)
        self.in_flight: deque[_InFlight] = deque()
        self.in_flight_bytes = 0
        self.pending_records = 0  # records in the spool not yet confirmed stored
        self.oldest_ms: int | None = None  # accepted_ms of the frame at the committed position
        self.loaded_records = 0
        self.replayed_records = 0
        self.corrupt_skips = 0
        self.store_failing = False
        self._reading = False
        self._paused = False
        self._stopped = True
        self._persist_timer = None
        self._persisting: defer.Deferred | None = None
        self._resume_call = None

    # -- life cycle -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Find the committed position, delete what is before it, start replaying the rest.

        Call after ``writer.open()``: everything before the writer's first new frame is from
        an earlier run, so it is replayed with dedup.
        """
        backlog = yield self._blocking(_backlog, self.directory, dict(self.writer.sizes))
        self.writer.forget(backlog.deleted)
        self.committed = self.persisted = self.read_pos = backlog.start
        self.replay_until = self.writer.first_new
        self.pending_records = backlog.records
        self.oldest_ms = backlog.first_ms
        self._stopped = False
        self.writer.listeners.append(self.wake)
        if backlog.records:
            log.info(
                "spool: replaying {n} records from segment {seg} offset {off}",
                n=backlog.records,
                seg=backlog.start.segment,
                off=backlog.start.offset,
            )
        self.wake()

    def record_appended(self, records: int, accepted_ms: int) -> None:
        """The intake committed ``records`` more (they are pending until stored)."""
        if self.pending_records == 0 and self.oldest_ms is None:
            self.oldest_ms = accepted_ms
        self.pending_records += records

    @defer.inlineCallbacks
    def drain(self, timeout: float):
        """Load what is durable now (shutdown); give up early if the store is failing."""
        deadline = self.reactor.seconds() + timeout
        while (
            self.committed < self.writer.end
            and self.reactor.seconds() < deadline
            and not self._store_in_trouble()
        ):
            self.wake()
            self.batcher.flush_all()  # no batching delay from here on
            yield task.deferLater(self.reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def stop(self):
        """Stop reading and save the committed position."""
        self._stopped = True
        if self.wake in self.writer.listeners:
            self.writer.listeners.remove(self.wake)
        for call in (self._persist_timer, self._resume_call):
            if call is not None and call.active():
                call.cancel()
        self._persist_timer = self._resume_call = None
        if self._persisting is not None:
            yield self._persisting
        yield self._persist()

    def _store_in_trouble(self) -> bool:
        return self.store_failing or self.batcher.breaker.failures > 0

    # -- reading ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Read more if there is room in flight and durable data not yet read."""
        if self._reading or self._paused or self._stopped:
            return
        budget = self.max_in_flight_bytes - self.in_flight_bytes
        if budget <= 0 or self.read_pos >= self.writer.end:
            return
        self._reading = True
        d = self._blocking(
            read_frames, self.directory, self.read_pos, dict(self.writer.sizes), budget
        )
        d.addCallback(self._got)
        d.addErrback(self._read_failed)

    def _got(self, result: ReadResult) -> None:
        if self._stopped:
            self._reading = False
            return
        self.read_pos = result.next
        for frame in result.frames:
            if self._paused:
                break  # a batch failed meanwhile: these frames are re-read after the rewind
            self._send(frame)
        self._reading = False
        self._advance()
        self.wake()

    def _read_failed(self, failure) -> None:
        self._reading = False
        log.failure("spool: reading segment failed; retrying", failure)
        if not self._stopped:
            self._resume_call = self.reactor.callLater(RETRY_SECONDS, self._resume)

    def _send(self, frame: Frame) -> None:
        if frame.corrupt:
            self.corrupt_skips += 1
            log.error(
                "spool: segment {seg} is unreadable past offset {off} ({why}); skipped",
                seg=frame.start.segment,
                off=frame.start.offset,
                why=frame.corrupt,
            )
        by_table: dict[str, list[dict]] = defaultdict(list)
        for table, row in frame.records:
            by_table[table].append(row)
        entry = _InFlight(frame, waiting=len(by_table))
        self.in_flight.append(entry)
        self.in_flight_bytes += frame.size
        if self.oldest_ms is None and frame.records:
            self.oldest_ms = frame.accepted_ms
        replay = frame.start < self.replay_until
        if replay:
            self.replayed_records += frame.count
        for table, rows in by_table.items():
            d = self.batcher.add(table, rows, dedup=replay)
            d.addCallbacks(self._stored, self._failed, callbackArgs=(entry,), errbackArgs=(entry,))

    # -- confirmations ----------------------------------------------------------------------

    def _stored(self, _, entry: _InFlight) -> None:
        self.store_failing = False
        entry.waiting -= 1
        self._settled()

    def _failed(self, failure, entry: _InFlight) -> None:
        entry.waiting -= 1
        entry.failed = True
        if not self.store_failing:
            log.warn(
                "spool: the store refused a batch ({why}); records wait in the spool",
                why=failure.getErrorMessage(),
            )
        self.store_failing = True
        self._paused = True  # read nothing new until what is in flight has settled
        self._settled()

    def _settled(self) -> None:
        if self._stopped:
            return
        self._advance()
        if self._paused and all(e.settled for e in self.in_flight) and self._resume_call is None:
            self._rewind()
        else:
            self.wake()

    def _advance(self) -> None:
        moved = False
        while self.in_flight and self.in_flight[0].settled and not self.in_flight[0].failed:
            entry = self.in_flight.popleft()
            frame = entry.frame
            self.committed = frame.end
            self.in_flight_bytes -= frame.size
            self.pending_records -= frame.count
            self.loaded_records += frame.count
            moved = True
        if moved:
            head = next((e.frame for e in self.in_flight if e.frame.records), None)
            self.oldest_ms = head.accepted_ms if head is not None else None
            self._schedule_persist()

    def _rewind(self) -> None:
        """Everything in flight settled after a failure: re-read from the committed position."""
        self.replay_until = max(self.replay_until, self.read_pos)
        self.read_pos = self.committed
        self.in_flight.clear()
        self.in_flight_bytes = 0
        delay = max(RETRY_SECONDS, self.batcher.breaker.seconds_until_trial())
        self._resume_call = self.reactor.callLater(delay, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        self._paused = False
        self.wake()

    # -- the committed position -------------------------------------------------------------

    def _schedule_persist(self) -> None:
        if self._persist_timer is None and self._persisting is None and not self._stopped:
            self._persist_timer = self.reactor.callLater(self.persist_interval, self._persist_now)

    def _persist_now(self) -> None:
        self._persist_timer = None
        self._persist()

    def _persist(self) -> defer.Deferred:
        pos = self.committed
        if pos <= self.persisted:
            return defer.succeed(None)
        deletable = tuple(seq for seq in self.writer.sizes if seq < pos.segment)
        sync = getattr(self.store, "sync", None)
        # The store may hold the rows only in the page cache: make them durable before the
        # position says they are stored, and before the spool copy is deleted.
        d = defer.maybeDeferred(sync) if sync is not None else defer.succeed(None)
        d.addCallback(lambda _: self._blocking(_save_and_delete, self.directory, pos, deletable))

        def saved(_):
            self.persisted = max(self.persisted, pos)
            self.writer.forget(deletable)

        def failed(failure):
            log.warn(
                "spool: saving the committed position failed: {why}", why=failure.getErrorMessage()
            )

        def done(_):
            self._persisting = None
            if self.committed > self.persisted:
                self._schedule_persist()

        d.addCallbacks(saved, failed)
        d.addBoth(done)
        self._persisting = d
        return d

    # -- numbers ----------------------------------------------------------------------------

    def oldest_pending_age(self) -> float:
        if self.oldest_ms is None or self.pending_records <= 0:
            return 0.0
        return max(0.0, self.reactor.seconds() - self.oldest_ms / 1000)


def _save_and_delete(directory: Path, pos: Position, deletable: tuple[int, ...]) -> None:
    save_committed(directory, pos)
    for seq in deletable:
        try:
            segment_path(directory, seq).unlink()
        except FileNotFoundError:
            pass


def _backlog(directory: Path, sizes: dict[int, int]) -> Backlog:
    """Where loading starts and how much waits there; deletes segments already loaded."""
    committed = load_committed(directory)
    present = sorted(sizes)
    start = committed
    if start is None or start.segment not in sizes:
        later = [s for s in present if start is None or s > start.segment]
        start = Position(later[0], len(MAGIC)) if later else Position(present[-1], len(MAGIC))
    # A torn tail may have been cut below a position saved before the crash.
    start = Position(start.segment, max(len(MAGIC), min(start.offset, sizes[start.segment])))
    deleted = tuple(s for s in present if s < start.segment)
    for seq in deleted:
        try:
            os.unlink(segment_path(directory, seq))
        except FileNotFoundError:
            pass
    backlog = Backlog(start, deleted=deleted)
    for seq in present:
        if seq < start.segment or sizes[seq] <= len(MAGIC):
            continue
        offset = start.offset if seq == start.segment else len(MAGIC)
        scan = scan_segment(segment_path(directory, seq), offset, verify=False)
        backlog.records += scan.records
        if backlog.first_ms is None:
            backlog.first_ms = scan.first_ms
    return backlog
