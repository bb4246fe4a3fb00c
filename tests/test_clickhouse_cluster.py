"""Cluster mode: the schema files rewritten into ON CLUSTER DDL, Replicated ``<table>_local``
tables and Distributed tables under the public names.

The rewrite is checked three ways: as text against a golden expectation, by ClickHouse's own
parser (chDB's ``EXPLAIN AST``, a modern server's grammar) for every statement of the shipped
schema, and - for the data flow through Distributed tables and views on local tables - on a
real server (18.16 has no ZooKeeper, so there the ``ON CLUSTER`` clauses and the Replicated
engine arguments are taken out of the rewritten statements; everything else runs as written).
"""

from __future__ import annotations

import re
import uuid

import chdb
import pytest
import pytest_twisted
from twisted.internet import reactor

from sfpltracker.store.clickhouse.cluster import ClusterSchemaError, cluster_statements
from sfpltracker.store.clickhouse.store import ClickHouseStore
from sfpltracker.store.schema import load_statements, required_version
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer

GOLDEN_SCHEMA = """\
-- requires: ClickHouse >= 25.3
CREATE DATABASE IF NOT EXISTS sfpla;
CREATE TABLE IF NOT EXISTS sfpla.events
(
    eid UUID,
    vid UUID,
    url String CODEC(ZSTD(3)),
    created_at DateTime64(3, 'UTC'),
    INDEX idx_vid vid TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (toDate(created_at), eid)
SETTINGS non_replicated_deduplication_window = 1000;
CREATE TABLE IF NOT EXISTS sfpla.hits (url String, total UInt64, date Date) ENGINE = SummingMergeTree(total) ORDER BY (url, date);
CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.hits_mv TO sfpla.hits AS
SELECT url, toUInt64(1) AS total, toDate(created_at) AS date FROM sfpla.events;
CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.daily ENGINE = SummingMergeTree ORDER BY day AS
SELECT toDate(created_at) AS day, count() AS n FROM sfpla.events GROUP BY day;
CREATE VIEW IF NOT EXISTS sfpla.events_recent AS SELECT * FROM sfpla.events;
CREATE TABLE IF NOT EXISTS sfpla.scratch (x UInt8) ENGINE = Memory;
ALTER TABLE sfpla.events ADD COLUMN IF NOT EXISTS ref UUID;
INSERT INTO sfpla.hits (url, total, date) VALUES ('/', 1, '2024-01-01');
"""

GOLDEN_CLUSTER = """\
CREATE DATABASE IF NOT EXISTS analytics ON CLUSTER 'tracker_cluster';

CREATE TABLE IF NOT EXISTS analytics.events_local ON CLUSTER 'tracker_cluster'
(
    eid UUID,
    vid UUID,
    url String CODEC(ZSTD(3)),
    created_at DateTime64(3, 'UTC'),
    INDEX idx_vid vid TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/analytics/events_local', '{replica}')
PARTITION BY toYYYYMM(created_at)
ORDER BY (toDate(created_at), eid)
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS analytics.events ON CLUSTER 'tracker_cluster'
(
    eid UUID,
    vid UUID,
    url String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = Distributed('tracker_cluster', 'analytics', 'events_local', cityHash64(vid));

CREATE TABLE IF NOT EXISTS analytics.hits_local ON CLUSTER 'tracker_cluster'
(url String, total UInt64, date Date)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/analytics/hits_local', '{replica}', total) ORDER BY (url, date);

CREATE TABLE IF NOT EXISTS analytics.hits ON CLUSTER 'tracker_cluster'
(
    url String,
    total UInt64,
    date Date
)
ENGINE = Distributed('tracker_cluster', 'analytics', 'hits_local', rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.hits_mv ON CLUSTER 'tracker_cluster'
TO analytics.hits_local AS
SELECT url, toUInt64(1) AS total, toDate(created_at) AS date FROM analytics.events_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.daily ON CLUSTER 'tracker_cluster'
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/analytics/daily_inner', '{replica}') ORDER BY day AS
SELECT toDate(created_at) AS day, count() AS n FROM analytics.events_local GROUP BY day;

CREATE VIEW IF NOT EXISTS analytics.events_recent ON CLUSTER 'tracker_cluster'
AS SELECT * FROM analytics.events;

CREATE TABLE IF NOT EXISTS analytics.scratch ON CLUSTER 'tracker_cluster' (x UInt8) ENGINE = Memory;

ALTER TABLE analytics.events_local ON CLUSTER 'tracker_cluster' ADD COLUMN IF NOT EXISTS ref UUID;

ALTER TABLE analytics.events ON CLUSTER 'tracker_cluster' ADD COLUMN IF NOT EXISTS ref UUID;

INSERT INTO analytics.hits (url, total, date) VALUES ('/', 1, '2024-01-01');

"""


def test_golden_cluster_rewrite(tmp_path):
    (tmp_path / "001_all.sql").write_text(GOLDEN_SCHEMA)
    statements = cluster_statements(load_statements("analytics", tmp_path), "tracker_cluster")
    assert "".join(s.sql + ";\n\n" for s in statements) == GOLDEN_CLUSTER


def test_every_rewritten_statement_of_the_shipped_schema_parses():
    for statement in cluster_statements(load_statements(), "tracker_cluster"):
        chdb.query("EXPLAIN AST " + statement.sql)  # raises on a syntax error


def test_shipped_schema_in_cluster_form():
    plain = load_statements()
    clustered = cluster_statements(plain, "tracker_cluster")
    sql = {s.name: s.sql for s in clustered}
    tables = [s for s in plain if s.kind == "table"]
    assert tables
    for table in tables:
        name = table.name
        local = sql[f"{name}_local"]
        assert (
            f"CREATE TABLE IF NOT EXISTS sfpla.{name}_local ON CLUSTER 'tracker_cluster'" in local
        )
        engine = re.search(
            r"ENGINE = (\w+)\('/clickhouse/tables/\{shard\}/sfpla/(\w+)', '\{replica\}'", local
        )
        assert (
            engine
            and engine.group(1).startswith("Replicated")
            and engine.group(2) == f"{name}_local"
        )
        distributed = sql[name]
        assert f"ENGINE = Distributed('tracker_cluster', 'sfpla', '{name}_local', " in distributed
        # the same columns, in the same order, under the public name
        assert _columns(distributed) == _columns(table.sql)
    assert "cityHash64(vid)" in sql["events"]  # a replayed event meets its first copy
    for statement in clustered:
        if statement.kind != "insert":
            assert "ON CLUSTER 'tracker_cluster'" in statement.sql, statement.sql
        if statement.kind == "materialized_view":
            names = re.findall(r"\bsfpla\.(\w+)", statement.sql)[1:]  # after the view's own
            assert names and all(n.endswith("_local") for n in names), statement.sql
        if statement.kind == "view":
            assert "_local" not in statement.sql  # plain views read the whole cluster
    assert sum(1 for s in clustered if s.kind == "table") == 2 * len(tables)


def test_without_cluster_the_schema_is_loaded_as_written(tmp_path):
    store = ClickHouseStore(reactor, ["127.0.0.1:9000"], tmp_path)
    assert store.statements() == load_statements()
    clustered = ClickHouseStore(reactor, ["127.0.0.1:9000"], tmp_path, cluster="c1")
    assert clustered.statements() == cluster_statements(load_statements(), "c1")
    with pytest.raises(ClusterSchemaError):
        cluster_statements(load_statements(), "bad name'")


def test_shipped_schema_declares_the_server_it_needs():
    assert required_version() == (25, 3)


def _columns(sql: str) -> list[str]:
    body = sql[sql.index("(") + 1 : sql.index("ENGINE")]
    names = re.findall(r"^\s*(\w+)\s+[A-Z]", body, re.MULTILINE)
    return [n for n in names if n not in ("INDEX", "PROJECTION", "CONSTRAINT")]


class KeeperlessClusterStore(ClickHouseStore):
    """The cluster form without what needs ZooKeeper (absent on the 18.16 test server)."""

    def statements(self):
        out = []
        for statement in super().statements():
            sql = re.sub(r" ON CLUSTER '[^']*'", "", statement.sql)
            sql = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(, )?", r"\1(", sql)
            out.append(type(statement)(statement.file, sql))
        return out


@pytest_twisted.inlineCallbacks
def test_rows_flow_through_distributed_tables_and_views_on_local_tables(tmp_path):
    schema = downgrade_schema(tmp_path / "schema")
    with ClickHouseServer(remote_servers_cluster="tracker_cluster") as ch:
        store = KeeperlessClusterStore(
            reactor,
            [ch.hostport],
            tmp_path / "data",
            cluster="tracker_cluster",
            schema_directory=schema,
        )
        try:
            yield store.start()
            c = ch.client()
            engines = dict(
                c.execute("SELECT name, engine FROM system.tables WHERE database = 'sfpla'")
            )
            assert (
                engines["events"] == "Distributed"
                and engines["events_local"] == "ReplacingMergeTree"
            )
            assert engines["hits"] == "Distributed" and engines["hits_local"] == "SummingMergeTree"
            rows = [
                {
                    "eid": str(uuid.uuid4()),
                    "vid": str(uuid.uuid4()),
                    "created_at": 1_767_225_600_000,
                    "url": f"/p/{i % 3}",
                    "server": 0,
                    "bot": 0,
                }
                for i in range(300)
            ]
            assert (yield store.insert("events", rows)) == 300
            # synchronous distributed insert: on the shard when the insert returns
            assert c.execute("SELECT count() FROM sfpla.events_local") == [(300,)]
            assert c.execute("SELECT count() FROM sfpla.events") == [(300,)]
            hits = dict(c.execute("SELECT url, sum(total) FROM sfpla.hits GROUP BY url"))
            assert hits == {"/p/0": 100, "/p/1": 100, "/p/2": 100}  # each row derived once
            # a retry reads the keys through the Distributed table
            assert (yield store.insert("events", rows[:50], dedup=True)) == 0
            assert c.execute("SELECT count() FROM sfpla.events") == [(300,)]
        finally:
            yield store.stop()
