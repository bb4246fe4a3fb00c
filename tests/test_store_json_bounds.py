"""The JSON columns clients fill are bounded, on real chDB (issue 12, docs/resources.md).

Random keys in ``params`` made one ``events`` part hold ~10,000 files (one set per dynamic path
and type) and a merge take ~1 GB. The column types bound the paths and types kept as
subcolumns (the rest share one Map), chDB runs with a memory budget, and a data directory made
by the old schema is brought to the bounded types when the store starts.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import pytest_twisted
from twisted.internet import defer, reactor

from bench.params_column import random_params, rare_text_key, schema_params_type
from sfpltracker.ingest.event import _params_text
from sfpltracker.store.clickhouse.cluster import cluster_statements
from sfpltracker.store.embedded.store import MERGE_TREE_SETTINGS, SERVER_SETTINGS, EmbeddedStore
from sfpltracker.store.schema import (
    JSON_BOUNDS,
    SCHEMA_DIR,
    canonical_json_type,
    json_columns,
    json_type_changes,
    load_statements,
)

EPOCH_MS = 1_767_225_600_000


def _rows(n: int, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    return [
        {
            "eid": f"00000000-0000-4000-8000-{i:012d}",
            "created_at": EPOCH_MS + i,
            "ename": "bounds",
            "params": _params_text(random_params(rnd, keys=50)),
        }
        for i in range(n)
    ]


@defer.inlineCallbacks
def _query(store, sql: str):
    answer = yield store.execute(sql)
    return answer.decode().strip()


def _max_dynamic_paths(declared: str) -> int:
    m = re.search(r"max_dynamic_paths\s*=\s*(\d+)", declared)
    return int(m.group(1)) if m else 1024  # ClickHouse's default


def test_every_client_json_column_is_bounded():
    """No JSON column a client fills is left with ClickHouse's default (1,024 paths x 32 types
    as subcolumns, each a few files per part)."""
    for (table, column), declared in json_columns(load_statements()).items():
        if table == "jurisdictions":  # seeded by the gateway, never from input
            continue
        assert "max_dynamic_paths" in declared, (table, column, declared)
        if _max_dynamic_paths(declared):
            assert "max_dynamic_types" in declared, (table, column, declared)


@pytest_twisted.inlineCallbacks
def test_random_keys_stay_within_the_bound_and_queries_still_read_them(store):
    rows = _rows(2000)
    for start in range(0, len(rows), 500):
        yield store.insert("events", rows[start : start + 500])
    # Every row in one part, wide (a file set per column and subcolumn): the worst case.
    yield store.execute("ALTER TABLE sfpla.events MODIFY SETTING min_bytes_for_wide_part = 0")
    yield store.execute("OPTIMIZE TABLE sfpla.events FINAL")
    bound = _max_dynamic_paths(schema_params_type())
    dynamic = yield _query(
        store, "SELECT uniqExact(arrayJoin(JSONDynamicPaths(params))) FROM sfpla.events"
    )
    assert int(dynamic) <= bound
    part = yield _query(
        store,
        "SELECT path FROM system.parts WHERE table = 'events' AND database = 'sfpla' AND active",
    )
    files = len(os.listdir(part))
    # Before: 2,000 such rows made a wide part of several thousand files (1,024 paths).
    assert files < 800, files
    # A key kept as a subcolumn and one from the shared data read as before.
    expected = sum(json.loads(r["params"])["plan"] == "pro" for r in rows)
    got = yield _query(store, "SELECT count() FROM sfpla.events WHERE params.plan = 'pro'")
    assert int(got) == expected
    key, value = rare_text_key(rows[-1])
    expected = sum(json.loads(r["params"]).get(key) == value for r in rows)
    got = yield _query(store, f"SELECT count() FROM sfpla.events WHERE params.`{key}` = '{value}'")
    assert int(got) == expected >= 1


@pytest_twisted.inlineCallbacks
def test_the_engine_runs_with_its_budget(store):
    for name, value in SERVER_SETTINGS.items():
        got = yield store.execute(f"SELECT value FROM system.server_settings WHERE name = '{name}'")
        assert got.decode().strip() == str(value), name
    for name, value in MERGE_TREE_SETTINGS.items():
        got = yield store.execute(
            f"SELECT value FROM system.merge_tree_settings WHERE name = '{name}'"
        )
        assert got.decode().strip() == str(value), name


@pytest_twisted.inlineCallbacks
def test_a_data_directory_of_the_old_schema_gets_the_bounded_types(tmp_path, monkeypatch):
    old = tmp_path / "old-schema"
    shutil.copytree(SCHEMA_DIR, old)
    for path in old.glob("*.sql"):  # the schema before issue 12: plain JSON
        path.write_text(re.sub(r"\bJSON\([^)]*\)", "JSON", path.read_text()))
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(old))
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    try:
        assert store.columns["events"]["params"] == "JSON"
        yield store.insert("events", _rows(50))
    finally:
        yield store.stop()

    monkeypatch.delenv("SFPL_SCHEMA_DIR")
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    try:
        assert "max_dynamic_paths" in store.columns["events"]["params"]
        declared = json_columns(load_statements())
        for (table, column), ch_type in declared.items():
            stored = store.columns[table][column]
            assert canonical_json_type(stored) == canonical_json_type(ch_type), (table, column)
        got = yield store.execute("SELECT count() FROM sfpla.events WHERE params.plan != ''")
        assert got.decode().strip() == "50"
        # Loading the schema again changes nothing more.
        before = yield store.execute("SELECT count() FROM system.mutations")
        yield store.load_schema()
        after = yield store.execute("SELECT count() FROM system.mutations")
        assert before == after
    finally:
        yield store.stop()


def test_the_alter_of_an_old_json_column_runs_on_both_tables_of_a_cluster():
    statements = load_statements()
    stored = {("events", "params"): "JSON", ("events", "targets"): "JSON"}
    stored[("events", "url")] = "String"
    changes = json_type_changes(statements, stored, "sfpla")
    assert [c.sql for c in changes] == [
        f"ALTER TABLE sfpla.events MODIFY COLUMN params {schema_params_type()}",
        "ALTER TABLE sfpla.events MODIFY COLUMN targets "
        + json_columns(statements)[("events", "targets")],
    ]
    rewritten = [
        s.sql for s in cluster_statements(statements + changes, "c1") if s.file == JSON_BOUNDS
    ]
    assert rewritten[:2] == [
        f"ALTER TABLE sfpla.events_local ON CLUSTER 'c1' MODIFY COLUMN params {schema_params_type()}",
        f"ALTER TABLE sfpla.events ON CLUSTER 'c1' MODIFY COLUMN params {schema_params_type()}",
    ]
    # A table made AS another has the other's columns (agreements AS agreed).
    declared = json_columns(statements)
    assert declared[("agreements", "loc")] == declared[("agreed", "loc")]
    # ClickHouse's spelling of the declared type is no change.
    same = {("events", "params"): "JSON(max_dynamic_types=4, max_dynamic_paths=16)"}
    assert canonical_json_type(same[("events", "params")]) == canonical_json_type(
        schema_params_type()
    )
