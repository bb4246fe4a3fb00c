"""The DuckDB store (``store/duckdb``) on real DuckDB files: the schema's tables and views,
dedup on insert, insert tokens, rows refused for their data, the query listener's guard, and
the file read by a plain DuckDB client. (The store contract shared with chDB and the memory
store: ``tests/test_memory_store.py``; a real gateway on DuckDB: ``test_duckdb_gateway.py``.)"""

from __future__ import annotations

import json
import re
import uuid

import duckdb
import pytest
import pytest_twisted

from sfpltracker.store.query_guard import QueryRefused
from sfpltracker.store.schema import load_statements

DAY_MS = 1_767_225_600_000  # 2026-01-01


def events(n: int, **extra) -> list[dict]:
    return [
        {
            "eid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "ename": "e",
            "created_at": DAY_MS + i,
            "url": f"https://t.test/{i}",
            **extra,
        }
        for i in range(n)
    ]


@pytest_twisted.inlineCallbacks
def rows(store, sql: str) -> list[dict]:
    out = yield store.query(sql, "JSONEachRow")
    return [json.loads(line) for line in out.decode().splitlines()]


def clickhouse_objects() -> dict[str, set[str] | None]:
    """Every table and view the ClickHouse schema files create: name -> its columns (None for
    views, whose columns are their SELECT's)."""
    out: dict[str, set[str] | None] = {}
    for s in load_statements():
        if s.kind == "table" and s.name:
            copy = re.search(r"\bAS \w+\.(\w+)\s+ENGINE", s.sql)
            body = s.sql[s.sql.index("(") + 1 : s.sql.rindex(")")] if not copy else ""
            cols = set(re.findall(r"^\s+(\w+) [A-Z]", body, re.M)) - {"INDEX"}
            out[s.name] = out[copy.group(1)] if copy else cols
        elif s.kind in ("view", "materialized_view") and s.name and not s.name.endswith("_mv"):
            out[s.name] = None
    return out


@pytest_twisted.inlineCallbacks
def test_every_table_and_view_of_the_schema_is_there_with_its_columns(duckdb_store):
    found = yield rows(
        duckdb_store,
        "SELECT table_name AS t, list(column_name) AS c FROM information_schema.columns "
        "WHERE table_catalog = 'sfpla' GROUP BY table_name",
    )
    duck = {r["t"]: set(r["c"]) for r in found}
    for name, columns in clickhouse_objects().items():
        assert name in duck, f"{name} is missing"
        if columns is not None:
            assert duck[name] == columns, name
    # the derived tables are views here, computed from what is stored
    yield duckdb_store.insert("events", events(3, outcome="ok", last="https://r.test/"))
    for table, measure in [
        *[(t, "total") for t in ("hits", "dailies", "referrers", "outcomes")],
        *[(t, "events") for t in ("visitors", "sessions")],
    ]:
        (n,) = yield rows(duckdb_store, f"SELECT sum({measure}) AS n FROM sfpla.{table}")
        assert n["n"] == 3, table


@pytest_twisted.inlineCallbacks
def test_a_replayed_event_is_never_stored_twice_even_without_dedup(duckdb_store):
    batch = events(4)
    assert (yield duckdb_store.insert("events", batch)) == 4
    # a replay through a path that asked for no dedup, with the eid upper-cased
    yield duckdb_store.insert("events", [{**batch[0], "eid": batch[0]["eid"].upper()}, *batch])
    (n,) = yield rows(duckdb_store, "SELECT count(*) AS n, count(DISTINCT eid) AS u FROM events")
    assert n == {"n": 4, "u": 4}
    (hits,) = yield rows(duckdb_store, "SELECT sum(total) AS n FROM sfpla.hits")
    assert hits["n"] == 4


@pytest_twisted.inlineCallbacks
def test_a_newer_version_replaces_an_older_one_as_final_reads_it(duckdb_store):
    uid = str(uuid.uuid4())
    for pwd, at in (("old", 10), ("new", 30), ("stale", 20)):  # out of order, as a replay
        yield duckdb_store.insert("accounts", [{"uid": uid, "pwd": pwd, "updated_at": at}])
    got = yield rows(duckdb_store, "SELECT pwd FROM sfpla.accounts FINAL")
    assert got == [{"pwd": "new"}]


@pytest_twisted.inlineCallbacks
def test_a_token_resend_of_a_table_without_a_key_stores_nothing_twice(duckdb_store):
    # counters rows (the NATS consumer's tic.count) have no key: only the token guards them
    batch = [{"id": "signups", "total": 2, "date": "2026-01-01"}]
    yield duckdb_store.insert("counters", batch, token="c-1")
    yield duckdb_store.insert("counters", batch, token="c-1")  # the journal's re-send
    got = yield rows(duckdb_store, "SELECT id, total FROM sfpla.counters")
    assert got == [{"id": "signups", "total": 2}]
    yield duckdb_store.insert("counters", batch, token="c-2")  # another batch
    got = yield rows(duckdb_store, "SELECT id, total FROM sfpla.counters")
    assert got == [{"id": "signups", "total": 4}]


@pytest_twisted.inlineCallbacks
def test_a_row_refused_for_its_data_is_set_aside_and_the_others_stored(duckdb_store):
    good = events(5)
    bad = {**events(1)[0], "vid": "not-a-uuid"}
    stored = yield duckdb_store.insert("events", [*good[:2], bad, *good[2:]], token="b-1")
    assert stored == 5
    got = yield rows(duckdb_store, "SELECT toString(eid) AS e FROM sfpla.events")
    assert sorted(r["e"] for r in got) == sorted(r["eid"] for r in good)
    (dead,) = duckdb_store.deadletters.read("events")
    assert dead["row"]["eid"] == bad["eid"] and "UUID" in dead["reason"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "COPY sfpla.events TO '/tmp/sfpl-out.csv'",
        "ATTACH '/tmp/sfpl-other.duckdb' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "DETACH sfpla",
        "DELETE FROM sfpla.events",
        "CREATE TABLE sfpla.x (a INT)",
        "SELECT 1; DROP TABLE sfpla.events",
        "WITH x AS (DELETE FROM sfpla.events RETURNING *) SELECT count(*) FROM x",
        "SELECT * FROM 'data/sfpla.duckdb'",
    ],
)
@pytest_twisted.inlineCallbacks
def test_the_query_listener_runs_no_statement_that_leaves_the_tracker_data(duckdb_store, sql):
    yield duckdb_store.insert("events", events(1))
    with pytest.raises(QueryRefused):
        yield duckdb_store.user_query(sql, "TabSeparated")
    fmt, out = yield duckdb_store.user_query("SELECT count(*) FROM events", "TabSeparated")
    assert (fmt, out) == ("TabSeparated", b"1\n")


@pytest_twisted.inlineCallbacks
def test_the_file_opens_in_a_plain_duckdb_client(duckdb_store, tmp_path):
    batch = events(3)
    yield duckdb_store.insert("events", batch)
    yield duckdb_store.stop()
    con = duckdb.connect(str(tmp_path / "sfpla.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM sfpla.events").fetchone() == (3,)
        assert con.execute("SELECT sum(total) FROM hits").fetchone() == (3,)
    finally:
        con.close()
    yield duckdb_store.start()  # the fixture stops it


def test_a_duckdb_notify_entry_makes_the_duckdb_store_on_its_file(tmp_path):
    from twisted.internet import reactor

    from sfpltracker.config import load
    from sfpltracker.gateway import make_store

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"DataDirectory": "d", "Notify": [{"Type": "duckdb", "File": "x/t.duckdb"}]})
    )
    store = make_store(load(str(config)), reactor)
    assert (store.kind, store.where) == ("duckdb", str(tmp_path / "x" / "t.duckdb"))
    config.write_text(json.dumps({"DataDirectory": "d", "Notify": [{"Type": "duckdb"}]}))
    assert make_store(load(str(config)), reactor).where == str(tmp_path / "d" / "sfpla.duckdb")


@pytest_twisted.inlineCallbacks
def test_a_batch_resent_by_the_next_process_after_its_commit_is_not_stored_twice(tmp_path):
    from twisted.internet import reactor

    from sfpltracker.store.duckdb.store import DuckDBStore

    # The process committed the batch (token included) and died before the journal heard:
    # the next process re-sends it with the same token.
    batch = [{"id": "logins", "total": 3, "date": "2026-01-01"}]
    first = DuckDBStore(tmp_path / "sfpla.duckdb", tmp_path, reactor)
    yield first.start()
    yield first.insert("counters", batch, token="j-7")
    yield first.stop()
    second = DuckDBStore(tmp_path / "sfpla.duckdb", tmp_path, reactor)
    yield second.start()
    try:
        yield second.insert("counters", batch, token="j-7")
        assert (yield rows(second, "SELECT id, total FROM counters")) == [
            {"id": "logins", "total": 3}
        ]
    finally:
        yield second.stop()


@pytest.mark.parametrize(
    "args",
    [
        ["forget", "--vid", "00000000-0000-0000-0000-000000000001"],
        ["export", "--since", "2026-01-01", "--until", "2026-01-02", "--out", "exported"],
    ],
)
def test_the_clickhouse_only_commands_say_so_on_a_duckdb_store(tmp_path, args):
    import subprocess
    import sys

    from tests.gateway_process import ROOT

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"DataDirectory": "d", "Notify": [{"Type": "duckdb"}]}))
    out = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode != 0
    assert "run on ClickHouse stores only" in out.stderr and "Traceback" not in out.stderr


@pytest_twisted.inlineCallbacks
def test_a_column_the_schema_has_and_the_file_lacks_is_added_at_start(duckdb_store, tmp_path):
    # a file made by an older schema: events without a column added since
    # (not one of the columns 070_original.sql adds with an ALTER of its own)
    yield duckdb_store.execute('ALTER TABLE sfpla.events DROP COLUMN "tz"')
    yield duckdb_store.stop()
    yield duckdb_store.start()
    yield duckdb_store.insert("events", [{**events(1)[0], "tz": "Pacific/Auckland"}])
    assert (yield rows(duckdb_store, "SELECT tz FROM sfpla.events")) == [{"tz": "Pacific/Auckland"}]
