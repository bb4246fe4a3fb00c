"""``redirect_history`` on a cluster: a ``<t>_local`` table an older schema made as a
(Replicated)MergeTree is not rebuilt by the gateway (the copy must run once per shard while
nothing writes), so every start says so with the statements that rebuild it."""

from __future__ import annotations

import chdb
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from sfpltracker.store.clickhouse.cluster import cluster_statements
from sfpltracker.store.schema import load_statements
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer
from tests.test_clickhouse_cluster import KeeperlessClusterStore


def test_the_rebuild_statements_are_valid_clickhouse_for_the_cluster():
    from sfpltracker.store.schema import cluster_engine_changes

    statements = cluster_statements(load_statements(), "tracker_cluster")
    stored = {"redirect_history_local": "ReplicatedMergeTree", "hits_local": "MergeTree"}
    changes = cluster_engine_changes(statements, stored, "sfpla", "tracker_cluster")
    assert list(changes) == ["redirect_history_local"]  # hits_local: not a change made here
    create, insert, exchange, drop = changes["redirect_history_local"]
    assert "CREATE TABLE sfpla.redirect_history_local__convert ON CLUSTER 'tracker_cluster'" in (
        create
    )
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/sfpla/" in create
    assert "/redirect_history_local__convert'" in create  # not the old table's ZooKeeper path
    assert insert.startswith(
        "INSERT INTO sfpla.redirect_history_local__convert SELECT * FROM "
        "sfpla.redirect_history_local"
    )
    assert exchange == (
        "EXCHANGE TABLES sfpla.redirect_history_local AND "
        "sfpla.redirect_history_local__convert ON CLUSTER 'tracker_cluster'"
    )
    for sql in (create, insert.split("--")[0], exchange, drop):
        chdb.query("EXPLAIN AST " + sql)  # raises on a syntax error
    # nothing to say when the table already has the declared engine
    stored = {"redirect_history_local": "ReplicatedReplacingMergeTree"}
    assert cluster_engine_changes(statements, stored, "sfpla", "tracker_cluster") == {}


@pytest_twisted.inlineCallbacks
def test_a_cluster_start_warns_about_an_old_redirect_history(tmp_path):
    schema = downgrade_schema(tmp_path / "schema")
    warnings: list[str] = []

    def observe(event):
        if "store: {table} has the engine of an older schema" in (event.get("log_format") or ""):
            warnings.append(event["table"] + "\n" + event["steps"])

    with ClickHouseServer(remote_servers_cluster="tracker_cluster") as ch:

        def store():
            return KeeperlessClusterStore(
                reactor,
                [ch.hostport],
                tmp_path / "data",
                cluster="tracker_cluster",
                schema_directory=schema,
            )

        first = store()
        yield first.start()
        yield first.stop()
        # the table as an older schema made it (a plain MergeTree), with a row
        c = ch.client()
        c.execute("RENAME TABLE sfpla.redirect_history_local TO sfpla.rh_declared")
        c.execute(
            "CREATE TABLE sfpla.redirect_history_local AS sfpla.rh_declared "
            "ENGINE = MergeTree ORDER BY (urlfrom, updated_at)"
        )
        c.execute("DROP TABLE sfpla.rh_declared")
        c.execute("INSERT INTO sfpla.redirect_history_local (urlfrom) VALUES", [("a.test/x",)])

        globalLogPublisher.addObserver(observe)
        second = store()
        try:
            yield second.start()  # still starts
        finally:
            globalLogPublisher.removeObserver(observe)
            yield second.stop()
        (warning,) = warnings
        assert warning.startswith("sfpla.redirect_history_local\n")
        assert "CREATE TABLE sfpla.redirect_history_local__convert" in warning
        assert "EXCHANGE TABLES sfpla.redirect_history_local AND" in warning
        # left as it was, row included: the operator converts it
        engine = c.execute(
            "SELECT engine FROM system.tables WHERE database = 'sfpla' "
            "AND name = 'redirect_history_local'"
        )
        assert engine == [("MergeTree",)]
        assert c.execute("SELECT urlfrom FROM sfpla.redirect_history_local") == [("a.test/x",)]
