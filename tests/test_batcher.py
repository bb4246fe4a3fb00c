"""Unit tests: each batching strategy's flush trigger, retries, breaker, honest stats."""

import pytest
from twisted.internet.testing import MemoryReactorClock

from sfpltracker.config import BatchSettings
from sfpltracker.pipeline.batcher import Batcher, StoreRefused
from sfpltracker.pipeline.intake import MemoryIntake, Refused
from sfpltracker.testing import MemoryStore


def inserts(store: MemoryStore) -> list[tuple[str, int, bool]]:
    """(table, rows sent, dedup) of every insert call."""
    return [(c.table, len(c.rows), c.dedup) for c in store.calls]


def make(strategy, **kw):
    settings = BatchSettings(Strategy=strategy, **kw)
    # No insert tokens (a ClickHouse server store): retries are sent with dedup.
    clock, store = MemoryReactorClock(), MemoryStore(tokens=False)
    return clock, store, Batcher(store, clock, {"events": settings})


def rows(n, size=10):
    return [{"eid": str(i), "x": "y" * size} for i in range(n)]


def test_immediate_flushes_every_add():
    clock, store, b = make("immediate")
    b.add("events", rows(1))
    b.add("events", rows(2))
    assert [n for _, n, _ in inserts(store)] == [1, 2]


def test_size_flushes_at_max_batch_size_only():
    clock, store, b = make("size", MaxBatchSize=5, MaxBatchTime=1.0)
    b.add("events", rows(4))
    clock.advance(5)
    assert inserts(store) == []
    b.add("events", rows(1))
    assert [n for _, n, _ in inserts(store)] == [5]


def test_size_has_a_safety_flush_for_quiet_tables():
    clock, store, b = make("size", MaxBatchSize=100, MaxBatchTime=1.0)
    b.add("events", rows(3))
    clock.advance(9.9)
    assert inserts(store) == []
    clock.advance(0.2)
    assert [n for _, n, _ in inserts(store)] == [3]


def test_time_flushes_when_the_oldest_row_is_max_batch_time_old():
    clock, store, b = make("time", MaxBatchSize=2, MaxBatchTime=2.0)
    b.add("events", rows(10))  # size does not matter for the time strategy
    clock.advance(1.0)
    b.add("events", rows(1))
    assert inserts(store) == []
    clock.advance(1.0)  # first row is now 2 s old
    assert [n for _, n, _ in inserts(store)] == [11]


def test_hybrid_flushes_on_size_or_time():
    clock, store, b = make("hybrid", MaxBatchSize=5, MaxBatchTime=2.0)
    b.add("events", rows(5))
    assert [n for _, n, _ in inserts(store)] == [5]
    b.add("events", rows(1))
    clock.advance(1.9)
    assert len(inserts(store)) == 1
    clock.advance(0.1)
    assert [n for _, n, _ in inserts(store)] == [5, 1]


def test_memory_flushes_on_queued_bytes():
    clock, store, b = make("memory", MaxBatchSize=10_000, MaxMemoryMB=0.01)  # ~10 KB
    b.add("events", rows(5, size=1000))
    assert inserts(store) == []
    b.add("events", rows(6, size=1000))
    assert [n for _, n, _ in inserts(store)] == [11]


def test_adaptive_halves_its_size_after_a_failure_and_grows_after_fast_flushes():
    clock, store, b = make("adaptive", MaxBatchSize=100, MaxBatchTime=2.0, RetryAttempts=0)
    t = b._table("events")
    store.fail_next = 1
    b.add("events", rows(100)).addErrback(lambda f: f.trap(StoreRefused))
    assert t.target_size == 50
    b.add("events", rows(49))
    assert len(inserts(store)) == 1  # below the new target
    b.add("events", rows(1))
    assert [n for _, n, _ in inserts(store)] == [100, 50]
    assert t.target_size > 50  # the fast successful flush grew it back


def test_add_fires_only_when_stored_and_retries_use_dedup():
    clock, store, b = make("immediate", RetryAttempts=2, RetryBackoffMs=100)
    store.fail_next = 2
    done = []
    b.add("events", rows(3)).addCallback(done.append)
    assert done == []
    clock.advance(0.1)
    clock.advance(0.2)
    assert done == [3]
    assert [d for _, _, d in inserts(store)] == [False, True, True]
    report = b.report()
    assert report["total_batches"] == 1 and report["failed_attempts"] == 2
    assert report["total_items"] == 3 and report["queued_items"] == 0


def test_giving_up_fails_the_deferred_and_counts_the_batch():
    clock, store, b = make("immediate", RetryAttempts=1, RetryBackoffMs=10)
    store.fail_next = 5
    failures = []
    b.add("events", rows(2)).addErrback(failures.append)
    clock.pump([0.01] * 10)
    assert failures and failures[0].check(StoreRefused)
    assert b.report()["failed_batches"] == 1
    assert b.report()["batch_success_rate"] == 0.0


def test_breaker_opens_after_repeated_failures_and_memory_intake_refuses():
    clock, store, b = make("immediate", RetryAttempts=0)
    intake = MemoryIntake(b)
    store.fail_next = 100
    for _ in range(5):
        b.add("events", rows(1)).addErrback(lambda f: None)
    assert b.breaker.state == "open"
    failure = []
    intake.accept([("events", {"eid": "1"})]).addErrback(failure.append)
    assert failure[0].check(Refused)
    assert intake.health()["status"] == "down"
    clock.advance(b.breaker.reset_seconds)
    assert b.breaker.state == "half-open" and intake.health()["status"] == "degraded"


def test_one_flush_at_a_time_per_table_keeps_order():
    clock, store, b = make("hybrid", MaxBatchSize=2, MaxBatchTime=1.0)
    store.held = []
    b.add("events", rows(2))
    b.add("events", rows(2))
    assert len(inserts(store)) == 1  # the second waits for the first
    held, store.held = store.held, None
    held.pop(0).callback(None)
    assert len(inserts(store)) == 2


def test_flush_all_flushes_everything_queued():
    clock, store, b = make("hybrid", MaxBatchSize=1000, MaxBatchTime=60)
    b.add("events", rows(3))
    b.add("payments", rows(1))
    done = []
    b.flush_all().addCallback(done.append)
    assert done and sum(n for _, n, _ in inserts(store)) == 4


@pytest.mark.parametrize("strategy", ["immediate", "time", "size", "hybrid", "memory", "adaptive"])
def test_every_strategy_eventually_stores_everything(strategy):
    clock, store, b = make(strategy, MaxBatchSize=7, MaxBatchTime=0.5, MaxMemoryMB=0.001)
    stored = []
    for _ in range(20):
        b.add("events", rows(3)).addCallback(stored.append)
        clock.advance(0.05)
    clock.pump([1.0] * 20)
    assert sum(stored) == 60 and b.queued_rows == 0


def test_a_backlog_goes_out_in_one_insert_not_many_small_ones():
    clock, store, b = make("hybrid", MaxBatchSize=10, MaxBatchTime=1.0)
    store.held = []
    b.add("events", rows(10))  # due: the first insert starts and is held
    for _ in range(5):
        b.add("events", rows(10))  # waits behind it
    held, store.held = store.held, None
    held.pop(0).callback(None)
    assert [n for _, n, _ in inserts(store)] == [10, 50]


def test_events_per_second_counts_every_batch_of_the_last_minute():
    # /health and /metrics report it on every probe. It was a sum over the last 4,096 batches
    # kept: a minute of more batches than that (one event each: ~70 a second) read low.
    clock, store, b = make("immediate")
    for _ in range(6000):  # 6,000 batches of one row over 30 s
        b.add("events", rows(1))
        clock.advance(0.005)
    assert b.stats.total_batches == 6000
    assert b.report()["events_per_second"] == round(6000 / 30, 3)
    clock.advance(40.0025)  # the batches of the first 10.0025 s (2,001) left the window
    assert b.report()["events_per_second"] == round(3999 / 60, 3)
    clock.advance(60)
    assert b.report()["events_per_second"] == 0


def test_a_spool_loaders_batcher_holds_its_size_trigger_after_an_insert():
    # hold: rows from a spool are durable already, so MaxBatchSize does not cut a batch sooner
    # than min(hold, MaxBatchTime) after the table's previous insert began
    clock, store, b = make("hybrid", MaxBatchSize=5, MaxBatchTime=1.5)
    b.hold = 2.0
    b.add("events", rows(5))  # no insert yet: the size trigger fires at once
    assert [n for _, n, _ in inserts(store)] == [5]
    clock.advance(0.2)
    b.add("events", rows(5))
    b.add("events", rows(7))
    assert len(inserts(store)) == 1  # held
    clock.advance(1.29)
    assert len(inserts(store)) == 1
    clock.advance(0.02)  # 1.5 s (the table's MaxBatchTime, under the hold) after the insert
    assert [n for _, n, _ in inserts(store)] == [5, 12]


def test_a_held_table_flushes_at_once_when_hold_bytes_wait():
    from sfpltracker.pipeline import batcher as batcher_module

    clock, store, b = make("hybrid", MaxBatchSize=5, MaxBatchTime=2.0)
    b.hold = 2.0
    b.add("events", rows(5))
    b.add("events", rows(5), size=batcher_module.HOLD_BYTES)  # as much as the loader may hold
    assert [n for _, n, _ in inserts(store)] == [5, 5]


def test_without_hold_the_size_trigger_flushes_at_once():
    clock, store, b = make("hybrid", MaxBatchSize=5, MaxBatchTime=2.0)
    b.add("events", rows(5))
    b.add("events", rows(5))
    assert [n for _, n, _ in inserts(store)] == [5, 5]
