"""Data errors vs store outages on the ClickHouse server store, decided by behaviour (issue 12).

A real clickhouse-server (Debian's 18.16, the schema downgraded for it) with a rule of the
kind an operator adds: ``params`` nested deeper than 40 arrays are refused, through a
MATERIALIZED ``Enum8`` column whose ``CAST`` 18.16 refuses with ``Code: 49`` (LOGICAL_ERROR),
a code no list of data errors has. Before, the batch holding such a row was retried forever
and every later event waited behind it, also after a restart. Now the server answers the
store's probe (``SELECT 1``) while refusing the rows, so the batch is searched: the row refused
alone goes to the dead letters, the rest lands. A real outage - the server's ``events``
directory made immutable (``Code: 1000`` "Access to file denied"), the server killed - is
retried and nothing is dead-lettered, even with poison in the batch. The poison is put below
the HTTP door too (in the spool, straight into ``store.insert``), where input limits at the
door cannot stop it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from sfpltracker.store.clickhouse.store import ClickHouseStore
from sfpltracker.store.errors import StoreError
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer
from tests.test_durability import drained, store_writes_blocked, wait_health
from tests.test_poison import dead_letters, event_row
from tests.test_poison_probe import (
    REPRO_VALUES,
    compact,
    nested,
    poison_rows,
    post_good,
    spool_between_good,
    wait_tried,
)

TOO_DEEP = "[" * 41  # what the rule looks for in params


@pytest.fixture(scope="module")
def server():
    with ClickHouseServer() as ch:
        yield ch


@pytest.fixture(scope="module")
def legacy_schema(tmp_path_factory):
    return downgrade_schema(tmp_path_factory.mktemp("schema-18.16"))


def add_depth_rule(server, database: str) -> None:
    server.client().execute(
        f"ALTER TABLE {database}.events ADD COLUMN params_depth Enum8('ok' = 1) "
        f"MATERIALIZED CAST(if(position(params, '{TOO_DEEP}') > 0, 'too deep', 'ok') "
        "AS Enum8('ok' = 1))"
    )


def events_dir(server, database: str) -> Path:
    return server.data_dir / "data" / database / "events"


def stored(server, database: str) -> list[str]:
    client = server.client()
    try:
        return [e for (e,) in client.execute(f"SELECT toString(eid) FROM {database}.events")]
    finally:
        client.disconnect()


def wait_stored(server, database: str, eids: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not set(eids) <= set(stored(server, database)):
        assert time.monotonic() < deadline, "good events not stored"
        time.sleep(0.2)


@pytest.fixture
def server_gateway(server, legacy_schema, gateway_factory, monkeypatch):
    """``start()``: a gateway on its own database of ``server``, with the depth rule."""
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(legacy_schema))
    database = "poison_" + uuid.uuid4().hex[:8]

    def start():
        gw = gateway_factory(
            {
                "Notify": [
                    {
                        "Type": "clickhouse",
                        "Hosts": [server.hostport],
                        "Database": database,
                        "Timeout": 5,
                    }
                ]
            }
        )
        add_depth_rule(server, database)
        return gw, database

    return start


def test_the_poison_request_never_stops_ingestion_on_the_server(server, server_gateway):
    gw, db = server_gateway()
    repro = [{"eid": str(uuid.uuid4()), "ename": "x", "p": v} for v in REPRO_VALUES]
    # /str/ answers the id of each event it acknowledged (null for one refused at the door by
    # the input limits); a request refused as a whole is a 400, never a 5xx.
    r = gw.http("POST", "/tr/v1/str/", json_body=repro)
    assert r.status in (200, 400), r
    acked = {eid for eid in r.json() if eid is not None} if r.status == 200 else set()
    good = post_good(gw, "good")
    wait_stored(server, db, good)  # within seconds, not behind a batch retried forever
    wait_health(gw, drained)
    eids = stored(server, db)
    assert sorted(eids) == sorted(set(eids))  # nothing twice
    dead = {d["row"]["eid"]: d for d in dead_letters(gw)}
    if r.status == 200:
        # Every acknowledged event stored or set aside, not both. The deep one is set aside,
        # unless input limits at the door took the deep value out of it (then it is stored).
        deep = repro[-1]["eid"]
        assert set(dead) <= {deep}
        assert set(eids) == acked - set(dead) | set(good)
        if dead:
            assert dead[deep]["code"] == 49
            assert "Unknown element 'too deep'" in dead[deep]["reason"]
    else:
        assert dead == {} and set(eids) == set(good)
    assert gw.http("GET", "/metrics").json()["batching"]["failed_batches"] == 0


def test_poison_in_the_spool_is_retried_through_an_outage_and_a_restart_on_the_server(
    server, server_gateway
):
    gw, db = server_gateway()
    before = post_good(gw, "before")
    wait_stored(server, db, before)
    # Stopped cleanly, so no insert is left in doubt: the first insert after the restart is
    # the backlog's.
    gw.stop()
    repro, _ = poison_rows()
    spooled_good = spool_between_good(gw, repro)

    # Restarted while the server cannot write the table: the poison's Code: 49 passes the
    # probe, but every half without it fails with "Access to file denied": an outage, the
    # batch retried, nothing set aside.
    with store_writes_blocked(events_dir(server, db)):
        gw.start()
        wait_health(gw, lambda h: h["status"] == "degraded")
        during = post_good(gw, "during")
        wait_tried(gw)  # the batch with the poison was sent and failed: an outage
        assert dead_letters(gw) == []
    after = post_good(gw, "after")
    wait_stored(server, db, after, timeout=60)
    wait_health(gw, drained)
    eids = stored(server, db)
    assert sorted(eids) == sorted(set(eids))  # nothing twice
    deep = repro[-1]
    good = before + [r["eid"] for r in spooled_good] + during + after
    assert set(eids) == set(good) | {r["eid"] for r in repro[:-1]}
    dead = dead_letters(gw)
    assert [d["row"] for d in dead] == [deep]  # as spooled: fix it and `deadletter replay`
    assert dead[0]["code"] == 49


# -- the store itself (no gateway) -------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_an_unlisted_code_is_searched_when_the_server_answers(server, legacy_schema, tmp_path):
    store = ClickHouseStore(
        reactor,
        [server.hostport],
        tmp_path / "data",
        database="poison_" + uuid.uuid4().hex[:8],
        schema_directory=legacy_schema,
    )
    yield store.start()
    try:
        add_depth_rule(server, store.database)
        good = [event_row(str(uuid.uuid4()), n) for n in range(6)]
        deep = event_row(str(uuid.uuid4()), 9, compact({"p": nested([], 150)}))
        rows = good[:3] + [deep] + good[3:]
        with store_writes_blocked(events_dir(server, store.database)):
            with pytest.raises(StoreError, match="Access to file denied"):
                yield store.insert("events", rows)
        assert store.deadletters.read("events") == []
        assert (yield store.insert("events", rows, dedup=True)) == len(good)
        dead = store.deadletters.read("events")
        assert [d["row"] for d in dead] == [deep] and dead[0]["code"] == 49
        assert sorted(stored(server, store.database)) == sorted(r["eid"] for r in good)
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_a_killed_server_is_an_outage_with_poison_in_the_batch(legacy_schema, tmp_path):
    with ClickHouseServer() as ch:
        store = ClickHouseStore(
            reactor, [ch.hostport], tmp_path / "data", timeout=1, schema_directory=legacy_schema
        )
        yield store.start()
        try:
            add_depth_rule(ch, store.database)
            deep = event_row(str(uuid.uuid4()), 9, compact({"p": nested([], 150)}))
            rows = [event_row(str(uuid.uuid4()), 1), deep]
            yield threads.deferToThread(ch.kill)
            with pytest.raises(StoreError):
                yield store.insert("events", rows)
            assert store.deadletters.read("events") == []
            yield threads.deferToThread(ch.start)
            assert (yield store.insert("events", rows, dedup=True)) == 1
            assert [d["row"] for d in store.deadletters.read("events")] == [deep]
        finally:
            yield store.stop()
