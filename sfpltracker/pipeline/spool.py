"""The spool: append-only segment files where accepted records wait for the store.

One *series* is a directory written by exactly one writer (one ingest process)::

    DataDirectory/spool/<series>/
        0000000000000001.seg   segments, appended to by the series' writer only
        0000000000000002.seg
        committed              the loader's durable position: everything before it is stored

Several ingest processes can each own a series and one loader process drain them all (see
DESIGN.md "Growing past one process"); with `Workers` > 1 each worker writes its own series and the
store process loads them all (ARCHITECTURE.md "Processes").

A segment is ``MAGIC`` followed by frames. A frame holds the records of one ``accept()`` call::

    <I payload length> <I record count> <Q accepted at, epoch ms> <I crc32> payload

The crc covers the first 16 header bytes and the payload, so a torn write (a crash mid-append)
or a zero-filled tail never passes for a record. The payload is the list ``[[table, row], ...]``
in MessagePack (the rows are JSON-friendly values; msgpack encodes them about four times
faster than ``json`` and is already installed with autobahn).

Durability: ``SpoolWriter.append`` returns a Deferred that fires only after the frame is written
*and* ``fdatasync``-ed. Frames arriving within the commit window share one write and one sync
(group commit); the write runs on the series' own thread, so the reactor never waits on disk.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgpack
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sfpltracker.fsutil import fsync_dir, write_atomic

log = Logger()

MAGIC = b"SFPLSPL1"
HEADER = struct.Struct("<IIQI")  # length, count, accepted_ms, crc
SEGMENT_SUFFIX = ".seg"
COMMITTED_FILE = "committed"
# Sanity bound on a frame's length: anything larger is a corrupt header, not a record.
MAX_FRAME_BYTES = 256 * 1024 * 1024
# A group larger than this is committed at once instead of waiting for the window.
MAX_GROUP_BYTES = 4 * 1024 * 1024


class Position(NamedTuple):
    """A place in a series: a segment number and a byte offset in it (ordered as a tuple)."""

    segment: int
    offset: int


def segment_name(seq: int) -> str:
    return f"{seq:016d}{SEGMENT_SUFFIX}"


def segment_path(directory: Path, seq: int) -> Path:
    return Path(directory) / segment_name(seq)


def list_segments(directory: Path) -> list[int]:
    """Segment numbers present in ``directory``, ascending."""
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        stem, dot, suffix = name.partition(".")
        if dot and "." + suffix == SEGMENT_SUFFIX and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


# -- frames --------------------------------------------------------------------------------


def _crc(head16: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(head16))


def encode_frame(records: list, accepted_ms: int) -> bytes:
    """One frame holding ``records`` (a list of ``(table, row)``)."""
    payload = msgpack.packb(records, use_bin_type=True)
    head16 = struct.pack("<IIQ", len(payload), len(records), accepted_ms)
    return head16 + struct.pack("<I", _crc(head16, payload)) + payload


def decode_records(payload: bytes) -> list[tuple[str, dict]]:
    return [(table, row) for table, row in msgpack.unpackb(payload, raw=False)]


@dataclass
class Frame:
    """A frame read back: where it starts and ends, and its records.

    A frame with no records is a *skip*: the reader moved past the end of a segment (or past
    unreadable bytes) and ``end`` is where reading goes on.
    """

    start: Position
    end: Position
    accepted_ms: int = 0
    records: list = field(default_factory=list)
    size: int = 0
    corrupt: str = ""

    @property
    def count(self) -> int:
        return len(self.records)


@dataclass
class SegmentScan:
    """What a pass over one segment found."""

    valid_end: int  # offset just past the last intact frame
    frames: int = 0
    records: int = 0
    first_ms: int | None = None
    problem: str = ""  # why the scan stopped before the end of the file, if it did


def scan_segment(path: Path, start: int = len(MAGIC), verify: bool = True) -> SegmentScan:
    """Walk the frames of a segment from ``start``; stop at the first torn or corrupt one.

    With ``verify`` each payload's checksum is checked (recovery of the last segment); without
    it only headers are read (counting the backlog at start-up).
    """
    with open(path, "rb") as f:
        if start <= len(MAGIC):
            if f.read(len(MAGIC)) != MAGIC:
                return SegmentScan(valid_end=0, problem="no segment header")
            start = len(MAGIC)
        f.seek(start)
        scan = SegmentScan(valid_end=start)
        while True:
            head = f.read(HEADER.size)
            if not head:
                return scan
            if len(head) < HEADER.size:
                scan.problem = "torn frame header"
                return scan
            length, count, accepted_ms, crc = HEADER.unpack(head)
            if length > MAX_FRAME_BYTES:
                scan.problem = "impossible frame length"
                return scan
            if verify:
                payload = f.read(length)
                if len(payload) < length:
                    scan.problem = "torn frame"
                    return scan
                if _crc(head[:16], payload) != crc:
                    scan.problem = "checksum mismatch"
                    return scan
            else:
                here = f.tell()
                if f.seek(0, os.SEEK_END) < here + length:
                    scan.problem = "torn frame"
                    return scan
                f.seek(here + length)
            scan.valid_end += HEADER.size + length
            scan.frames += 1
            scan.records += count
            if scan.first_ms is None:
                scan.first_ms = accepted_ms


@dataclass
class ReadResult:
    frames: list[Frame]
    next: Position


def read_frames(directory: Path, start: Position, sizes: dict[int, int], budget: int) -> ReadResult:
    """Frames from ``start`` onward, about ``budget`` payload bytes (at least one frame).

    ``sizes`` maps each segment to the bytes known to be durable in it (the writer's view);
    nothing past them is read, so a frame still being written is never seen. Reaching the
    end of a segment that is not the last one yields a skip frame to the next segment;
    unreadable bytes in the middle of a segment yield a skip frame marked ``corrupt``.
    """
    frames: list[Frame] = []
    pos = start
    used = 0
    last = max(sizes) if sizes else start.segment
    while used < budget:
        end = sizes.get(pos.segment)
        if end is None or pos.offset >= end:
            if pos.segment >= last:
                break  # caught up with the writer
            nxt = min((s for s in sizes if s > pos.segment), default=last)
            new = Position(nxt, len(MAGIC))
            frames.append(Frame(pos, new))
            pos = new
            continue
        with open(segment_path(directory, pos.segment), "rb") as f:
            f.seek(pos.offset)
            while used < budget and pos.offset < end:
                problem = ""
                head = f.read(HEADER.size)
                length = count = accepted_ms = 0
                if len(head) < HEADER.size:
                    problem = "torn frame header"
                else:
                    length, count, accepted_ms, crc = HEADER.unpack(head)
                    if length > MAX_FRAME_BYTES or pos.offset + HEADER.size + length > end:
                        problem = "impossible frame length"
                    else:
                        payload = f.read(length)
                        if len(payload) < length:
                            problem = "torn frame"
                        elif _crc(head[:16], payload) != crc:
                            problem = "checksum mismatch"
                if problem:
                    # Nothing after this point of the segment can be trusted: move past it.
                    skip_to = Position(pos.segment, end)
                    frames.append(Frame(pos, skip_to, corrupt=f"{problem} at {pos.offset}"))
                    used += end - pos.offset
                    pos = skip_to
                    break
                new = Position(pos.segment, pos.offset + HEADER.size + length)
                records = decode_records(payload)
                frames.append(Frame(pos, new, accepted_ms, records, HEADER.size + length))
                used += HEADER.size + length
                pos = new
    return ReadResult(frames, pos)


# -- the committed position ----------------------------------------------------------------


def load_committed(directory: Path) -> Position | None:
    """The loader's last durable position, or None (no file, or unreadable)."""
    try:
        data = json.loads((Path(directory) / COMMITTED_FILE).read_text())
        return Position(int(data["segment"]), int(data["offset"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError) as e:
        log.warn("spool committed position unreadable ({why}); replaying everything", why=e)
        return None


def save_committed(directory: Path, pos: Position) -> None:
    """Write the position atomically and durably (``fsutil.write_atomic``)."""
    data = json.dumps({"segment": pos.segment, "offset": pos.offset})
    write_atomic(Path(directory) / COMMITTED_FILE, data)


# -- the writer ----------------------------------------------------------------------------

Blocking = Callable[..., defer.Deferred]


@dataclass
class Recovery:
    """What opening a series found and did."""

    sizes: dict[int, int]  # segments -> intact bytes, this run's new one included
    new_segment: Position = Position(0, 0)
    torn_bytes: int = 0
    torn_segment: int | None = None
    problem: str = ""


@dataclass
class _Group:
    end: Position
    created: int | None  # a segment created for this group
    seconds: float  # write + fdatasync


class LatencyStats:
    """Count, sum, max, last and a fixed-bucket histogram of durations (seconds)."""

    BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self):
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.last = 0.0
        self.buckets = [0] * len(self.BUCKETS)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.last = seconds
        self.max = max(self.max, seconds)
        for i, bound in enumerate(self.BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                break

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.BUCKETS, self.buckets, strict=True):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", self.count))
        return out

    def report(self) -> dict:
        return {
            "count": self.count,
            "last_ms": round(self.last * 1000, 3),
            "avg_ms": round(self.total * 1000 / self.count, 3) if self.count else 0,
            "max_ms": round(self.max * 1000, 3),
        }


class SpoolWriter:
    """The one writer of a series: appends frames, group-commits them with fdatasync.

    State touched by the reactor (pending frames, sizes, the durable position) and state
    touched by the writer thread (the open file, its offset) are kept apart: the thread
    returns what it did and the reactor records it.
    """

    def __init__(
        self,
        directory: Path,
        reactor,
        commit_window: float = 0.002,
        segment_bytes: int = 64 * 1024 * 1024,
        blocking: Blocking | None = None,
    ):
        self.directory = Path(directory)
        self.reactor = reactor
        self.commit_window = commit_window
        self.segment_bytes = segment_bytes
        self._pool: ThreadPool | None = None
        self._blocking = blocking
        # reactor side
        self.sizes: dict[int, int] = {}  # segment -> durable bytes
        self.first_new = Position(0, 0)  # where this run's first frame goes
        self._pending: list[bytes] = []
        self._waiting: list[defer.Deferred] = []
        self.pending_bytes = 0
        self._timer = None
        self._committing = False
        self._closed = False
        self._idle: list[defer.Deferred] = []
        self.listeners: list[Callable[[], None]] = []
        self.fsync = LatencyStats()
        self.groups = 0
        self.appended_frames = 0
        self.appended_records = 0
        self.write_errors = 0
        self.last_error: str | None = None
        # writer-thread side
        self._fd: int | None = None
        self._seq = 0
        self._offset = 0

    # -- life cycle -------------------------------------------------------------------------

    def _run(self, fn, *args) -> defer.Deferred:
        if self._blocking is not None:
            return self._blocking(fn, *args)
        assert self._pool is not None, "open() starts the writer thread"
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def open(self) -> defer.Deferred:
        """Recover the series (truncate a torn tail) and start a new segment for this run."""
        if self._blocking is None:
            self._pool = ThreadPool(1, 1, name=f"spool-{self.directory.name}")
            self._pool.start()
            self.reactor.addSystemEventTrigger("after", "shutdown", self._stop_pool)
        d = self._run(self._recover)
        d.addCallback(self._opened)
        return d

    def _opened(self, recovery: Recovery) -> Recovery:
        self.sizes = dict(recovery.sizes)
        self.first_new = recovery.new_segment
        if recovery.torn_bytes:
            log.warn(
                "spool: dropped a torn tail of {n} bytes in segment {seg} ({why}); "
                "it held no acknowledged record",
                n=recovery.torn_bytes,
                seg=recovery.torn_segment,
                why=recovery.problem,
            )
        return recovery

    @property
    def end(self) -> Position:
        """The durable end of the series: the last committed byte of the newest segment."""
        seq = max(self.sizes) if self.sizes else self.first_new.segment
        return Position(seq, self.sizes.get(seq, 0))

    @property
    def bytes_on_disk(self) -> int:
        return sum(self.sizes.values())

    def append(self, frame: bytes, records: int = 0) -> defer.Deferred:
        """Queue ``frame``; the Deferred fires with the frame's end position once durable."""
        if self._closed:
            return defer.fail(RuntimeError("the spool writer is closed"))
        d: defer.Deferred = defer.Deferred()
        self._pending.append(frame)
        self._waiting.append(d)
        self.pending_bytes += len(frame)
        self.appended_records += records
        if not self._committing:
            if self.pending_bytes >= MAX_GROUP_BYTES:
                self._commit()
            elif self._timer is None:
                self._timer = self.reactor.callLater(self.commit_window, self._commit)
        return d

    def flush(self) -> defer.Deferred:
        """Fires once everything appended so far has been committed (or has failed)."""
        if not self._committing and not self._pending:
            return defer.succeed(None)
        if not self._committing:
            self._commit()
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    @defer.inlineCallbacks
    def close(self):
        yield self.flush()
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        yield self._run(self._close_file)
        self._stop_pool()

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def forget(self, segments) -> None:
        """The loader deleted these segments."""
        for seq in segments:
            self.sizes.pop(seq, None)

    # -- commits (reactor side) -------------------------------------------------------------

    def _commit(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._committing or not self._pending:
            return
        data = b"".join(self._pending)
        sizes, waiting = [len(f) for f in self._pending], self._waiting
        self._pending, self._waiting, self.pending_bytes = [], [], 0
        self._committing = True
        d = self._run(self._write_group, data)
        d.addCallbacks(
            self._committed,
            self._failed,
            callbackArgs=(sizes, waiting),
            errbackArgs=(waiting,),
        )

    def _committed(self, group: _Group, sizes: list[int], waiting: list[defer.Deferred]) -> None:
        self._committing = False
        self.groups += 1
        self.appended_frames += len(sizes)
        self.fsync.observe(group.seconds)
        self.sizes[group.end.segment] = group.end.offset
        self.last_error = None
        # A group is contiguous in one segment: each frame learns its own end position.
        offset = group.end.offset - sum(sizes)
        for d, size in zip(waiting, sizes, strict=True):
            offset += size
            d.callback(Position(group.end.segment, offset))
        for listener in self.listeners:
            listener()
        self._after_commit()

    def _failed(self, failure, waiting: list[defer.Deferred]) -> None:
        self._committing = False
        self.write_errors += 1
        self.last_error = failure.getErrorMessage()
        log.error("spool write failed: {why}", why=self.last_error)
        for d in waiting:
            d.errback(failure)
        self._after_commit()

    def _after_commit(self) -> None:
        if self._pending:
            # These frames already waited out a whole commit: no extra window.
            self._commit()
        else:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    # -- files (writer thread) --------------------------------------------------------------

    def _recover(self) -> Recovery:
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = list_segments(self.directory)
        sizes = {seq: segment_path(self.directory, seq).stat().st_size for seq in segments}
        recovery = Recovery(sizes)
        if segments:
            last = segments[-1]
            path = segment_path(self.directory, last)
            scan = scan_segment(path, verify=True)
            if scan.valid_end == 0:
                # Created but never written past its header (a crash while rolling).
                path.unlink()
                del sizes[last]
                recovery.torn_bytes, recovery.torn_segment = recovery.sizes.get(last, 0), last
            elif scan.valid_end < sizes[last]:
                recovery.torn_bytes = sizes[last] - scan.valid_end
                recovery.torn_segment = last
                recovery.problem = scan.problem
                with open(path, "r+b") as f:
                    f.truncate(scan.valid_end)
                    os.fsync(f.fileno())
                sizes[last] = scan.valid_end
        committed = load_committed(self.directory)
        floor = max([*segments, committed.segment if committed else 0])
        self._seq = floor
        self._new_segment()
        sizes[self._seq] = self._offset
        recovery.sizes = sizes
        recovery.new_segment = Position(self._seq, self._offset)
        return recovery

    def _new_segment(self) -> int:
        """Close the current segment and start the next one (durably created)."""
        self._close_file()
        seq = self._seq + 1
        path = segment_path(self.directory, seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, MAGIC, 0)
            os.fdatasync(fd)
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            try:
                path.unlink()
            except OSError:
                pass
            raise
        self._fd, self._seq, self._offset = fd, seq, len(MAGIC)
        return seq

    def _write_group(self, data: bytes) -> _Group:
        created = None
        if self._fd is None or self._offset >= self.segment_bytes:
            created = self._new_segment()
        start = self._offset
        began = time.monotonic()
        fd = self._fd
        assert fd is not None  # opened above
        try:
            _write_all(fd, data, start)
            os.fdatasync(fd)
        except OSError:
            # Take the partial group back out, so no later frame follows garbage.
            try:
                os.ftruncate(fd, start)
                os.fdatasync(fd)
            except OSError:
                self._close_file()  # the next group starts a fresh segment
            raise
        self._offset = start + len(data)
        return _Group(Position(self._seq, self._offset), created, time.monotonic() - began)

    def _close_file(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        offset += n
