"""``store/clickhouse/legacy.py``: the gateway's reads rewritten for a server older than the schema needs."""

from __future__ import annotations

import pytest

from sfpltracker.store.clickhouse.legacy import LegacyDialect, bind, epoch_milli_from_seconds
from sfpltracker.store.errors import StoreError


def test_parameters_bound_as_typed_literals():
    sql = (
        "SELECT 1 FROM t AS a WHERE a.uid = {uid:UUID} AND a.n = {n:String} "
        "AND a.h IN {hs:Array(String)} AND a.id IN {ids:Array(UUID)} "
        "AND has({ids:Array(UUID)}, a.id) AND a.d = {d:Date} LIMIT {limit:UInt64}"
    )
    bound = bind(
        sql,
        {
            "uid": "0190aaaa-bbbb-7ccc-8ddd-000000000001",
            "n": "it's \\ here",
            "hs": "['a\\'b','c']",  # array text, as server-side parameters take it
            "ids": ["x", "y"],
            "d": "2026-01-02",
            "limit": 100001,
        },
    )
    assert bound == (
        "SELECT 1 FROM t AS a WHERE a.uid = '0190aaaa-bbbb-7ccc-8ddd-000000000001' "
        "AND a.n = 'it\\'s \\\\ here' AND a.h IN ('a\\'b', 'c') AND a.id IN ('x', 'y') "
        "AND has(CAST('[\\'x\\', \\'y\\']' AS Array(UUID)), a.id) "
        "AND a.d = CAST('2026-01-02' AS Date) LIMIT 100001"
    )


def test_bad_parameters_are_refused_not_spliced():
    with pytest.raises(StoreError, match="'limit': not an integer"):
        bind("SELECT 1 LIMIT {limit:UInt64}", {"limit": "1; DROP TABLE t"})
    with pytest.raises(StoreError, match="'x' is missing"):
        bind("SELECT {x:String}", {})
    assert bind("SELECT 1 WHERE a IN {e:Array(String)}", {"e": "[]"}) == (
        "SELECT 1 WHERE a IN (NULL)"
    )


def test_epoch_milliseconds_from_seconds_nested():
    assert epoch_milli_from_seconds(
        "SELECT toUnixTimestamp64Milli(max(updated_at)) AS newest, "
        "toUnixTimestamp64Milli(r.expires) > 5"
    ) == (
        "SELECT (1000 * toInt64(toUnixTimestamp(max(updated_at)))) AS newest, "
        "(1000 * toInt64(toUnixTimestamp(r.expires))) > 5"
    )


def test_only_old_servers_get_a_dialect():
    assert LegacyDialect.needed((25, 3, 2), 54477) is None
    old = LegacyDialect.needed((18, 16, 1), 54412)
    sql, params = old.adapt("SELECT toUnixTimestamp64Milli(x) WHERE k = {k:String}", {"k": "v"})
    assert (sql, params) == ("SELECT (1000 * toInt64(toUnixTimestamp(x))) WHERE k = 'v'", None)
    # 20.x to 22.x: DateTime64 exists, parameters are still bound on the client
    middle = LegacyDialect.needed((21, 8), 54449)
    assert middle.adapt("SELECT toUnixTimestamp64Milli(x) WHERE k = {k:String}", {"k": "v"}) == (
        "SELECT toUnixTimestamp64Milli(x) WHERE k = 'v'",
        None,
    )
