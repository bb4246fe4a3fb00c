"""``sfpltracker.testing.MemoryStore`` keeps the store contract: each check runs on it, on
chDB itself (the embedded store) and on a DuckDB file (``store/duckdb``), with the same
assertions, so the fast tests that use the memory store rely on what the real ones do."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted

from sfpltracker.store.errors import StoreError
from sfpltracker.testing import MemoryStore

DAY_MS = 1_767_225_600_000  # 2026-01-01


def events(n: int) -> list[dict]:
    return [
        {"eid": str(uuid.uuid4()), "vid": str(uuid.uuid4()), "ename": f"e{i}", "created_at": DAY_MS}
        for i in range(n)
    ]


@pytest.fixture(params=["memory", "chdb", "duckdb"])
def any_store(request):
    if request.param == "memory":
        return MemoryStore()
    if request.param == "duckdb":
        return request.getfixturevalue("duckdb_store")  # conftest: a started DuckDBStore
    return request.getfixturevalue("store")  # conftest: a started EmbeddedStore


@pytest_twisted.inlineCallbacks
def stored_eids(store) -> list[str]:
    if isinstance(store, MemoryStore):
        return sorted(r["eid"] for r in store.rows("events"))
    out = yield store.query("SELECT toString(eid) FROM sfpla.events", "TabSeparated")
    return sorted(out.decode().split())


@pytest_twisted.inlineCallbacks
def test_insert_fires_with_the_rows_stored(any_store):
    rows = events(3)
    assert (yield any_store.insert("events", rows)) == 3
    assert (yield stored_eids(any_store)) == sorted(r["eid"] for r in rows)


@pytest_twisted.inlineCallbacks
def test_dedup_leaves_out_rows_whose_key_is_stored(any_store):
    rows = events(3)
    yield any_store.insert("events", rows[:2])
    # upper-case: keys compare as text, case-insensitively (UUIDs come back lower-case)
    again = [{**rows[0], "eid": rows[0]["eid"].upper()}, rows[1], rows[2]]
    assert (yield any_store.insert("events", again, dedup=True)) == 1
    assert (yield stored_eids(any_store)) == sorted(r["eid"] for r in rows)
    assert (yield any_store.without_stored("events", events(1) + rows)) != []


@pytest_twisted.inlineCallbacks
def test_a_token_makes_a_resend_store_nothing_twice(any_store):
    rows = events(4)
    yield any_store.insert("events", rows, token="batch-1")
    yield any_store.insert("events", rows, token="batch-1")  # the re-send after a crash
    assert (yield stored_eids(any_store)) == sorted(r["eid"] for r in rows)
    yield any_store.insert("events", rows, token="batch-2")  # another batch: stored again
    # (DuckDB keys events on eid: a row whose eid is stored is never stored twice)
    twice = rows if any_store.kind == "duckdb" else rows * 2
    assert (yield stored_eids(any_store)) == sorted(r["eid"] for r in twice)


@pytest_twisted.inlineCallbacks
def test_bad_tokens_and_unknown_tables_are_refused(any_store):
    with pytest.raises(StoreError):
        yield any_store.insert("events", events(1), token="no spaces; or quotes'")
    with pytest.raises(StoreError):
        yield any_store.insert("nothing_here", [{"a": 1}])
    assert (yield stored_eids(any_store)) == []
    assert any_store.insert_tokens is True


# -- what only the memory store has: the knobs of the unit tests ---------------------------------


def test_views_get_their_part_once_per_token_and_a_crash_between_parts_is_completed():
    from sfpltracker.testing import NoAnswer

    store = MemoryStore(views={"events": ["hits"]})
    rows = events(2)

    def die(table):
        raise NoAnswer

    store.after_part = die
    d = store.insert("events", rows, token="t")
    assert not d.called  # the process died after the source part: no answer, ever
    assert len(store.rows("events")) == 2 and store.rows("hits") == []
    store.after_part = None
    done = []
    store.insert("events", rows, token="t").addCallback(done.append)
    assert done == [2]
    assert len(store.rows("events")) == 2 and len(store.rows("hits")) == 2


def test_reads_answer_from_what_was_inserted_and_refuse_what_they_do_not_know():
    store = MemoryStore()
    vid = str(uuid.uuid4())
    for i, cflags in enumerate((1024, 256)):
        row = {"id": str(uuid.uuid4()), "vid": vid, "cflags": cflags, "created_at": i, "ip": "x"}
        store.insert("agreed", [row])
    out = []
    sql = "SELECT * EXCEPT (ip) FROM sfpla.agreed FINAL WHERE vid = {vid:UUID} ORDER BY ..."
    store.query(sql, "JSONEachRow", params={"vid": vid}).addCallback(out.append)
    assert [line.count(b'"cflags"') for line in out[0].splitlines()] == [1, 1]
    assert b'"ip"' not in out[0] and out[0].index(b"256") < out[0].index(b"1024")
    failed = []
    store.query("SELECT count() FROM sfpla.events", "JSONEachRow").addErrback(failed.append)
    assert failed and failed[0].check(StoreError)
