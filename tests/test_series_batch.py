"""One batcher for several spool series (the store process with ``Workers`` > 1): the rows of
every worker's series go into one insert, and a crash in the middle of it is still finished.

Real files (``tmp_path``), ``MemoryReactorClock``, "threads" run at once; the store is
test_journal's ``PiecesStore`` (a source table and one view, each part written once per
insert token, and a switch that ends an insert between the two parts, as a crash does).
The last test runs a real gateway with two workers on chDB.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from sfpltracker.config import BatchSettings
from sfpltracker.pipeline.batcher import Batcher
from sfpltracker.pipeline.journal import InsertJournal, JournalBatch
from sfpltracker.pipeline.loader import Loader
from sfpltracker.pipeline.spool import Position, encode_frame
from tests.gateway_process import GatewayProcess
from tests.test_journal import PiecesStore, calls
from tests.test_spool import _spool, event, fired, now, open_writer
from tests.test_workers import EVENTS_SQL, prom, wait_until

WAIT = 1.0  # MaxBatchTime: what both loaders take within it goes in one insert


def start(tmp_path, clock, store):
    """Series w1 and w2 under ``spool/``, each with its loader, one batcher for both."""
    settings = BatchSettings("hybrid", 100, WAIT, 10, 3, 1, 10)
    batcher = Batcher(store, clock, {"events": settings})
    out = []
    for name in ("w1", "w2"):
        writer = open_writer(tmp_path / "spool" / name, clock)
        loader = Loader(writer, batcher, clock, store=store, blocking=now)
        assert fired(loader.start())
        out.append((writer, loader))
    return out


def test_two_series_share_one_insert_begun_in_both_journals(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    (w1, l1), (w2, l2) = start(tmp_path, clock, store)
    store.held = []  # the insert is sent, not answered yet
    eids = _spool(w1, clock, l1, 2) + _spool(w2, clock, l2, 2, start=2)
    clock.advance(WAIT)
    ((_, sent, _, token),) = calls(store)
    assert sent == eids  # one insert for both series, in the order they were taken
    # Begun in each series' journal, each naming both series' spans.
    for writer, loader in ((w1, l1), (w2, l2)):
        assert loader.journal.open_batches == 1
        loader.journal.close()
        reopened = InsertJournal(writer.directory, blocking=now)
        (record,) = reopened.open()
        # Every entry's span (a frame each here), in the batch's order.
        assert record.token == token and [s[0] for s in record.spans] == ["w1"] * 2 + ["w2"] * 2
        own = [s for s in record.spans if s[0] == writer.directory.name]
        assert (record.lo, record.hi) == (own[0][1], own[-1][2])
        reopened.close()


def test_a_crash_between_source_and_view_is_finished_by_the_next_start(tmp_path):
    clock, store = MemoryReactorClock(), PiecesStore()
    (w1, l1), (w2, l2) = start(tmp_path, clock, store)
    store.die_after_source = True  # the process dies after the source part
    eids = _spool(w1, clock, l1, 2) + _spool(w2, clock, l2, 3, start=2)
    clock.advance(WAIT)
    assert sorted(store.eids()) == sorted(eids) and store.hits == 0
    l1.journal.close()
    l2.journal.close()

    # The next process: the same series and journals, the store as the crash left it.
    store.die_after_source = False
    (w1b, l1b), (w2b, l2b) = start(tmp_path, clock, store)
    clock.advance(WAIT)
    assert l1b.resent_batches == 1 and l2b.resent_batches == 1  # the 2nd re-send is skipped
    assert sorted(store.eids()) == sorted(eids) and len(store.eids()) == 5  # none twice
    assert store.hits == 5  # the view got its missing part once, with both series' rows
    for writer, loader in ((w1b, l1b), (w2b, l2b)):
        assert loader.journal.in_doubt() == [] and loader.committed == writer.end


def test_a_batch_that_never_landed_is_stored_once_whichever_loader_finishes_it(tmp_path):
    # w1's loader finishes the batch and goes on loading before w2's loader looks at it. Had
    # w1 found "nothing landed" and loaded its rows anew, w2 would see w1's rows stored and
    # re-send the batch with its old token: the view would count w1's rows twice.
    clock, store = MemoryReactorClock(), PiecesStore()
    (w1, l1), (w2, l2) = start(tmp_path, clock, store)
    store.held = []  # a crash before anything was committed
    eids = _spool(w1, clock, l1, 2) + _spool(w2, clock, l2, 2, start=2)
    clock.advance(WAIT)
    l1.journal.close()
    l2.journal.close()
    store.held = None

    settings = BatchSettings("hybrid", 100, WAIT, 10, 3, 1, 10)
    batcher = Batcher(store, clock, {"events": settings})
    w1b = open_writer(tmp_path / "spool" / "w1", clock)
    l1b = Loader(w1b, batcher, clock, store=store, blocking=now)
    assert fired(l1b.start())
    clock.advance(WAIT)
    assert l1b.resent_batches == 1  # whole, w2's rows read from w2's segments
    assert sorted(store.eids()) == sorted(eids) and store.hits == 4
    w2b = open_writer(tmp_path / "spool" / "w2", clock)
    l2b = Loader(w2b, batcher, clock, store=store, blocking=now)
    assert fired(l2b.start())
    clock.advance(WAIT)
    assert l2b.resent_batches == 1  # skipped whole by the token
    assert sorted(store.eids()) == sorted(eids) and len(store.eids()) == 4
    assert store.hits == 4
    for writer, loader in ((w1b, l1b), (w2b, l2b)):
        assert loader.journal.in_doubt() == [] and loader.committed == writer.end


def test_spans_survive_the_journal_record():
    spans = [("w1", Position(1, 8), Position(1, 90)), ("w2", Position(3, 8), Position(4, 20))]
    batch = JournalBatch("t", "events", Position(1, 8), Position(1, 90), ["k"], spans=spans)
    again = JournalBatch.from_record(batch.to_record())
    assert again.spans == spans and (again.lo, again.hi, again.keys) == (
        Position(1, 8),
        Position(1, 90),
        ["k"],
    )
    assert (
        JournalBatch.from_record(JournalBatch("t", "events", None, None).to_record()).spans is None
    )


def test_the_store_process_loads_every_worker_series_in_one_insert(tmp_path):
    # Two workers' series left by an earlier run (3 events each): the store process takes
    # both within MaxBatchTime and stores them in one insert (one batcher per series made two).
    clock = MemoryReactorClock()
    spool = tmp_path / "gw" / "data" / "spool"
    for name in ("w1", "w2"):
        writer = open_writer(spool / name, clock)
        for n in range(3):
            fired(writer.append(encode_frame([event(n)], 1000), 1))
            clock.advance(writer.commit_window)
    batching = {"events": {"Strategy": "hybrid", "MaxBatchSize": 1000, "MaxBatchTime": 10}}
    with GatewayProcess(tmp_path, {"Workers": 2, "Batching": batching}) as gw:
        gw.wait_for(EVENTS_SQL, lambda r: int(r[0]["n"]) == 6, timeout=60)
        wait_until(lambda: prom(gw, "sfpl_rows_stored") == 6, what="the totals")
        assert prom(gw, "sfpl_batches_stored") == 1
        assert int(gw.query(EVENTS_SQL)[0]["n"]) == 6
