"""Unit tests of the insert journal and of what the batcher and the loader do with it.

Files are real (``tmp_path``), time is ``MemoryReactorClock``, "threads" run at once. The
store here is an in-memory model of what ClickHouse does with ``insert_deduplication_token``
(shown on chDB itself in ``test_store_tokens.py``): a source table and one materialized view,
each skipping a block whose token it already has, and a switch that makes an insert stop
after the source part, as a crash between the two commits does.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock

from sfpltracker.config import BatchSettings
from sfpltracker.pipeline import journal as journal_module
from sfpltracker.pipeline.batcher import Batcher, StoreRefused
from sfpltracker.pipeline.journal import (
    InsertJournal,
    JournalBatch,
    Journaled,
    Span,
    read_records,
)
from sfpltracker.pipeline.loader import Loader, _rows_of
from sfpltracker.pipeline.spool import Position, encode_frame
from sfpltracker.testing import MemoryStore, NoAnswer
from tests.test_spool import _spool, event, fired, now, open_writer


def batch(token: str, keys=None, table: str = "events") -> JournalBatch:
    return JournalBatch(token, table, Position(1, 8), Position(1, 800), keys)


def opened(directory) -> InsertJournal:
    j = InsertJournal(directory, blocking=now)
    j.open()
    return j


# -- the journal file ----------------------------------------------------------------------


def test_begun_and_not_ended_batches_are_in_doubt_after_reopening(tmp_path):
    j = opened(tmp_path)
    assert j.in_doubt() == []
    assert fired(j.begin(batch("a"))) == [None]
    assert fired(j.begin(batch("b", keys=["K1", "k2"]))) == [None]
    assert fired(j.begin(batch("c"))) == [None]
    assert fired(j.end("a")) == [None]
    assert j.in_doubt() == [] and j.open_batches == 2  # in flight, not in doubt
    j.close()  # (or a crash: every begin was fdatasync-ed)

    again = opened(tmp_path)
    doubt = {b.token: b for b in again.in_doubt()}
    assert sorted(doubt) == ["b", "c"]
    b = doubt["b"]
    assert (b.table, b.lo, b.hi, b.keys) == (
        "events",
        Position(1, 8),
        Position(1, 800),
        ["K1", "k2"],
    )
    assert b.selects("k1") and b.selects("K2") and not b.selects("k3")
    assert b.selects(None)  # a row without a key is never left out
    assert doubt["c"].selects("anything")  # no keys: every row of the span
    assert fired(again.end("b")) == [None] and fired(again.end("c")) == [None]
    assert again.in_doubt() == []
    again.close()
    assert opened(tmp_path).in_doubt() == []


def test_a_torn_last_record_is_cut_off_and_the_journal_goes_on(tmp_path):
    j = opened(tmp_path)
    fired(j.begin(batch("a")))
    j.close()
    whole = j.path.read_bytes()
    torn = journal_module.encode_record(batch("b").to_record())
    j.path.write_bytes(whole + torn[: len(torn) // 2])  # the process died mid-append

    again = opened(tmp_path)
    assert [b.token for b in again.in_doubt()] == ["a"]  # "b" was never sent: no doubt
    assert again.torn_bytes == len(torn) // 2
    assert j.path.read_bytes() == whole
    fired(again.begin(batch("c")))
    again.close()
    assert sorted(b.token for b in opened(tmp_path).in_doubt()) == ["a", "c"]


def test_a_corrupt_record_ends_the_journal(tmp_path):
    j = opened(tmp_path)
    fired(j.begin(batch("a")))
    fired(j.begin(batch("b")))
    j.close()
    data = bytearray(j.path.read_bytes())
    data[-3] ^= 0xFF  # inside the last record's payload: its crc no longer matches
    j.path.write_bytes(bytes(data))
    records, valid = read_records(bytes(data))
    assert [r["token"] for r in records] == ["a"] and valid < len(data)
    assert [b.token for b in opened(tmp_path).in_doubt()] == ["a"]


def test_settled_records_are_compacted_away(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_BYTES", 600)
    j = opened(tmp_path)
    fired(j.begin(batch("keep", keys=["x"])))
    for n in range(30):
        fired(j.begin(batch(f"t{n}")))
        fired(j.end(f"t{n}"))
    assert j.compactions > 0 and j.size <= 600 + 200
    assert os.path.getsize(j.path) == j.size
    j.close()
    again = opened(tmp_path)
    assert [b.token for b in again.in_doubt()] == ["keep"]
    fired(again.end("keep"))
    again.close()
    opened(tmp_path).close()  # nothing open: the file starts empty
    assert os.path.getsize(j.path) == 0


def test_doubt_marks_a_running_batch_for_the_loader(tmp_path):
    j = opened(tmp_path)
    fired(j.begin(batch("a")))
    j.doubt("a")
    j.doubt("never-begun")
    assert [b.token for b in j.in_doubt()] == ["a"]
    fired(j.end("a"))
    assert j.in_doubt() == [] and j.open_batches == 0


def test_rows_of_a_batch_are_rebuilt_from_the_spool_in_order(tmp_path):
    clock = MemoryReactorClock()
    writer = open_writer(tmp_path / "s", clock)
    frames = [[event(0), ("payments", {"id": "p0"}), event(1)], [event(2)], [event(3)]]
    ends = []
    for records in frames:
        d = fired(writer.append(encode_frame(records, 1), len(records)))
        clock.advance(writer.commit_window)
        ends.append(d[0])
    eids = [r["eid"] for records in frames for t, r in records if t == "events"]
    lo, hi = writer.first_new, ends[1]  # the first two frames
    everything = JournalBatch("t", "events", lo, hi)
    rows = _rows_of(writer.directory, everything, dict(writer.sizes))
    assert [r["eid"] for r in rows] == eids[:3]
    some = JournalBatch("t", "events", lo, ends[2], keys=[eids[3].upper(), eids[0]])
    assert [r["eid"] for r in _rows_of(writer.directory, some, dict(writer.sizes))] == [
        eids[0],
        eids[3],
    ]
    pay = JournalBatch("t", "payments", lo, hi)
    assert _rows_of(writer.directory, pay, dict(writer.sizes)) == [{"id": "p0"}]


# -- a store that commits in pieces ----------------------------------------------------------


class PiecesStore(MemoryStore):
    """``events`` (the source) and ``hits`` (a view of it), each part written once per token;
    ``die_after_source``/``fail_after_source`` stop an insert between the two parts."""

    def __init__(self):
        super().__init__(views={"events": ["hits"]})
        self.die_after_source = False  # commit the source part, then never answer
        self.fail_after_source = False  # commit the source part, then fail
        self.after_part = self._between_parts

    def _between_parts(self, table):
        if self.die_after_source:
            raise NoAnswer
        if self.fail_after_source:
            raise OSError("a view's part could not be written")

    @property
    def events(self) -> list[dict]:
        return self.tables["events"]

    @property
    def hits(self) -> int:
        return len(self.tables["hits"])

    def eids(self) -> list[str]:
        return [r["eid"] for r in self.events]


def calls(store) -> list[tuple[str, list[str], bool, str | None]]:
    """(table, eids sent, dedup, token) of every insert call."""
    return [(c.table, [r["eid"] for r in c.rows], c.dedup, c.token) for c in store.calls]


def _batcher(clock, store, attempts=3):
    settings = BatchSettings("immediate", 100, 0.0, 10, attempts, 1, 10)
    return Batcher(store, clock, {"events": settings})


def _loader(tmp_path, clock, store, **kw):
    writer = open_writer(tmp_path / "s", clock)
    loader = Loader(writer, _batcher(clock, store), clock, store=store, blocking=now, **kw)
    assert fired(loader.start())
    return writer, loader


# -- the batcher -----------------------------------------------------------------------------


def test_batcher_sends_every_attempt_with_the_same_rows_and_token(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    j = opened(tmp_path)
    b = _batcher(clock, store)
    rows = [{"eid": f"e{i}"} for i in range(3)]
    store.fail_after_source = True
    span = Span(j, Position(1, 8), Position(1, 99))
    result = fired(b.add("events", rows, origin=span))
    assert j.open_batches == 1  # journaled before it was sent
    ((_, first, dedup, token),) = calls(store)
    assert token and not dedup and first == ["e0", "e1", "e2"]
    store.fail_after_source = False
    clock.advance(1)
    assert result == [3] and len(calls(store)) == 2
    assert calls(store)[1] == ("events", first, False, token)  # no filter between attempts
    assert store.eids() == first and store.hits == 3  # the view got its part, once
    assert j.open_batches == 0 and j.in_doubt() == []


def test_batcher_leaves_out_stored_rows_once_and_journals_the_keys_it_sent(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    j = opened(tmp_path)
    b = _batcher(clock, store)
    store.events.append({"eid": "e1"})
    rows = [{"eid": f"e{i}"} for i in range(3)]
    store.die_after_source = True
    b.add("events", rows, dedup=True, origin=Span(j, Position(1, 8), Position(1, 99)))
    ((_, sent, _, token),) = calls(store)
    assert sent == ["e0", "e2"]
    j.close()
    (doubt,) = opened(tmp_path).in_doubt()
    assert doubt.token == token and doubt.keys == ["e0", "e2"]


def test_batcher_marks_a_batch_it_gave_up_on_as_in_doubt(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    j = opened(tmp_path)
    b = _batcher(clock, store, attempts=1)
    store.fail_after_source = True
    result = fired(b.add("events", [{"eid": "e0"}], origin=Span(j, Position(1, 8), Position(1, 9))))
    clock.advance(5)
    assert result and result[0].check(StoreRefused)
    assert [x.token for x in j.in_doubt()] == [calls(store)[0][3]]


def test_batcher_without_tokens_retries_with_dedup(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    store.insert_tokens = False
    b = Batcher(store, clock, {"events": BatchSettings("immediate", 100, 0.0, 10, 3, 1, 10)})
    store.down = True
    b.add("events", [{"eid": "e0"}])
    store.down = False
    clock.advance(1)
    assert [(dedup, token) for *_, dedup, token in calls(store)] == [(False, None), (True, None)]


# -- a source without a spool (the JetStream loader): the rows go into the journal ----------


def test_a_journaled_batch_keeps_its_rows_and_a_crash_is_finished_from_them(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    j = opened(tmp_path)
    b = _batcher(clock, store)
    origin = Journaled(j)
    fired(b.add("events", [{"eid": "e0", "n": 2**70}], origin=origin))  # stored whole
    assert store.hits == 1 and j.open_batches == 0
    store.events.append({"eid": "e1"})  # stored by a previous process: left out once
    rows = [{"eid": f"e{i}", "url": "/p", "n": 2**70} for i in (1, 2, 3)]
    store.die_after_source = True  # the process dies between the source part and the view's
    b.add("events", rows, dedup=True, origin=origin)
    ((_, sent, _, token),) = [c for c in calls(store) if c[1] != ["e0"]]
    assert sent == ["e2", "e3"] and store.hits == 1
    j.close()

    # The next process: the batch is in doubt with exactly the rows it sent.
    store.die_after_source = False
    again = opened(tmp_path)
    (doubt,) = again.in_doubt()
    assert (doubt.token, doubt.lo, doubt.hi) == (token, None, None)
    assert doubt.rows == rows[1:]  # identical, an int past 64 bits included
    assert fired(journal_module.finish(store, again, doubt, doubt.rows, "test")) == ["resent"]
    assert calls(store)[-1] == ("events", ["e2", "e3"], False, token)
    assert sorted(store.eids()) == ["e0", "e1", "e2", "e3"]  # none twice in the source
    assert store.hits == 3  # the view got the missing part, once


def test_finish_leaves_a_batch_nothing_of_which_landed_to_the_ordinary_load(tmp_path):
    store = PiecesStore()
    j = opened(tmp_path)
    batch = JournalBatch("t", "events", None, None, rows=[{"eid": "e0"}])
    fired(j.begin(batch))
    assert fired(journal_module.finish(store, j, batch, batch.rows, "test")) == ["settled"]
    assert calls(store) == []  # not re-sent: its redelivered messages load it as new rows
    store.events.append({"eid": "e0"})
    batch.boot = "another boot"
    assert fired(journal_module.finish(store, j, batch, batch.rows, "test")) == ["after_reboot"]
    assert calls(store) == []


# -- the loader --------------------------------------------------------------------------------


def test_crash_between_source_and_view_is_finished_at_the_next_start(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    writer, loader = _loader(tmp_path, clock, store)
    eids = _spool(writer, clock, loader, 2)
    store.die_after_source = True
    eids += _spool(writer, clock, loader, 1, start=2)  # its insert "crashes" after the source
    assert store.eids() == eids and store.hits == 2
    token = calls(store)[-1][3]
    # A new process: the same spool and journal, the store as the crash left it.
    store.die_after_source = False
    writer2, loader2 = _loader(tmp_path, clock, store)
    clock.advance(1)
    assert loader2.resent_batches == 1 and loader2.settled_batches == 0
    resend = [c for c in calls(store) if c[3] == token]
    assert len(resend) == 2 and resend[1][1] == [eids[2]] and not resend[1][2]
    assert sorted(store.eids()) == sorted(eids) and len(store.eids()) == 3  # none twice
    assert store.hits == 3  # the view got the missing part
    assert loader2.committed == writer2.end and loader2.journal.in_doubt() == []


def test_crash_before_anything_landed_lets_the_replay_load_it_as_new(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    writer, loader = _loader(tmp_path, clock, store)
    store.held = []  # store nothing, never answer (a crash before any commit)
    eids = _spool(writer, clock, loader, 2)
    assert store.eids() == [] and loader.journal.open_batches >= 1
    store.held = None
    writer2, loader2 = _loader(tmp_path, clock, store)
    clock.advance(1)
    assert loader2.settled_batches >= 1 and loader2.resent_batches == 0
    assert sorted(store.eids()) == sorted(eids) and store.hits == 2
    assert loader2.journal.in_doubt() == []


def test_a_batch_given_up_after_its_source_part_is_finished_before_the_replay(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    writer, loader = _loader(tmp_path, clock, store)
    first = _spool(writer, clock, loader, 1)
    store.fail_after_source = True  # every attempt: the source part lands, a view fails
    more = _spool(writer, clock, loader, 2, start=1)
    for _ in range(5):
        clock.advance(1)
    assert loader.store_failing and loader.journal.in_doubt()
    assert store.hits == 1 and len(store.eids()) == 3
    store.fail_after_source = False
    for _ in range(10):
        clock.advance(1)
    assert loader.resent_batches >= 1 and loader.journal.in_doubt() == []
    assert sorted(store.eids()) == sorted(first + more) and len(store.eids()) == 3
    assert store.hits == 3
    assert loader.committed == writer.end and not loader.store_failing


def test_a_failed_resolution_is_retried_and_nothing_is_read_meanwhile(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    writer, loader = _loader(tmp_path, clock, store)
    store.die_after_source = True
    eids = _spool(writer, clock, loader, 1)
    store.die_after_source = False
    store.down = True
    writer2, loader2 = _loader(tmp_path, clock, store)
    clock.advance(1)
    assert loader2.store_failing and loader2.journal.in_doubt() and loader2.read_pos < writer2.end
    store.down = False
    for _ in range(5):
        clock.advance(1)
    assert loader2.resent_batches == 1 and store.eids() == eids and store.hits == 1
    assert loader2.committed == writer2.end


def test_after_a_reboot_an_interrupted_insert_is_not_resent(tmp_path, monkeypatch):
    # A power cut: ClickHouse's parts and its deduplication log (neither fsync-ed) may
    # disagree, so a re-send could store rows twice. Events stay exact; the view may be short.
    clock, store = MemoryReactorClock(), PiecesStore()
    writer, loader = _loader(tmp_path, clock, store)
    store.die_after_source = True
    eids = _spool(writer, clock, loader, 2)
    store.die_after_source = False
    monkeypatch.setattr(journal_module, "boot_id", lambda: "another-boot")
    writer2, loader2 = _loader(tmp_path, clock, store)
    clock.advance(1)
    assert loader2.after_reboot_batches == 1 and loader2.resent_batches == 0
    assert store.eids() == eids[:1] + eids[1:] and len(store.eids()) == 2
    assert loader2.journal.in_doubt() == [] and loader2.committed == writer2.end
