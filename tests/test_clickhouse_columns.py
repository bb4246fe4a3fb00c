"""Unit tests of the clickhouse store's pure parts: rows -> columns, number text, hosts."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest
from twisted.internet.testing import MemoryReactorClock

from sfpltracker.config import ConfigError, load_dict
from sfpltracker.store.clickhouse.columns import ZERO_UUID, TableShape, prepare
from sfpltracker.store.clickhouse.formats import number
from sfpltracker.store.clickhouse.store import ClickHouseStore, parse_hosts
from sfpltracker.store.errors import StoreError
from sfpltracker.store.schema import parse_version

SHAPE = TableShape(
    {
        "eid": "UUID",
        "org": "LowCardinality(String)",
        "created_at": "DateTime64(3, 'UTC')",
        "seen": "DateTime",
        "micro": "DateTime64(6)",
        "day": "Date",
        "n": "Int32",
        "u": "UInt8",
        "score": "Float64",
        "tags": "Array(String)",
        "maybe": "Nullable(Int64)",
        "first": "SimpleAggregateFunction(min, DateTime64(3, 'UTC'))",
        "price": "Decimal(18, 2)",
        "kind": "Enum8('a' = 1, 'b' = 2)",
        "params": "JSON",
        "currency": "String",
    },
    defaults=frozenset({"currency"}),
)
MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z


def test_rows_become_typed_columns_with_zero_values_for_missing_fields():
    eid = str(uuid.uuid4())
    rows = [
        {
            "eid": eid,
            "org": "acme",
            "created_at": MS,
            "seen": MS,
            "micro": MS,
            "day": MS,
            "n": 7,
            "u": True,
            "score": 2,
            "tags": ["x"],
            "maybe": None,
            "first": MS,
            "price": 1.25,
            "kind": "b",
            "params": '{"a": 1}',
        },
        {"eid": None, "day": "2026-02-03", "n": 7.0},
    ]
    prepared = prepare(SHAPE, rows)
    assert prepared.rejected == []
    (block,) = prepared.blocks
    data = dict(zip(block.names, block.columns, strict=True))
    assert "currency" not in data  # no row sets it: the server fills it
    assert data["eid"] == [eid, ZERO_UUID]
    assert data["org"] == ["acme", ""]
    assert data["created_at"] == [MS, 0]  # DateTime64(3) ticks are milliseconds
    assert data["seen"] == [MS // 1000, 0]
    assert data["micro"] == [MS * 1000, 0]
    assert data["day"] == [datetime.date(2026, 1, 1), datetime.date(2026, 2, 3)]
    assert data["n"] == [7, 7]
    assert data["u"] == [1, 0]
    assert data["score"] == [2, 0.0]
    assert data["tags"] == [["x"], []]
    assert data["maybe"] == [None, None]
    assert data["first"] == [MS, 0]
    assert data["price"] == [decimal.Decimal("1.25"), decimal.Decimal(0)]
    assert data["kind"] == ["b", "a"]
    assert data["params"] == ['{"a": 1}', {}]


def test_values_a_column_cannot_hold_reject_only_their_row():
    good = {"eid": str(uuid.uuid4()), "n": 1}
    rows = [
        good,
        {"eid": str(uuid.uuid4()), "n": "seven"},
        {"eid": str(uuid.uuid4()), "u": 300},
        {"eid": str(uuid.uuid4()), "org": {"nested": 1}},
        {"eid": str(uuid.uuid4()), "created_at": "not a time"},
        {"eid": str(uuid.uuid4()), "tags": "x"},
        {"eid": str(uuid.uuid4()), "params": 5},
    ]
    prepared = prepare(SHAPE, rows)
    assert [b.rows for b in prepared.blocks] == [[good]]
    reasons = [reason for _, reason in prepared.rejected]
    assert [row for row, _ in prepared.rejected] == rows[1:]
    assert reasons[0] == 'column n (Int32): expected an integer, got str "seven"'
    assert reasons[1] == "column u (UInt8): 300 is out of range"
    assert reasons[2].startswith("column org (LowCardinality(String)): expected text")
    assert reasons[3].startswith("column created_at (DateTime64(3, 'UTC')): Invalid isoformat")
    assert reasons[4].startswith("column tags (Array(String)): expected an array")
    assert reasons[5].startswith("column params (JSON): expected a JSON object")


def test_rows_are_grouped_by_which_default_columns_they_set():
    rows = [
        {"eid": str(uuid.uuid4()), "currency": "EUR"},
        {"eid": str(uuid.uuid4())},
        {"eid": str(uuid.uuid4()), "currency": "GBP"},
    ]
    blocks = prepare(SHAPE, rows).blocks
    assert [(b.names, [r["eid"] for r in b.rows]) for b in blocks] == [
        (["eid", "currency"], [rows[0]["eid"], rows[2]["eid"]]),
        (["eid"], [rows[1]["eid"]]),
    ]
    assert blocks[0].columns[1] == ["EUR", "GBP"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (-0.0, "-0"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (1e21, "1e21"),
        (123456789012345678.0, "123456789012345680"),
        (1.5e300, "1.5e300"),
        (-2.5e-10, "-2.5e-10"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
    ],
)
def test_floats_are_written_as_clickhouse_writes_them(value, text):
    assert number(value) == text


def test_float32_values_use_their_own_shortest_digits():
    assert number(0.10000000149011612, float32=True) == "0.1"


def test_hosts():
    assert parse_hosts(["a:9001", "b", "[::1]:9440", "::1"], secure=False) == [
        ("a", 9001),
        ("b", 9000),
        ("::1", 9440),
        ("::1", 9000),
    ]
    assert parse_hosts(["b"], secure=True) == [("b", 9440)]
    with pytest.raises(StoreError, match="expected host:port"):
        parse_hosts(["a:port"], secure=False)
    with pytest.raises(StoreError, match="at least one"):
        parse_hosts([], secure=False)


def test_versions():
    assert parse_version("18.16.1") == (18, 16, 1)
    assert parse_version("25.3.2.39-lts") == (25, 3, 2, 39)
    assert parse_version("18.16.1") < (25, 3) <= parse_version("25.3.1")


def test_notify_entry_becomes_a_store(tmp_path):
    from sfpltracker.gateway import make_store

    cfg = load_dict(
        {
            "DataDirectory": str(tmp_path),
            "Notify": [
                {
                    "Type": "clickhouse",
                    "Hosts": ["ch1:9440", "ch2"],
                    "Context": "analytics",
                    "Secure": True,
                    "CACert": "ca.pem",
                    "Compression": "zstd",
                    "Connections": 3,
                    "Timeout": 2.5,
                    "Cluster": "tracker_cluster",
                }
            ],
        },
        base_dir="/etc/sfpl",
    )
    store = make_store(cfg, MemoryReactorClock())
    assert isinstance(store, ClickHouseStore)
    assert store.hosts == [("ch1", 9440), ("ch2", 9440)]
    assert store.database == "analytics"  # the original's Context names the database
    assert store.cluster == "tracker_cluster"
    assert store.threads.max == 3
    client = store._new_client()
    assert list(client.connection.hosts) == [("ch1", 9440), ("ch2", 9440)]
    assert client.connection.secure_socket and client.connection.verify_cert
    assert client.connection.ssl_options["ca_certs"] == "/etc/sfpl/ca.pem"
    assert client.connection.compressor_cls.__module__.endswith("zstd")
    assert client.connection.connect_timeout == 2.5
    with pytest.raises(ConfigError, match=r"Notify\[0\].Compression"):
        load_dict({"Notify": [{"Type": "clickhouse", "Hosts": ["a"], "Compression": "gzip"}]})
