"""Zero acknowledged loss with the ClickHouse server store: the server dies under load.

Issue #4's server-store outage: a real gateway (default ``Durability: "spool"``) writes to a
real clickhouse-server (Debian's 18.16, the schema downgraded for it through
``SFPL_SCHEMA_DIR``, as in ``tests/test_clickhouse_gateway.py``). Under continuous load the
server is SIGKILLed; the spool must keep acknowledging (2xx, ``/health`` ``degraded``); after
the server is restarted and the spool has drained, every acknowledged eid is in
``sfpla.events`` exactly once.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer
from tests.test_durability import LoadClient, drained, health, wait_health


@pytest.fixture
def server():
    with ClickHouseServer() as ch:
        yield ch


def test_clickhouse_killed_under_load_every_ack_stored_once(
    server, gateway_factory, tmp_path, monkeypatch
):
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    gw = gateway_factory(
        {
            "Notify": [{"Type": "clickhouse", "Hosts": [server.hostport], "Timeout": 2}],
            # small, frequent batches: the kill lands between and inside inserts
            "Batching": {
                "events": {"Strategy": "hybrid", "MaxBatchSize": 50, "MaxBatchTime": "200ms"}
            },
        }
    )
    h = health(gw)
    assert h["store"]["kind"] == "clickhouse" and h["spool"]["durability"] == "spool", h
    client = server.client()

    def stored_count() -> int:
        return client.execute("SELECT count() FROM sfpla.events")[0][0]

    with LoadClient(gw) as load:
        load.wait_acked(200)
        wait_health(gw, lambda h: h["spool"]["loaded_records"] >= 100)
        assert stored_count() > 0  # the server really receives the load
        client.disconnect()
        server.kill()  # SIGKILL, possibly mid-insert
        h = wait_health(gw, lambda h: h["status"] == "degraded")
        assert h["spool"]["store_reachable"] is False
        during = len(load.acked)
        load.wait_acked(during + 300)  # the spool keeps acknowledging while the server is gone
        h = health(gw)
        assert h["status"] == "degraded" and h["spool"]["records_pending"] >= 300, h
        server.start()  # same ports, same data directory
        load.wait_acked(len(load.acked) + 200)
    acked = list(load.acked)
    assert load.refused == 0 and load.other == [] and load.errors == 0, (
        load.refused,
        load.other,
        load.errors,
    )
    h = wait_health(gw, drained, timeout=120)
    metrics = gw.http("GET", "/metrics").json()
    assert metrics["batching"]["failed_attempts"] > 0  # inserts really failed

    client = server.client()
    stored = Counter(e for (e,) in client.execute("SELECT toString(eid) FROM sfpla.events"))
    twice = [e for e, n in stored.items() if n > 1]
    assert not twice, f"{len(twice)} eids stored more than once, e.g. {twice[:3]}"
    missing = [e for e in acked if e not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged eids lost, e.g. {missing[:3]}"
    # every request was answered (no client errors), so nothing unacknowledged was stored
    assert set(stored) == set(acked)
    [(final, unique)] = client.execute("SELECT count(), uniqExact(eid) FROM sfpla.events FINAL")
    assert final == unique == len(set(acked)) == len(acked)
    # A kill between the events part and the views' parts can leave a batch out of hits
    # (docs/durability.md, "Known limit"); it must never be counted twice.
    [(hits,)] = client.execute("SELECT sum(total) FROM sfpla.hits")
    assert hits <= len(acked)
    client.disconnect()
