"""The insert journal: which batches may be half stored, so that a crash cannot leave a derived
table short.

ClickHouse commits an insert in pieces: the part of the table the gateway writes (``events``,
``payments``, ``agreed``) and then one part per materialized view (``hits``, ``dailies``, ...,
``ltv``, ``agreements``), each on its own. A crash between them leaves a batch in ``events``
but not (all) in ``hits``. Replaying it row by row cannot repair that: its rows are found in
``events`` and skipped, so the views never see them.

So every batch is sent with an ``insert_deduplication_token`` (``store.insert(..., token=)``),
and before it is sent the batcher appends a *begin* record here and ``fdatasync``-s it: the
token, the table, the span of spool frames its rows came from and, when some rows of that span
were left out (already stored), the keys of those it sent. Once the store confirmed the batch,
an *end* record follows (not synced: a lost end only causes a harmless re-send).

A begun batch without an end is *in doubt*: at start-up every such batch in the file; while
running, a batch the batcher gave up on. Before replaying anything the loader resolves them
(``Loader._resolve``): it rebuilds exactly the rows of the batch from the spool and, if any of
them reached the source table, sends them again with the same token. ClickHouse then skips the
source parts it already has and writes only the view parts that are missing (each view's
target keeps a deduplication window for that). If none reached the source table, nothing was
committed (views commit after their source) and the ordinary replay loads them as new rows.

Only after a *process* crash: a begin record carries the kernel's boot id. ClickHouse fsyncs
neither its parts nor its deduplication log, so after a power cut or a kernel crash (another
boot id) a part may have survived while the record of its token did not, and a re-send would
store it twice. Such a batch is not re-sent; the replay skips its stored rows as before.

Sources without such a copy: the JetStream loader (``notify/nats.py``) has no file to rebuild
a batch from (its rows are messages JetStream hands out again only after ``AckWait``, possibly
in other fetches, possibly never when their ack went out), so its begin records carry the
rows themselves (``JournalBatch.rows``, as JSON text: the rows came from JSON and come back
identical). Its loader finishes the batches in doubt from the journal alone (``finish``)
before it fetches anything.

File format: records of ``<u32 payload length><u32 crc32 of the payload>`` + a MessagePack
map. A torn or corrupt record ends the file (it was being appended when the process died; a
torn *begin* means its insert never started) and is cut off on open. When the file has grown
past ``COMPACT_BYTES`` it is rewritten with only the open begin records.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from sfpltracker.fsutil import fsync_dir, write_atomic
from sfpltracker.pipeline.spool import Position

log = Logger()

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
RECORD = struct.Struct("<II")  # payload length, crc32 of the payload
MAX_RECORD_BYTES = 64 * 1024 * 1024  # larger is a corrupt header, not a record
COMPACT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Span:
    """Where a batcher entry's rows come from: every row of its table in the spool frames
    ``[start, end)`` of the series this journal belongs to."""

    journal: InsertJournal
    start: Position
    end: Position


@dataclass(frozen=True)
class Journaled:
    """Where a batcher entry's rows come from when no file holds them (the JetStream loader):
    the batch's rows themselves are written to ``journal``."""

    journal: InsertJournal


@dataclass
class JournalBatch:
    """One batch as journaled: enough to rebuild exactly the rows it sent."""

    token: str
    table: str
    lo: Position | None  # the rows are those of ``table`` in the spool frames [lo, hi) ...
    hi: Position | None
    keys: list[Any] | None = None  # ... whose dedup key is one of these (None: all of them)
    boot: str | None = None  # the kernel's boot id when it was begun (set by the journal)
    rows: list[dict] | None = None  # or the rows themselves (a source without a spool)
    # A batch of several series (the store process's one batcher for every worker series):
    # each entry's (series, start, end) in the batch's order. The batch is begun in the
    # journal of every series it holds rows of, ``lo``/``hi`` being that series' own span.
    spans: list[tuple[str, Position, Position]] | None = None

    def to_record(self) -> dict:
        record = {
            "op": "begin",
            "token": self.token,
            "table": self.table,
            "lo": None if self.lo is None else list(self.lo),
            "hi": None if self.hi is None else list(self.hi),
            "keys": self.keys,
            "boot": self.boot,
        }
        if self.spans is not None:
            record["spans"] = [[name, *lo, *hi] for name, lo, hi in self.spans]
        if self.rows is not None:
            # JSON, not MessagePack: the rows came from JSON (a JetStream message), so they come
            # back identical, ints past 64 bits included.
            record["rows"] = json.dumps(self.rows, separators=(",", ":"))
        return record

    @classmethod
    def from_record(cls, rec: dict) -> JournalBatch:
        rows = rec.get("rows")
        spans = rec.get("spans")
        return cls(
            rec["token"],
            rec["table"],
            None if rec.get("lo") is None else Position(*rec["lo"]),
            None if rec.get("hi") is None else Position(*rec["hi"]),
            rec.get("keys"),
            rec.get("boot"),
            None if rows is None else json.loads(rows),
            None
            if spans is None
            else [(name, Position(a, b), Position(c, d)) for name, a, b, c, d in spans],
        )

    def __post_init__(self):
        self._sent = None if self.keys is None else {str(k).lower() for k in self.keys}

    def selects(self, key_value) -> bool:
        """Whether a row of the span with this dedup key value was part of the batch."""
        if self._sent is None or not key_value:
            return True  # a row without a key is never left out
        return str(key_value).lower() in self._sent


def boot_id() -> str | None:
    """This boot of the machine (Linux), None where the kernel does not say."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def encode_record(record: dict) -> bytes:
    payload = msgpack.packb(record, use_bin_type=True)
    return RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(data: bytes) -> tuple[list[dict], int]:
    """The intact records at the start of ``data`` and the offset just past the last one."""
    records, at = [], 0
    while at + RECORD.size <= len(data):
        length, crc = RECORD.unpack_from(data, at)
        start, end = at + RECORD.size, at + RECORD.size + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            record = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.UnpackException):
            break
        if not isinstance(record, dict) or record.get("op") not in ("begin", "end"):
            break
        records.append(record)
        at = end
    return records, at


class InsertJournal:
    """The journal of one spool series (``<series>/inserts.journal``).

    The file methods block (call them on a thread: ``begin``/``end`` return Deferreds that
    run them through ``blocking``); the in-memory state is guarded by a lock, so the reactor
    may read ``in_doubt()`` while a thread appends.
    """

    FILE = "inserts.journal"

    def __init__(self, directory: Path, blocking=None):
        self.path = Path(directory) / self.FILE
        self.series = self.path.parent.name  # the spool series it belongs to
        self._blocking = blocking or deferToThread
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._open: dict[str, bytes] = {}  # token -> its begin record (begun, not ended)
        self._batches: dict[str, JournalBatch] = {}
        self._doubt: dict[str, JournalBatch] = {}  # to resolve before replaying
        self.torn_bytes = 0  # cut off the end of the file when it was opened
        self.compactions = 0
        self.boot = boot_id()

    # -- life cycle (blocking) --------------------------------------------------------------

    def open(self) -> list[JournalBatch]:
        """Read the file; every batch begun and not ended is in doubt. Returns them."""
        created = not self.path.exists()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        records, valid = read_records(data)
        with self._lock:
            for rec in records:
                token: str = rec.get("token") or ""
                if rec["op"] == "begin":
                    self._open[token] = encode_record(rec)
                    self._batches[token] = JournalBatch.from_record(rec)
                else:
                    self._open.pop(token, None)
                    self._batches.pop(token, None)
            self._doubt = dict(self._batches)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if valid < len(data):
                # A record torn by a crash mid-append: its batch was never sent.
                self.torn_bytes = len(data) - valid
                os.ftruncate(self._fd, valid)
                os.fdatasync(self._fd)
                log.warn(
                    "insert journal: cut {n} bytes of a torn record off {path}",
                    n=self.torn_bytes,
                    path=str(self.path),
                )
            self._size = valid
            if not self._open and self._size:
                self._rewrite()  # everything in it is settled: start empty
        if created:
            fsync_dir(self.path.parent)
        return list(self._doubt.values())

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- records ----------------------------------------------------------------------------

    def begin(self, batch: JournalBatch) -> defer.Deferred:
        """Record ``batch`` durably; fires once it is on disk (send the batch only then)."""
        return self._blocking(self.write_begin, batch)

    def end(self, token: str) -> defer.Deferred:
        """``token``'s batch is settled (stored, or resolved after a doubt)."""
        return self._blocking(self.write_end, token)

    def write_begin(self, batch: JournalBatch) -> None:
        if batch.boot is None:
            batch.boot = self.boot
        record = encode_record(batch.to_record())
        with self._lock:
            self._append(record)
            assert self._fd is not None  # open() came first
            os.fdatasync(self._fd)
            self._open[batch.token] = record
            self._batches[batch.token] = batch

    def write_end(self, token: str) -> None:
        with self._lock:
            self._doubt.pop(token, None)
            self._batches.pop(token, None)
            if self._open.pop(token, None) is None:
                return
            self._append(encode_record({"op": "end", "token": token}))
            if self._size > COMPACT_BYTES:
                self._rewrite()

    def doubt(self, token: str) -> None:
        """The batcher gave up on ``token``'s batch: it may be half stored."""
        with self._lock:
            batch = self._batches.get(token)
            if batch is not None:
                self._doubt[token] = batch

    # -- state ------------------------------------------------------------------------------

    def same_boot(self, batch: JournalBatch) -> bool:
        """Whether ``batch`` was begun since the machine last started (a process crash
        keeps the page cache, so ClickHouse's parts and deduplication log agree)."""
        return batch.boot == self.boot

    def in_doubt(self) -> list[JournalBatch]:
        with self._lock:
            return list(self._doubt.values())

    @property
    def open_batches(self) -> int:
        with self._lock:
            return len(self._open)

    @property
    def size(self) -> int:
        return self._size

    # -- file -------------------------------------------------------------------------------

    def _append(self, record: bytes) -> None:
        if self._fd is None:
            raise OSError("the insert journal is not open")
        try:
            _write_all(self._fd, record)
        except OSError:
            # Never leave half a record: the records after it could not be read back.
            os.ftruncate(self._fd, self._size)
            raise
        self._size += len(record)

    def _rewrite(self) -> None:
        """Replace the file by one holding only the open begin records (atomically)."""
        data = b"".join(self._open.values())
        write_atomic(self.path, data, 0o644)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)
        self.compactions += 1


@defer.inlineCallbacks
def finish(store, journal: InsertJournal, batch: JournalBatch, rows: list[dict], who: str):
    """Finish ``batch`` (in doubt; ``rows``: exactly the rows it sent) in ``store``.

    If any of them reached the source table, they are sent again with the batch's token: the
    store skips the parts that landed and writes the missing ones. If none did, nothing of it
    was committed (a view commits after its source) and the caller loads them as new rows.
    Fires with what was done: ``"empty"``, ``"settled"`` (nothing had landed), ``"resent"``
    or ``"after_reboot"`` (not re-sent: see the module docstring). ``who`` prefixes the logs.

    A batch of several series (``spans``) is begun in each series' journal, and each of their
    loaders finishes it on its own: it is sent again whole with its token whether or not any of
    it landed. A loader that found nothing landed and loaded its rows anew would leave the next
    loader unable to tell those rows from the batch's (the source part of a batch spanning two
    months is two parts, so "landed" is not one answer either); with the token, the first
    re-send writes every missing part and the later ones are skipped whole.
    """
    if not rows:
        return "empty"
    if batch.spans is not None and journal.same_boot(batch):
        yield store.insert(batch.table, rows, token=batch.token)
        log.info(
            "{who}: re-sent an interrupted insert of {n} {table} rows of several spool "
            "series with its token (the parts that landed are skipped)",
            who=who,
            n=len(rows),
            table=batch.table,
        )
        return "resent"
    fresh = yield store.without_stored(batch.table, rows)
    if len(fresh) == len(rows):
        log.info(
            "{who}: an interrupted insert of {n} {table} rows had not landed; not re-sent",
            who=who,
            n=len(rows),
            table=batch.table,
        )
        return "settled"
    if not journal.same_boot(batch):
        log.warn(
            "{who}: an insert of {n} {table} rows was cut short by a restart of the machine; "
            "not re-sent (ClickHouse's parts and deduplication log may disagree after a "
            "power cut): its stored rows are skipped and the views of {table} may miss them",
            who=who,
            n=len(rows),
            table=batch.table,
        )
        return "after_reboot"
    yield store.insert(batch.table, rows, token=batch.token)
    log.info(
        "{who}: re-sent an interrupted insert of {n} {table} rows ({landed} had landed); "
        "the views' missing parts are written",
        who=who,
        n=len(rows),
        table=batch.table,
        landed=len(rows) - len(fresh),
    )
    return "resent"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
