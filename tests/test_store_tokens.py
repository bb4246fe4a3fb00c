"""What the post-crash re-send relies on, shown on chDB itself (the embedded store).

ClickHouse commits an insert's source part and then each materialized view's part; a crash in
between leaves the views short. ``tests/test_durability.py`` kills real gateways; here the
same state is made deterministically: a view is detached while a batch is inserted (its part
is "missing"), then attached again, and the batch is sent again with the same
``insert_deduplication_token``:

* the source table skips the block it already has (no row twice in ``events``),
* every view whose part is missing gets it, every view that has it skips it,
* without a deduplication window on a view's table the re-send would count twice there
  (why the schema sets one, and why the store adds it to tables made without it),
* batches with different tokens are never taken for one another, even when their view rows
  are identical.
"""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted

from sfpltracker.store.errors import StoreError

DAY_MS = 1_767_225_600_000  # 2026-01-01


def events(n: int, url: str | None = None) -> list[dict]:
    return [
        {
            "eid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "created_at": DAY_MS + i,
            "url": url or f"https://t.test/{uuid.uuid4()}",
            "last": "https://ref.test/",
            "outcome": "ok",
            "hhash": "h",
        }
        for i in range(n)
    ]


@pytest_twisted.inlineCallbacks
def counts(store) -> dict:
    sql = """SELECT
        (SELECT count() FROM sfpla.events) AS events,
        (SELECT sum(total) FROM sfpla.hits) AS hits,
        (SELECT sum(total) FROM sfpla.dailies) AS dailies,
        (SELECT sum(total) FROM sfpla.referrers) AS referrers,
        (SELECT sum(total) FROM sfpla.outcomes) AS outcomes,
        (SELECT sum(events) FROM sfpla.visitors) AS visitors,
        (SELECT sum(events) FROM sfpla.sessions) AS sessions"""
    out = yield store.execute(sql.replace("\n", " ") + " FORMAT TSVWithNames")
    names, values = out.decode().splitlines()
    return dict(zip(names.split("\t"), (int(v) for v in values.split("\t")), strict=True))


def all_equal(c: dict, n: int) -> bool:
    return all(v == n for v in c.values())


@pytest_twisted.inlineCallbacks
def test_resend_with_the_token_fills_missing_view_parts_only(store):
    first, second = events(30), events(20)
    yield store.insert("events", first, token="sfpl-first")
    assert all_equal((yield counts(store)), 30)
    # "A crash after the source and some views committed": hits and visitors miss the part.
    yield store.execute("DETACH TABLE sfpla.hits_mv")
    yield store.execute("DETACH TABLE sfpla.visitors_mv")
    yield store.insert("events", second, token="sfpl-second")
    yield store.execute("ATTACH TABLE sfpla.hits_mv")
    yield store.execute("ATTACH TABLE sfpla.visitors_mv")
    half = yield counts(store)
    assert half["events"] == half["dailies"] == 50 and half["hits"] == half["visitors"] == 30
    # The re-send: same rows, same token, no filtering.
    yield store.insert("events", second, token="sfpl-second")
    assert all_equal((yield counts(store)), 50)
    yield store.insert("events", second, token="sfpl-second")  # again: nothing changes
    yield store.insert("events", first, token="sfpl-first")
    assert all_equal((yield counts(store)), 50)


@pytest_twisted.inlineCallbacks
def test_resend_after_nothing_of_a_batch_landed_stores_it_once(store):
    rows = events(10)
    yield store.execute("DETACH TABLE sfpla.hits_mv")
    yield store.insert("events", events(5), token="sfpl-other")
    yield store.execute("ATTACH TABLE sfpla.hits_mv")
    yield store.insert("events", rows, token="sfpl-new")
    yield store.insert("events", rows, token="sfpl-new")
    c = yield counts(store)
    assert c["events"] == c["dailies"] == 15 and c["hits"] == 10


@pytest_twisted.inlineCallbacks
def test_without_a_dedup_window_a_view_counts_a_resend_twice(store):
    rows = events(10)
    yield store.execute(
        "ALTER TABLE sfpla.hits MODIFY SETTING non_replicated_deduplication_window = 0"
    )
    yield store.insert("events", rows, token="sfpl-a")
    yield store.insert("events", rows, token="sfpl-a")
    c = yield counts(store)
    assert c["events"] == c["dailies"] == 10  # these keep their window
    assert c["hits"] == 20  # the view target without one counts the re-send again
    # Loading the schema gives every view target its window back (a table made before the
    # schema set one), and the next re-send is skipped there too.
    yield store.execute("ALTER TABLE sfpla.hits RESET SETTING non_replicated_deduplication_window")
    yield store.load_schema()
    engine = yield store.execute(
        "SELECT engine_full FROM system.tables WHERE database = 'sfpla' AND name = 'hits'"
    )
    assert b"non_replicated_deduplication_window = 1000" in engine
    more = events(5)
    yield store.insert("events", more, token="sfpl-b")
    yield store.insert("events", more, token="sfpl-b")
    assert (yield counts(store))["hits"] == 25


@pytest_twisted.inlineCallbacks
def test_batches_with_identical_view_rows_are_not_taken_for_one_another(store):
    # Same url, same day: the hits/dailies blocks of the two batches are identical.
    yield store.insert("events", events(3, url="https://same.test/"), token="sfpl-one")
    yield store.insert("events", events(3, url="https://same.test/"), token="sfpl-two")
    yield store.insert("events", events(3, url="https://same.test/"))  # no token at all
    yield store.insert("events", events(3, url="https://same.test/"))
    assert all_equal((yield counts(store)), 12)


@pytest_twisted.inlineCallbacks
def test_without_stored_and_bad_tokens(store):
    rows = events(4)
    yield store.insert("events", rows[:2], token="sfpl-x")
    fresh = yield store.without_stored("events", rows)
    assert [r["eid"] for r in fresh] == [r["eid"] for r in rows[2:]]
    with pytest.raises(StoreError):
        yield store.insert("events", rows, token="x'; DROP TABLE sfpla.events --")


@pytest_twisted.inlineCallbacks
def test_without_a_token_the_same_rows_are_inserted_again(store):
    # chDB deduplicates an INSERT ... SELECT only with a token (the select is not "stable"):
    # why nothing was deduplicated by block before tokens, and why retries then had to skip
    # stored rows instead.
    rows = events(3)
    yield store.insert("events", rows)
    yield store.insert("events", rows)
    assert (yield counts(store))["events"] == 6
