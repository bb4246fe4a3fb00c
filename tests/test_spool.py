"""Unit tests of the spool: framing, torn-tail recovery, group commit, the loader's positions.

Files are real (``tmp_path``); time is ``MemoryReactorClock``; the "threads" are runners the
test drives, so the order of writes, fsyncs and acknowledgements is observable.
"""

from __future__ import annotations

import os
import uuid

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from sfpltracker.config import BatchSettings
from sfpltracker.pipeline.batcher import Batcher
from sfpltracker.pipeline.intake import Refused
from sfpltracker.pipeline.loader import Loader
from sfpltracker.pipeline.spool import (
    HEADER,
    MAGIC,
    Frame,
    Position,
    SpoolWriter,
    encode_frame,
    list_segments,
    load_committed,
    read_frames,
    scan_segment,
    segment_path,
)
from sfpltracker.pipeline.spool_intake import SpoolIntake
from sfpltracker.testing import MemoryStore


def now(fn, *args):
    """Run "blocking" work at once (the files are real, only the thread is skipped)."""
    return defer.maybeDeferred(fn, *args)


class ManualRunner:
    """Blocking work queued until the test runs it: shows what shares one write + fsync."""

    def __init__(self):
        self.calls = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.calls.append((fn, args, d))
        return d

    def run_one(self):
        fn, args, d = self.calls.pop(0)
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - handed to the Deferred like a thread would
            d.errback(e)
        else:
            d.callback(result)


def event(n: int) -> tuple[str, dict]:
    return ("events", {"eid": str(uuid.uuid4()), "ename": f"e{n}", "created_at": 1_700_000_000})


def fired(d: defer.Deferred):
    results = []
    d.addBoth(results.append)
    return results


def open_writer(directory, clock=None, **kw) -> SpoolWriter:
    writer = SpoolWriter(directory, clock or MemoryReactorClock(), blocking=now, **kw)
    assert fired(writer.open())
    return writer


def append_now(writer: SpoolWriter, clock, records) -> Position:
    results = fired(writer.append(encode_frame(records, 1000), len(records)))
    clock.advance(writer.commit_window)
    assert results and isinstance(results[0], Position), results
    return results[0]


# -- framing -------------------------------------------------------------------------------


def test_frames_round_trip_and_carry_count_and_time(tmp_path):
    clock = MemoryReactorClock()
    writer = open_writer(tmp_path / "s", clock)
    batches = [[event(1)], [event(2), event(3)], [("payments", {"id": "p1", "amt": 9.5})]]
    for records in batches:
        append_now(writer, clock, records)
    read = read_frames(writer.directory, writer.first_new, dict(writer.sizes), 1 << 20)
    assert [f.records for f in read.frames] == batches
    assert [f.count for f in read.frames] == [1, 2, 1]
    assert all(f.accepted_ms == 1000 for f in read.frames)
    assert read.next == writer.end


def test_checksum_catches_a_flipped_byte(tmp_path):
    clock = MemoryReactorClock()
    writer = open_writer(tmp_path / "s", clock)
    append_now(writer, clock, [event(1)])
    end = append_now(writer, clock, [event(2)])
    path = segment_path(writer.directory, end.segment)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the second frame's payload
    path.write_bytes(bytes(data))
    scan = scan_segment(path)
    assert scan.frames == 1 and scan.problem == "checksum mismatch"
    read = read_frames(writer.directory, writer.first_new, dict(writer.sizes), 1 << 20)
    assert len(read.frames) == 2
    assert read.frames[0].count == 1
    assert read.frames[1].count == 0 and "checksum mismatch" in read.frames[1].corrupt


def test_zero_filled_tail_is_not_a_frame(tmp_path):
    clock = MemoryReactorClock()
    writer = open_writer(tmp_path / "s", clock)
    end = append_now(writer, clock, [event(1)])
    path = segment_path(writer.directory, end.segment)
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)  # what a crash can leave after the size grew
    scan = scan_segment(path)
    assert scan.frames == 1 and scan.valid_end == end.offset and scan.problem


# -- recovery ------------------------------------------------------------------------------


def test_reopen_truncates_a_torn_tail_and_keeps_what_precedes_it(tmp_path):
    clock = MemoryReactorClock()
    directory = tmp_path / "s"
    writer = open_writer(directory, clock)
    kept = [[event(n)] for n in range(5)]
    for records in kept:
        before_last = append_now(writer, clock, records)
    end = append_now(writer, clock, [event(99)])
    path = segment_path(directory, end.segment)
    size = path.stat().st_size
    os.truncate(path, size - 7)  # the last frame, torn mid-payload

    again = SpoolWriter(directory, clock, blocking=now)
    recovery = fired(again.open())[0]
    assert recovery.torn_segment == end.segment
    assert recovery.torn_bytes == size - 7 - before_last.offset
    assert path.stat().st_size == again.sizes[end.segment] == before_last.offset
    assert again.first_new.segment == end.segment + 1  # this run writes a fresh segment
    read = read_frames(directory, Position(end.segment, len(MAGIC)), dict(again.sizes), 1 << 20)
    assert [f.records for f in read.frames if f.records] == kept


def test_reopen_drops_a_segment_torn_inside_its_header(tmp_path):
    directory = tmp_path / "s"
    directory.mkdir()
    segment_path(directory, 3).write_bytes(MAGIC[:5])
    writer = open_writer(directory)
    assert 3 not in writer.sizes and list_segments(directory) == [4]


# -- group commit --------------------------------------------------------------------------


def test_group_commit_acks_only_after_fsync_and_shares_one_write(tmp_path):
    clock = MemoryReactorClock()
    runner = ManualRunner()
    writer = SpoolWriter(tmp_path / "s", clock, commit_window=0.002, blocking=runner)
    writer.open()
    runner.run_one()

    first = fired(writer.append(encode_frame([event(0)], 1), 1))
    assert runner.calls == []  # waiting for the commit window
    clock.advance(0.002)
    assert len(runner.calls) == 1 and first == []  # written and synced on the thread, not yet
    later = [fired(writer.append(encode_frame([event(n)], 1), 1)) for n in range(1, 5)]
    clock.advance(0.01)
    assert len(runner.calls) == 1  # one commit at a time: the next group waits for this one
    assert first == [] and all(r == [] for r in later)

    runner.run_one()  # write + fdatasync of the first frame
    assert isinstance(first[0], Position)
    assert all(r == [] for r in later)
    assert len(runner.calls) == 1  # the four waiting frames: one group, started at once
    runner.run_one()
    assert all(isinstance(r[0], Position) for r in later)
    assert writer.groups == 2 and writer.fsync.count == 2 and writer.appended_frames == 5
    assert later[-1][0] == writer.end


def test_commit_window_zero_still_groups_one_reactor_turn(tmp_path):
    clock = MemoryReactorClock()
    runner = ManualRunner()
    writer = SpoolWriter(tmp_path / "s", clock, commit_window=0, blocking=runner)
    writer.open()
    runner.run_one()
    acks = [fired(writer.append(encode_frame([event(n)], 1), 1)) for n in range(3)]
    clock.advance(0)
    assert len(runner.calls) == 1
    runner.run_one()
    assert all(a for a in acks) and writer.groups == 1


def test_segments_roll_at_their_size(tmp_path):
    clock = MemoryReactorClock()
    writer = open_writer(tmp_path / "s", clock, segment_bytes=300)
    for n in range(12):
        append_now(writer, clock, [event(n)])
    assert len(list_segments(writer.directory)) > 2
    read = read_frames(writer.directory, writer.first_new, dict(writer.sizes), 1 << 20)
    assert sum(f.count for f in read.frames) == 12
    assert read.next == writer.end


def test_disk_full_refuses_and_leaves_no_garbage(tmp_path):
    """A real ENOSPC (writes to /dev/full): the group fails, later groups go on cleanly."""
    clock = MemoryReactorClock()
    directory = tmp_path / "s"
    intake = SpoolIntake(
        tmp_path, _batcher(clock, _store()), clock, writer_blocking=now, loader_blocking=now
    )
    intake.writer.directory = directory
    intake.loader.directory = directory
    assert fired(intake.start())
    ok = fired(intake.accept([event(1)]))
    clock.advance(0.01)
    assert ok == [None]
    real_fd = intake.writer._fd
    intake.writer._fd = os.open("/dev/full", os.O_WRONLY)  # the disk is now full
    os.close(real_fd)
    full = fired(intake.accept([event(2)]))
    clock.advance(0.01)
    assert full[0].check(Refused) and "No space left" in full[0].value.reason
    assert intake.status() == "down"
    after = fired(intake.accept([event(3)]))
    clock.advance(0.01)
    assert after == [None]  # a fresh segment, the full "disk" left behind
    assert intake.status() != "down"
    read = read_frames(directory, Position(1, len(MAGIC)), dict(intake.writer.sizes), 1 << 20)
    names = [row["ename"] for f in read.frames for _, row in f.records]
    assert names == ["e1", "e3"] and not any(f.corrupt for f in read.frames)


def test_reports_fsync_latency_in_buckets(tmp_path):
    clock = MemoryReactorClock()
    writer = open_writer(tmp_path / "s", clock)
    append_now(writer, clock, [event(1)])
    cumulative = dict(writer.fsync.cumulative())
    assert cumulative["+Inf"] == 1 and writer.fsync.report()["count"] == 1


# -- the loader ----------------------------------------------------------------------------


def _store() -> MemoryStore:
    # No insert tokens (a ClickHouse server store): replays are sent with dedup.
    return MemoryStore(tokens=False)


def _eids(store: MemoryStore) -> list[str]:
    return [r["eid"] for r in store.rows("events")]


def _batcher(clock, store):
    settings = BatchSettings("immediate", 100, 0.0, 10, 3, 1, 10)
    return Batcher(store, clock, {"events": settings, "payments": settings})


def _setup(tmp_path, clock, store, **loader_kw):
    writer = open_writer(tmp_path / "s", clock)
    loader = Loader(writer, _batcher(clock, store), clock, store=store, blocking=now, **loader_kw)
    assert fired(loader.start())
    return writer, loader


def _spool(writer, clock, loader, n, start=0):
    records = []
    for i in range(start, start + n):
        rec = [event(i)]
        frame = encode_frame(rec, 1000)
        size = len(frame)

        def offer(end, rec=rec, size=size):  # as SpoolIntake does, before the loader wakes
            loader.offer(Frame(Position(end.segment, end.offset - size), end, 1000, rec, size))
            return end

        ends = fired(writer.append(frame, 1).addCallback(offer))
        clock.advance(writer.commit_window)
        assert ends and isinstance(ends[0], Position)
        records.append(rec[0][1]["eid"])
    return records


def test_loader_commits_only_what_the_store_confirmed(tmp_path):
    clock = MemoryReactorClock()
    store = _store()
    store.held = []
    writer, loader = _setup(tmp_path, clock, store)
    eids = _spool(writer, clock, loader, 3)
    assert loader.committed == writer.first_new and loader.pending_records == 3
    assert store.held
    store.held.pop(0).callback(None)
    assert loader.committed > writer.first_new
    while store.held:
        store.held.pop(0).callback(None)
    assert loader.committed == writer.end and loader.pending_records == 0
    clock.advance(loader.persist_interval)
    assert load_committed(writer.directory) == writer.end and store.synced >= 1
    assert _eids(store) == eids and all(not dedup for _, _, dedup, _ in store.calls)
    assert loader.disk_reads == 0  # caught up: frames came from the in-memory tail


def test_loader_reads_from_disk_what_the_tail_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr("sfpltracker.pipeline.loader.MAX_TAIL_BYTES", 300)
    clock = MemoryReactorClock()
    store = _store()
    store.held = []
    writer, loader = _setup(tmp_path, clock, store, max_in_flight_bytes=150)
    eids = _spool(writer, clock, loader, 12)
    assert loader.tail_bytes <= 300
    while store.held:
        store.held.pop(0).callback(None)
    assert _eids(store) == eids and loader.committed == writer.end
    assert loader.disk_reads > 0


def test_store_outage_rewinds_and_replays_with_dedup_exactly_once(tmp_path):
    clock = MemoryReactorClock()
    store = _store()
    writer, loader = _setup(tmp_path, clock, store)
    eids = _spool(writer, clock, loader, 2)
    assert _eids(store) == eids
    store.down = True
    more = _spool(writer, clock, loader, 3, start=2)
    clock.advance(1)  # retries run out; the loader rewinds to the committed position
    assert loader.store_failing and loader.pending_records == 3
    committed = loader.committed
    for _ in range(20):
        clock.advance(1)
    assert loader.committed == committed  # nothing moves while the store refuses
    store.down = False
    for _ in range(20):
        clock.advance(1)
    assert loader.committed == writer.end and not loader.store_failing
    assert sorted(_eids(store)) == sorted(eids + more) and len(_eids(store)) == 5
    assert any(dedup for _, _, dedup, _ in store.calls) and loader.replayed_records >= 3


def test_loader_keeps_in_flight_bounded_while_the_store_hangs(tmp_path):
    clock = MemoryReactorClock()
    store = _store()
    store.held = []  # never confirms
    writer, loader = _setup(tmp_path, clock, store, max_in_flight_bytes=2000)
    _spool(writer, clock, loader, 40)
    frame = HEADER.size + len(encode_frame([event(0)], 1)) - HEADER.size
    assert loader.in_flight_bytes <= 2000 + frame
    assert loader.read_pos < writer.end  # the rest waits on disk
    assert loader.pending_records == 40


def test_restart_replays_past_the_committed_position_with_dedup(tmp_path):
    clock = MemoryReactorClock()
    store = _store()
    writer, loader = _setup(tmp_path, clock, store, persist_interval=1000)
    first = _spool(writer, clock, loader, 2)
    clock.advance(1000)  # the position after these two is saved
    later = _spool(writer, clock, loader, 3, start=2)  # stored, but the position not saved
    assert load_committed(writer.directory) < writer.end
    # "crash": nothing is closed; a new writer and loader open the same series
    calls_before = len(store.calls)
    writer2, loader2 = _setup(tmp_path, clock, store)
    clock.advance(1)
    assert loader2.replayed_records == 3 and loader2.loaded_records == 3
    assert len(_eids(store)) == 5 and sorted(_eids(store)) == sorted(first + later)
    replays = store.calls[calls_before:]
    assert replays and all(dedup for _, _, dedup, _ in replays)
    assert loader2.pending_records == 0 and loader2.committed == writer2.end


def test_loaded_segments_are_deleted(tmp_path):
    clock = MemoryReactorClock()
    store = _store()
    directory = tmp_path / "s"
    writer = open_writer(directory, clock, segment_bytes=150)
    loader = Loader(writer, _batcher(clock, store), clock, store=store, blocking=now)
    fired(loader.start())
    _spool(writer, clock, loader, 10)
    assert len(list_segments(directory)) > 3
    clock.advance(loader.persist_interval)
    clock.advance(loader.persist_interval)
    assert list_segments(directory) == [writer.end.segment]
    assert set(writer.sizes) == {writer.end.segment}


def test_spool_full_refuses_with_retry_after(tmp_path):
    clock = MemoryReactorClock()
    store = _store()
    store.down = True
    intake = SpoolIntake(
        tmp_path,
        _batcher(clock, store),
        clock,
        max_bytes=8192,
        writer_blocking=now,
        loader_blocking=now,
    )
    fired(intake.start())
    answers = []
    for n in range(150):
        answers.append(fired(intake.accept([event(n)])))
        clock.advance(0.01)
    ok = [a for a in answers if a == [None]]
    refused = [a[0] for a in answers if a != [None]]
    assert ok and refused
    assert all(f.check(Refused) for f in refused)
    assert all(f.value.retry_after >= 1 for f in refused)
    assert intake.writer.bytes_on_disk <= 8192
    assert intake.status() == "down"
    assert intake.loader.pending_records == len(ok)


@pytest.mark.parametrize("window_ms", [0.0, 2.0])
def test_intake_acks_after_commit(tmp_path, window_ms):
    clock = MemoryReactorClock()
    runner = ManualRunner()
    intake = SpoolIntake(
        tmp_path,
        _batcher(clock, _store()),
        clock,
        commit_window=window_ms / 1000,
        writer_blocking=runner,
        loader_blocking=now,
    )
    intake.start()
    runner.run_one()
    ack = fired(intake.accept([event(1)]))
    clock.advance(window_ms / 1000)
    assert ack == []
    runner.run_one()
    assert ack == [None]


def test_intake_not_started_refuses_and_closes_quietly(tmp_path):
    """A Gateway built but never started (unit tests of other parts) must not hang."""
    clock = MemoryReactorClock()
    intake = SpoolIntake(tmp_path, _batcher(clock, _store()), clock)
    refused = fired(intake.accept([event(1)]))
    assert refused[0].check(Refused) and refused[0].value.retry_after == 1
    assert intake.status() == "down"
    assert fired(intake.close()) == [None]
