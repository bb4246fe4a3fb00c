"""Per-table batching in front of a store, driven by Deferreds and the reactor clock.

``Batcher.add(table, rows)`` returns a Deferred that fires once those rows are in the store (or
fails when the store kept refusing them), so whatever sits in front — the in-memory intake, or
the durable spool's loader — knows exactly what has landed.

Strategies (the seed README's six): ``immediate`` flushes every add; ``time`` flushes when the
oldest queued row is ``MaxBatchTime`` old; ``size`` at ``MaxBatchSize`` rows; ``memory`` at
``MaxMemoryMB`` of queued rows; ``hybrid`` at whichever of size, memory and time comes first;
``adaptive`` is hybrid with a size target that halves after a slow or failed flush and grows
back by a quarter after a fast one. ``size`` and ``memory`` still flush rows older than
``SAFETY_FLUSH_FACTOR`` x ``MaxBatchTime`` so a quiet table never holds rows forever.

Retries and half-stored batches: with a store that takes an ``insert_deduplication_token``
(``store.insert_tokens``, chDB), every batch gets a token of its own and each attempt sends
*the same rows with the same token*: ClickHouse skips the parts of a failed attempt that did
land (the source table's, some views') and writes the missing ones, so a retry never leaves a
derived table short nor counts a row twice. Rows that may be stored already (``dedup``, a
spool replay) are filtered once, before the first attempt, never between attempts. When the
rows come from a spool (each entry's ``origin``), the batch is written to that spool's insert
journal (``journal.py``) before it is sent, so that after a crash the loader can finish it; from
the JetStream loader (``Journaled``), the batch's rows themselves are written to its journal.
With any other store a retry is inserted with ``dedup=True`` (rows already stored skipped).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace

from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sfpltracker.config import BatchSettings
from sfpltracker.pipeline.breaker import CircuitBreaker
from sfpltracker.pipeline.journal import InsertJournal, JournalBatch, Journaled, Span
from sfpltracker.store.dedup import DEDUP_KEYS
from sfpltracker.store.interface import TokenStore, token_store

log = Logger()

SAFETY_FLUSH_FACTOR = 10
MAX_INSERT_ROWS = 50_000
# And at most this many bytes of rows (the spool frames' size, or the per-row estimate): what
# an insert needs in the store grows with its bytes (the embedded store, ~9x the frames' bytes
# across its materialized views, refused 50,000 page views, ~21 MB, with MEMORY_LIMIT_EXCEEDED
# under its 192 MiB limit). Each loader holds at most loader.MAX_IN_FLIGHT_BYTES, but the
# store process's one batcher takes from every worker's series: without this bound N series'
# backlogs made a batch no retry could ever store, and its journal re-sent it for good.
MAX_INSERT_BYTES = 8 * 1024 * 1024
ADAPTIVE_SLOW_SECONDS = 1.0
ADAPTIVE_FAST_SECONDS = 0.1
ADAPTIVE_MIN_SIZE = 10
MAX_BACKOFF_SECONDS = 30.0
# A spool loader's batcher (``hold``) flushes by size anyway once this much waits in a table:
# half the loader's in-flight bound (loader.MAX_IN_FLIGHT_BYTES), so it never stalls on it.
HOLD_BYTES = 4 * 1024 * 1024
LOADER_HOLD = 2.0  # seconds: the events table's default MaxBatchTime

# The original tracker's table settings (reference e.2) for the tables written here.
DEFAULT_SETTINGS: dict[str, BatchSettings] = {
    "events": BatchSettings("hybrid", 1000, 2.0, 10, 3, 3, 100),
    "payments": BatchSettings("immediate", 1, 0.0, 1, 1, 5, 100),
    "agreed": BatchSettings("hybrid", 100, 3.0, 2, 3, 3, 100),
    "agreements": BatchSettings("hybrid", 100, 3.0, 2, 3, 3, 100),
    "redirects": BatchSettings("immediate", 1, 0.0, 1, 1, 3, 100),
    "redirect_history": BatchSettings("immediate", 1, 0.0, 1, 1, 3, 100),
    "mthreads": BatchSettings("time", 100, 5.0, 5, 2, 3, 200),
    "mstore": BatchSettings("hybrid", 500, 3.0, 8, 4, 2, 150),
    "mtriage": BatchSettings("hybrid", 50, 2.0, 2, 1, 5, 50),
    "logs": BatchSettings("hybrid", 1000, 5.0, 8, 4, 2, 200),
}
FALLBACK_SETTINGS = BatchSettings("hybrid", 500, 2.0, 5, 3, 3, 100)


class StoreRefused(Exception):
    """The store did not take a batch after every retry."""


@dataclass
class _Entry:
    rows: list[dict]
    size: int
    deferred: defer.Deferred
    queued_at: float
    dedup: bool = False  # the rows may already be stored (a replay): insert with dedup
    origin: Span | Journaled | None = None  # the spool frames the rows come from, or a journal


@dataclass
class _Batch:
    """What one flush sends, attempt after attempt."""

    entries: list[_Entry]
    rows: list[dict]
    dedup: bool  # some rows may be stored already
    token: str | None = None  # insert_deduplication_token: the same for every attempt
    prepared: bool = False  # rows filtered (if dedup) and journaled: fixed from now on
    journals: list[InsertJournal] = field(default_factory=list)  # holding its begin record


@dataclass
class _Table:
    name: str
    settings: BatchSettings
    entries: deque = field(default_factory=deque)
    rows: int = 0
    bytes: int = 0
    timer: DelayedCall | None = None
    flushing: bool = False
    target_size: int = 0  # adaptive strategy's current size threshold
    last_insert: float = float("-inf")  # when its last insert began (reactor seconds)


@dataclass
class RecentRows:
    """Rows stored in the last ``window`` seconds, as a running sum: each batch is added once
    and taken off once it leaves the window, so reading it (every ``/health`` probe and
    ``/metrics`` scrape) costs only the batches that left since, not a sum over the minute."""

    window: float = 60.0
    batches: deque = field(default_factory=deque)  # (when stored, rows), oldest first
    rows: int = 0

    def add(self, at: float, rows: int) -> None:
        self.batches.append((at, rows))
        self.rows += rows
        self.expire(at)  # bounded by the batches of one window, read or not

    def total(self, now: float) -> int:
        self.expire(now)
        return self.rows

    def expire(self, now: float) -> None:
        edge = now - self.window
        while self.batches and self.batches[0][0] < edge:
            self.rows -= self.batches.popleft()[1]


@dataclass
class BatchStats:
    total_batches: int = 0
    total_items: int = 0
    failed_batches: int = 0
    failed_attempts: int = 0
    flush_seconds: float = 0.0
    last_flush: float = 0.0
    recent: RecentRows = field(default_factory=RecentRows)  # events_per_second
    rows_by_table: dict = field(default_factory=dict)  # /metrics' mthreads_ops, ...


class Batcher:
    def __init__(
        self,
        store,
        reactor,
        overrides: dict[str, BatchSettings] | None = None,
        hold: float = 0.0,
    ):
        self.store = store
        self.reactor = reactor
        self.overrides = overrides or {}
        # Seconds a table's size trigger waits after its previous insert began (at most its
        # MaxBatchTime), unless HOLD_BYTES wait: set for a spool's loader, whose rows are
        # durable already, so MaxBatchSize need not bound what waits in memory. A chDB insert
        # costs ~150 ms of CPU whatever its size plus ~13 us a row (docs/performance.md), so
        # at 1,300 events/s 1,000-row inserts cost ~5x the CPU of one insert per 2 s.
        self.hold = hold
        self.tables: dict[str, _Table] = {}
        self.stats = BatchStats()
        self.breaker = CircuitBreaker(reactor)
        self.started = reactor.seconds()
        # Asked once: a store with insert tokens gets every attempt of a batch with one token.
        self.token_store: TokenStore | None = token_store(store)
        self.tokens = self.token_store is not None

    # -- settings ---------------------------------------------------------------------------

    def settings_for(self, table: str) -> BatchSettings:
        base = DEFAULT_SETTINGS.get(table, FALLBACK_SETTINGS)
        override = self.overrides.get(table)
        if override is None:
            return replace(base)
        # An override built in code (tests, benches) without ``given`` replaces the whole entry.
        return override.over(base) if override.given else replace(override)

    def _table(self, name: str) -> _Table:
        t = self.tables.get(name)
        if t is None:
            settings = self.settings_for(name)
            t = self.tables[name] = _Table(name, settings, target_size=settings.MaxBatchSize)
        return t

    # -- adding -----------------------------------------------------------------------------

    def add(
        self,
        table: str,
        rows: list[dict],
        size: int = 0,
        dedup: bool = False,
        origin: Span | Journaled | None = None,
    ) -> defer.Deferred:
        """Queue ``rows`` for ``table``; the Deferred fires when they are stored.

        ``dedup`` marks rows that may already be in the store (a spool replay): rows already
        stored are left out of their batch. ``origin``: the rows are all the rows of ``table``
        in a span of spool frames (the spool's loader), or ``Journaled``: rows with no copy
        to rebuild them from (the JetStream loader); their batch is then journaled.
        """
        t = self._table(table)
        d: defer.Deferred = defer.Deferred()
        if not rows:
            d.callback(0)
            return d
        size = size or sum(estimate_row_bytes(r) for r in rows)
        t.entries.append(_Entry(rows, size, d, self.reactor.seconds(), dedup, origin))
        t.rows += len(rows)
        t.bytes += size
        self._consider(t)
        return d

    def _threshold_rows(self, t: _Table) -> int | None:
        s = t.settings
        if s.Strategy in ("size", "hybrid"):
            return s.MaxBatchSize
        if s.Strategy == "adaptive":
            return t.target_size
        return None

    def _due(self, t: _Table) -> bool:
        """Whether ``t`` must flush now (size or memory trigger, or immediate)."""
        if not t.entries:
            return False
        s = t.settings
        if s.Strategy == "immediate":
            return True
        limit = self._threshold_rows(t)
        if limit is not None and t.rows >= limit and not self._holding(t):
            return True
        if s.Strategy in ("memory", "hybrid", "adaptive"):
            if t.bytes >= s.MaxMemoryMB * 1024 * 1024:
                return True
        return False

    def _hold_until(self, t: _Table) -> float:
        return t.last_insert + min(self.hold, t.settings.MaxBatchTime)

    def _holding(self, t: _Table) -> bool:
        """Whether ``t``'s size trigger waits (``hold``) though MaxBatchSize rows are queued."""
        return (
            self.hold > 0 and t.bytes < HOLD_BYTES and self.reactor.seconds() < self._hold_until(t)
        )

    def _max_wait(self, t: _Table) -> float:
        s = t.settings
        if s.Strategy in ("time", "hybrid", "adaptive"):
            return s.MaxBatchTime
        return max(s.MaxBatchTime, 1.0) * SAFETY_FLUSH_FACTOR

    def _consider(self, t: _Table) -> None:
        if t.flushing or not self.breaker.allows():
            self._arm_timer(t)
            return
        if self._due(t):
            self._flush(t)
            return
        self._arm_timer(t)

    def _arm_timer(self, t: _Table) -> None:
        if not t.entries:
            return
        now = self.reactor.seconds()
        if not self.breaker.allows():
            due = now + self.breaker.seconds_until_trial()
        else:
            due = t.entries[0].queued_at + self._max_wait(t)
            limit = self._threshold_rows(t)
            if limit is not None and t.rows >= limit:  # held: flushed when the hold ends
                due = min(due, self._hold_until(t))
        if t.timer is not None:
            if t.timer.getTime() <= due:
                return
            t.timer.cancel()  # a hold ending sooner than the oldest row's time
        t.timer = self.reactor.callLater(max(0.0, due - now), self._timer_fired, t)

    def _timer_fired(self, t: _Table) -> None:
        t.timer = None
        if t.flushing:
            return  # the running flush re-considers the table when it ends
        if not t.entries:
            return
        if not self.breaker.allows():
            self._arm_timer(t)
            return
        oldest = t.entries[0].queued_at
        if self._due(t) or self.reactor.seconds() >= oldest + self._max_wait(t):
            self._flush(t)
        else:
            self._arm_timer(t)

    # -- flushing ---------------------------------------------------------------------------

    def _take(self, t: _Table) -> list[_Entry]:
        """The entries of the next insert: everything waiting, up to ``MAX_INSERT_ROWS`` and
        ``MAX_INSERT_BYTES`` (at least one entry).

        The strategy decides *when* a table flushes; the insert then takes all that waits (the
        original swapped out the whole buffer). An insert's cost is mostly fixed — a part for
        the table and one per materialized view — so under load a few large inserts keep up
        where many inserts of ``MaxBatchSize`` rows fall behind.
        """
        taken: list[_Entry] = []
        rows = size = 0
        while t.entries and (
            not taken
            or (
                rows + len(t.entries[0].rows) <= MAX_INSERT_ROWS
                and size + t.entries[0].size <= MAX_INSERT_BYTES
            )
        ):
            e = t.entries.popleft()
            taken.append(e)
            rows += len(e.rows)
            size += e.size
            t.rows -= len(e.rows)
            t.bytes -= e.size
        return taken

    def _flush(self, t: _Table) -> None:
        if t.timer is not None and t.timer.active():
            t.timer.cancel()
        t.timer = None
        entries = self._take(t)
        if not entries:
            return
        t.flushing = True
        t.last_insert = self.reactor.seconds()
        batch = _Batch(entries, [r for e in entries for r in e.rows], any(e.dedup for e in entries))
        if self.tokens:
            batch.token = f"sfpl-{uuid.uuid4().hex}"
        self._attempt(t, batch, attempt=0)

    def _attempt(self, t: _Table, batch: _Batch, attempt: int) -> None:
        began = time.monotonic()
        d = self._send(t.name, batch, attempt)
        d.addCallbacks(
            self._stored,
            self._failed,
            callbackArgs=(t, batch, began),
            errbackArgs=(t, batch, attempt),
        )

    @defer.inlineCallbacks
    def _send(self, table: str, batch: _Batch, attempt: int):
        if batch.token is None:
            stored = yield self.store.insert(table, batch.rows, dedup=attempt > 0 or batch.dedup)
            return stored
        if not batch.prepared:
            if batch.dedup:
                batch.rows = yield self.store.without_stored(table, batch.rows)
            journal = _journal_of(batch.entries)
            spans = _series_spans(batch.entries) if journal is None else None
            key = DEDUP_KEYS.get(table)
            if journal is not None and key is not None and batch.rows:
                first, last = batch.entries[0].origin, batch.entries[-1].origin
                if isinstance(first, Span) and isinstance(last, Span):
                    keys = [r.get(key) for r in batch.rows] if batch.dedup else None
                    record = JournalBatch(batch.token, table, first.start, last.end, keys)
                else:  # no copy to rebuild it from: the rows go into the journal
                    record = JournalBatch(batch.token, table, None, None, rows=batch.rows)
                yield journal.begin(record)
                batch.journals = [journal]
            elif spans and key is not None and batch.rows:
                # Rows of several spool series (one batcher for them all: one insert, one
                # set of view parts, instead of one per series): begun in each series'
                # journal, every record naming every entry's span, so whichever loader
                # finishes the batch after a crash rebuilds all of its rows in order.
                keys = [r.get(key) for r in batch.rows] if batch.dedup else None
                order = [(s.journal.series, s.start, s.end) for s in spans]
                for j in dict.fromkeys(s.journal for s in spans):
                    own = [s for s in spans if s.journal is j]
                    record = JournalBatch(
                        batch.token, table, own[0].start, own[-1].end, keys, spans=order
                    )
                    yield j.begin(record)
                    batch.journals.append(j)
            batch.prepared = True
        if not batch.rows:
            return 0
        stored = yield self.store.insert(table, batch.rows, token=batch.token)
        return stored

    def _stored(self, _, t: _Table, batch: _Batch, began) -> None:
        entries, rows = batch.entries, batch.rows
        elapsed = time.monotonic() - began
        self.breaker.success()
        st = self.stats
        st.total_batches += 1
        st.total_items += len(rows)
        st.rows_by_table[t.name] = st.rows_by_table.get(t.name, 0) + len(rows)
        st.flush_seconds += elapsed
        st.last_flush = self.reactor.seconds()
        st.recent.add(st.last_flush, len(rows))
        if t.settings.Strategy == "adaptive":
            if elapsed > ADAPTIVE_SLOW_SECONDS:
                t.target_size = max(ADAPTIVE_MIN_SIZE, t.target_size // 2)
            elif elapsed < ADAPTIVE_FAST_SECONDS:
                t.target_size = min(t.settings.MaxBatchSize * 4, int(t.target_size * 1.25) + 1)
        for journal in batch.journals:
            journal.end(batch.token or "").addErrback(_journal_failed)
        t.flushing = False
        for e in entries:
            e.deferred.callback(len(e.rows))
        self._consider(t)

    def _failed(self, failure: Failure, t: _Table, batch: _Batch, attempt: int) -> None:
        entries, rows = batch.entries, batch.rows
        self.stats.failed_attempts += 1
        self.breaker.failure()
        if t.settings.Strategy == "adaptive":
            t.target_size = max(ADAPTIVE_MIN_SIZE, t.target_size // 2)
        if attempt < t.settings.RetryAttempts:
            delay = min(MAX_BACKOFF_SECONDS, t.settings.RetryBackoffMs / 1000 * 2**attempt)
            delay = max(delay, self.breaker.seconds_until_trial())
            log.warn(
                "insert into {table} failed ({error}); retry {n} in {delay:.2f}s",
                table=t.name,
                error=failure.getErrorMessage(),
                n=attempt + 1,
                delay=delay,
            )
            self.reactor.callLater(delay, self._attempt, t, batch, attempt + 1)
            return
        self.stats.failed_batches += 1
        log.error(
            "giving up on {n} rows for {table} after {tries} attempts: {error}",
            n=len(rows),
            table=t.name,
            tries=attempt + 1,
            error=failure.getErrorMessage(),
        )
        for journal in batch.journals:
            journal.doubt(batch.token or "")  # it may be half stored: the loader finishes it
        t.flushing = False
        for e in entries:
            e.deferred.errback(StoreRefused(failure.getErrorMessage()))
        self._consider(t)

    def flush_all(self) -> defer.Deferred:
        """Flush every table now (shutdown); fires when everything queued has settled."""
        waits: list[defer.Deferred] = []
        for t in self.tables.values():
            waits.extend(e.deferred for e in t.entries)
            t.settings = replace(t.settings, Strategy="immediate")
            self._consider(t)
        settled: list[defer.Deferred[None]] = [defer.Deferred() for _ in waits]
        for d, s in zip(waits, settled, strict=True):
            d.addBoth(_also_fire, s)
        return defer.gatherResults(settled)

    def stop(self) -> None:
        for t in self.tables.values():
            if t.timer is not None and t.timer.active():
                t.timer.cancel()
            t.timer = None

    # -- numbers ----------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def queued_bytes(self) -> int:
        return sum(t.bytes for t in self.tables.values())

    def events_per_second(self) -> float:
        """Rows stored per second over the last minute (since the start, before one)."""
        now = self.reactor.seconds()
        recent = self.stats.recent
        span = min(recent.window, max(now - self.started, 1e-9))
        return recent.total(now) / span

    def report(self) -> dict:
        """The seed README's ``batching`` object, with values that mean what they say."""
        st = self.stats
        finished = st.total_batches + st.failed_batches
        return {
            "enabled": True,
            "total_batches": st.total_batches,
            "total_items": st.total_items,
            "failed_batches": st.failed_batches,
            "failed_attempts": st.failed_attempts,
            "avg_batch_size": round(st.total_items / st.total_batches, 3)
            if st.total_batches
            else 0,
            "avg_flush_latency_ms": round(st.flush_seconds * 1000 / st.total_batches, 3)
            if st.total_batches
            else 0,
            "queued_items": self.queued_rows,
            "memory_usage_mb": round(self.queued_bytes / (1024 * 1024), 3),
            "batch_success_rate": round(st.total_batches / finished, 4) if finished else 1.0,
            "events_per_second": round(self.events_per_second(), 3),
            "last_flush_time": _rfc3339(st.last_flush) if st.last_flush else None,
            "circuit": self.breaker.state,
        }


def _journal_of(entries: list[_Entry]) -> InsertJournal | None:
    """The insert journal of a batch whose every entry comes from one journaled source.

    Entries of a table are queued in source order and a batch takes a prefix of them, so a
    spool batch's rows are exactly the table's rows in the frames from the first origin's
    start to the last origin's end (less those left out as stored).
    """
    first = entries[0].origin
    if first is None or any(
        e.origin is None or e.origin.journal is not first.journal for e in entries
    ):
        return None
    return first.journal


def _series_spans(entries: list[_Entry]) -> list[Span] | None:
    """Every entry's span, when each comes from a spool series (of more than one journal)."""
    spans = [e.origin for e in entries]
    if all(isinstance(s, Span) for s in spans):
        return spans  # type: ignore[return-value]
    return None


def _also_fire(result: object, other: defer.Deferred[None]) -> object:
    other.callback(None)
    return result


def _journal_failed(failure: Failure) -> None:
    log.warn(
        "insert journal: recording a stored batch failed: {why}", why=failure.getErrorMessage()
    )


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def estimate_row_bytes(row: dict) -> int:
    """Rough bytes of a row: string lengths plus 8 for anything else."""
    return sum(len(v) if isinstance(v, str) else 8 for v in row.values()) + 16 * len(row)
