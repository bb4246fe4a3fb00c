"""The loader: drains one spool series into the store, in order, through the batcher.

It takes frames from the spool (never past what the writer has made durable), hands their rows
to the batcher, and moves a *committed position* forward only over a prefix of frames whose
rows the store confirmed. That position is saved (after asking the store to make its writes
durable) about once a second, and segments entirely before it are deleted.

Frames travel in *chunks*: what one read returned, handed to the batcher as one list of rows
per table and confirmed as one. While the loader keeps up, the frames the intake has just
committed are taken from a small in-memory tail instead of being read back and decoded again;
when it falls behind (or after a restart) it reads the segment files.

Memory stays bounded: at most ``max_in_flight_bytes`` of frames are between the spool and the
store, and the tail is dropped while the store is failing. Meanwhile the rest waits on disk.

Exactly once: a frame is inserted with ``dedup=True`` (rows whose key is stored are skipped)
whenever it may already have reached the store: frames past the committed position at start-up
(the last run may have stored them before it died) and frames re-read after a failed batch.
Only frames never handed to the store before are inserted plainly.

Derived tables too: skipping stored rows is right for the source table, but a batch may have
reached it and only some of its materialized views. So before replaying anything (at start-up,
and after a failed batch) the loader *resolves* the batches of the insert journal
(``journal.py``) that are in doubt: it rebuilds each one's rows from the spool and, if any of
them is in the source table, sends them again with the batch's own token, which makes the
store write only the parts that are missing. Then the replay goes on as above.
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

from sfpltracker.pipeline.intake import OUTPUT_TABLE
from sfpltracker.pipeline.journal import InsertJournal, JournalBatch, Span, finish
from sfpltracker.pipeline.spool import (
    MAGIC,
    Frame,
    Position,
    ReadResult,
    SpoolWriter,
    list_segments,
    load_committed,
    read_frames,
    save_committed,
    scan_segment,
    segment_path,
)
from sfpltracker.store.dedup import DEDUP_KEYS
from sfpltracker.store.interface import SyncingStore, TokenStore, token_store

log = Logger()

MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024  # at most this much per read (one chunk)
MAX_TAIL_BYTES = 4 * 1024 * 1024  # just-committed frames kept decoded for the loader
PERSIST_INTERVAL = 1.0  # seconds between saves of the committed position
RETRY_SECONDS = 1.0  # least wait before re-reading after the store refused a batch


@dataclass
class _Chunk:
    """Consecutive frames handed to the batcher together and confirmed together."""

    start: Position
    end: Position
    records: int
    size: int
    first_ms: int | None
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
        # What the store can do, asked once: re-send a journaled batch with its token; make
        # confirmed rows durable before the spool forgets them.
        self.token_store: TokenStore | None = token_store(batcher.store)
        self.syncing: SyncingStore | None = store if isinstance(store, SyncingStore) else None
        self.max_in_flight_bytes = max_in_flight_bytes
        self.persist_interval = persist_interval
        self._blocking = blocking or deferToThread
        self.committed = Position(0, 0)
        self.persisted = Position(0, 0)
        self.read_pos = Position(0, 0)
        self.replay_until = Position(0, 0)
        self.in_flight: deque[_Chunk] = deque()
        self.in_flight_bytes = 0
        self.tail: deque[Frame] = deque()
        self.tail_bytes = 0
        self.pending_records = 0  # records in the spool not yet confirmed stored
        self.oldest_ms: int | None = None  # accepted_ms of the oldest unconfirmed record
        self.loaded_records = 0
        self.replayed_records = 0
        self.disk_reads = 0
        self.corrupt_skips = 0
        self.store_failing = False
        self._reading = False
        self._paused = False
        self._stopped = True
        self._persist_timer = None
        self._persisting: defer.Deferred | None = None
        self._resume_call = None
        self.journal = InsertJournal(self.directory, blocking=self._blocking)
        self._resolving: defer.Deferred | None = None
        self.resent_batches = 0  # in-doubt batches sent again with their token
        self.settled_batches = 0  # in-doubt batches found not stored at all
        self.after_reboot_batches = 0  # in doubt since before a reboot: not re-sent
        # Outputs fed after acceptance (notify/facebook.py): each ``take(items)`` gets the
        # records of OUTPUT_TABLE, which never go to the store; a chunk is confirmed once the
        # store and every output have what it holds.
        self.outputs: list = []
        # The spool series this loader reads (a worker's name; None: the gateway's own spool):
        # outputs keep their replay marks per series.
        self.output_series: str | None = None

    # -- life cycle -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Find the committed position, delete what is before it, start replaying the rest.

        Call after ``writer.open()``: everything before the writer's first new frame is from
        an earlier run, so it is replayed with dedup.
        """
        self.journal = InsertJournal(self.directory, blocking=self._blocking)
        doubtful = yield self._blocking(self.journal.open)
        if doubtful:
            log.info(
                "spool: {n} insert(s) may have been cut short by the last exit; finishing them",
                n=len(doubtful),
            )
        backlog = yield self._blocking(_backlog, self.directory, dict(self.writer.sizes))
        self.writer.forget(backlog.deleted)
        self.committed = self.persisted = self.read_pos = backlog.start
        self.replay_until = self.writer.first_new
        self.pending_records = backlog.records
        self.oldest_ms = backlog.first_ms
        self._stopped = False
        self.writer.listeners.append(self.wake)
        for output in self.outputs:
            output.limit_high_water(self.writer.end, self.output_series)
        if backlog.records:
            log.info(
                "spool: replaying {n} records from segment {seg} offset {off}",
                n=backlog.records,
                seg=backlog.start.segment,
                off=backlog.start.offset,
            )
        self.wake()

    def offer(self, frame: Frame) -> None:
        """The intake committed ``frame``: it is pending until stored; keep it decoded."""
        self.pending_records += frame.count
        if self.oldest_ms is None:
            self.oldest_ms = frame.accepted_ms
        if self.store_failing or self._paused or frame.size > MAX_TAIL_BYTES:
            return  # it will be read from disk when the store is back
        self.tail.append(frame)
        self.tail_bytes += frame.size
        while self.tail_bytes > MAX_TAIL_BYTES:
            self.tail_bytes -= self.tail.popleft().size

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
        yield self._blocking(self.journal.close)

    def _store_in_trouble(self) -> bool:
        return self.store_failing or self.batcher.breaker.failures > 0

    # -- reading ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Take more frames if there is room in flight and durable frames not yet taken."""
        if self._reading or self._paused or self._stopped or self._resolving is not None:
            return
        if self.journal.in_doubt():
            self._resolve()
            return
        self._reading = True  # also keeps callbacks fired while sending from re-entering
        while not self._paused:
            room = self.max_in_flight_bytes - self.in_flight_bytes
            if room <= 0 or self.read_pos >= self.writer.end:
                break
            frames = self._from_tail(min(room, READ_CHUNK_BYTES))
            if frames:
                self._take(frames, frames[-1].end)
                continue
            self.disk_reads += 1
            start = self.read_pos
            sizes = dict(self.writer.sizes)
            d = self._blocking(
                read_frames, self.directory, start, sizes, min(room, READ_CHUNK_BYTES)
            )
            d.addCallbacks(self._got, self._read_failed, callbackArgs=(start,))
            return  # _got goes on
        self._reading = False
        self._advance()

    def _from_tail(self, budget: int) -> list[Frame]:
        tail = self.tail
        while tail and tail[0].start < self.read_pos:  # read from disk meanwhile
            self.tail_bytes -= tail.popleft().size
        frames: list[Frame] = []
        at, used = self.read_pos, 0
        while tail and tail[0].start == at and used < budget:
            frame = tail.popleft()
            self.tail_bytes -= frame.size
            frames.append(frame)
            at, used = frame.end, used + frame.size
        return frames

    def _got(self, result: ReadResult, start: Position) -> None:
        if not self._stopped and not self._paused and start == self.read_pos:
            # (A read that raced with a rewind is dropped: the rewind re-reads those frames.)
            self._take(result.frames, result.next)
        self._reading = False
        if not self._stopped:
            self._advance()
            self.wake()

    def _read_failed(self, failure) -> None:
        self._reading = False
        log.failure("spool: reading segment failed; retrying", failure)
        if not self._stopped and self._resume_call is None:
            self._resume_call = self.reactor.callLater(RETRY_SECONDS, self._resume)

    def _take(self, frames: list[Frame], next_pos: Position) -> None:
        """Hand ``frames`` (ending at ``next_pos``) to the batcher as one chunk."""
        self.read_pos = next_pos
        if not frames:
            return
        by_table: dict[str, list[dict]] = defaultdict(list)
        outputs: list = []  # (frame end, replayed, row) of OUTPUT_TABLE records
        records = size = 0
        first_ms = None
        replay = False
        for frame in frames:
            if frame.corrupt:
                self.corrupt_skips += 1
                log.error(
                    "spool: segment {seg} is unreadable past offset {off} ({why}); skipped",
                    seg=frame.start.segment,
                    off=frame.start.offset,
                    why=frame.corrupt,
                )
            if frame.start < self.replay_until:
                replay = True
                self.replayed_records += frame.count
            for table, row in frame.records:
                if table == OUTPUT_TABLE:
                    outputs.append((frame.end, frame.start < self.replay_until, row))
                else:
                    by_table[table].append(row)
            records += frame.count
            size += frame.size
            if first_ms is None and frame.records:
                first_ms = frame.accepted_ms
        sinks = self.outputs if outputs else []
        waiting = len(by_table) + len(sinks)
        chunk = _Chunk(frames[0].start, next_pos, records, size, first_ms, waiting)
        span = (chunk.start, chunk.end)
        self.in_flight.append(chunk)
        self.in_flight_bytes += size
        if self.oldest_ms is None:
            self.oldest_ms = first_ms
        for table, rows in by_table.items():
            # The frames' size stands in for the batcher's per-row estimate (saves a pass).
            share = size * len(rows) // records if records else 0
            d = self.batcher.add(
                table, rows, size=share, dedup=replay, origin=Span(self.journal, *span)
            )
            d.addCallbacks(self._stored, self._failed, callbackArgs=(chunk,), errbackArgs=(chunk,))
        for sink in sinks:
            d = defer.maybeDeferred(sink.take, outputs, self.output_series)
            d.addCallbacks(self._stored, self._failed, callbackArgs=(chunk,), errbackArgs=(chunk,))

    # -- confirmations ----------------------------------------------------------------------

    def _stored(self, _, chunk: _Chunk) -> None:
        self.store_failing = False
        chunk.waiting -= 1
        self._settled()

    def _failed(self, failure, chunk: _Chunk) -> None:
        chunk.waiting -= 1
        chunk.failed = True
        if not self.store_failing:
            log.warn(
                "spool: the store refused a batch ({why}); records wait in the spool",
                why=failure.getErrorMessage(),
            )
        self.store_failing = True
        self._paused = True  # take nothing new until what is in flight has settled
        self._settled()

    def _settled(self) -> None:
        if self._stopped:
            return
        self._advance()
        if self._paused:
            if all(c.settled for c in self.in_flight) and self._resume_call is None:
                self._rewind()
        else:
            self.wake()

    def _advance(self) -> None:
        moved = False
        while self.in_flight and self.in_flight[0].settled and not self.in_flight[0].failed:
            chunk = self.in_flight.popleft()
            self.committed = chunk.end
            self.in_flight_bytes -= chunk.size
            self.pending_records -= chunk.records
            self.loaded_records += chunk.records
            moved = True
        if moved:
            nxt = next((c.first_ms for c in self.in_flight if c.first_ms is not None), None)
            if nxt is None and self.tail:
                nxt = self.tail[0].accepted_ms
            self.oldest_ms = nxt
            self._schedule_persist()

    def _rewind(self) -> None:
        """Everything in flight settled after a failure: re-read from the committed position."""
        self.replay_until = max(self.replay_until, self.read_pos)
        self.read_pos = self.committed
        self.in_flight.clear()
        self.in_flight_bytes = 0
        self.tail.clear()
        self.tail_bytes = 0
        delay = max(RETRY_SECONDS, self.batcher.breaker.seconds_until_trial())
        self._resume_call = self.reactor.callLater(delay, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        self._paused = False
        self.wake()

    # -- batches in doubt ---------------------------------------------------------------------

    def _resolve(self) -> None:
        """Finish the journal's in-doubt batches, then go on reading (``wake``)."""
        self._resolving = d = self._resolve_all()

        def done(_):
            self._resolving = None
            self.store_failing = False
            self.wake()

        def failed(failure):
            self._resolving = None
            if self._stopped:
                return  # shutting down: the journal keeps them for the next start
            self.store_failing = True
            self.batcher.breaker.failure()
            log.warn(
                "spool: finishing an interrupted insert failed ({why}); retrying",
                why=failure.getErrorMessage(),
            )
            if self._resume_call is None:
                self._paused = True
                delay = max(RETRY_SECONDS, self.batcher.breaker.seconds_until_trial())
                self._resume_call = self.reactor.callLater(delay, self._resume)

        d.addCallbacks(done, failed)

    @defer.inlineCallbacks
    def _resolve_all(self):
        store = self.token_store
        for batch in self.journal.in_doubt():
            if self._stopped:
                return
            if store is not None:
                yield self._resolve_one(store, batch)
            yield self.journal.end(batch.token)

    @defer.inlineCallbacks
    def _resolve_one(self, store: TokenStore, batch: JournalBatch):
        """Send the batch again with its token if any of its rows reached the source table."""
        sizes = dict(self.writer.sizes)
        rows = yield self._blocking(_rows_of, self.directory, batch, sizes)
        done = yield finish(store, self.journal, batch, rows, "spool")
        if done == "settled":
            self.settled_batches += 1  # the replay loads these rows as new ones
        elif done == "after_reboot":
            self.after_reboot_batches += 1
        elif done == "resent":
            self.resent_batches += 1

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
        syncing = self.syncing
        # The store may hold the rows only in the page cache: make them durable before the
        # position says they are stored, and before the spool copy is deleted.
        d = defer.maybeDeferred(syncing.sync) if syncing is not None else defer.succeed(None)
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


def _rows_of(directory: Path, batch: JournalBatch, sizes: dict[int, int]) -> list[dict]:
    """The rows ``batch`` sent: its table's rows in the frames [lo, hi), in spool order, less
    those it left out as already stored. A batch of several series (``spans``): the rows of
    every span in the batch's order, the other series read from their directories next to
    this one."""
    assert batch.lo is not None and batch.hi is not None  # a batch journaled with its spool span
    if batch.spans is None:
        return _span_rows(directory, batch, batch.lo, batch.hi, sizes)
    rows: list[dict] = []
    others: dict[str, dict[int, int]] = {}
    for name, lo, hi in batch.spans:
        if name == directory.name:
            rows += _span_rows(directory, batch, lo, hi, sizes)
        else:
            other = directory.parent / name
            if name not in others:
                # Frames in a batch were durable before they were read: the sizes on disk
                # hold them whole. A segment is gone only once its loader finished the batch
                # (re-sent whole): this re-send is then skipped whole by the token.
                others[name] = _sizes_on_disk(other)
            rows += _span_rows(other, batch, lo, hi, others[name])
    return rows


def _sizes_on_disk(directory: Path) -> dict[int, int]:
    sizes = {}
    for seq in list_segments(directory):
        try:
            sizes[seq] = segment_path(directory, seq).stat().st_size
        except FileNotFoundError:
            continue
    return sizes


def _span_rows(
    directory: Path, batch: JournalBatch, lo: Position, hi: Position, sizes: dict[int, int]
) -> list[dict]:
    key = DEDUP_KEYS.get(batch.table)
    rows: list[dict] = []
    pos = lo
    while pos < hi:
        result = read_frames(directory, pos, sizes, READ_CHUNK_BYTES)
        if result.next <= pos:
            break  # nothing more to read (a segment gone: nothing to re-send from it)
        for frame in result.frames:
            if frame.start >= hi:
                return rows
            for table, row in frame.records:
                if table == batch.table and batch.selects(row.get(key) if key else None):
                    rows.append(row)
        pos = result.next
    return rows


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
