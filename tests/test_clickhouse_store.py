"""The clickhouse store against a real ClickHouse server (Debian's 18.16, native protocol).

18.16 is older than the shipped schema, so these tests load the schema downgraded for it
(``tests/clickhouse_legacy.py``: same tables and columns, types 18.16 has); the shipped schema
itself is checked on chDB and, against this very server, refused as too old.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from sfpltracker.config import BatchSettings
from sfpltracker.pipeline.batcher import Batcher
from sfpltracker.store.clickhouse.store import ClickHouseStore
from sfpltracker.store.deadletter_replay import replay
from sfpltracker.store.errors import StoreError
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer, _make_test_pki, free_port

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def event_row(i: int, **overrides) -> dict:
    """An ``events`` row as the event model makes one (text UUIDs, epoch ms, JSON text)."""
    row = {
        "eid": str(uuid.uuid4()),
        "vid": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "created_at": EPOCH_MS + i * 1000,
        "hhash": "h1",
        "ename": "page_view" if i % 4 else "signup",
        "etyp": "view",
        "url": f"https://example.com/p/{i % 7}",
        "ip": "127.0.0.0",
        "params": json.dumps({"n": i, "tag": f"t{i % 3}"}),
        "cflags": i,
        "lat": i / 4,
        "server": i % 2,
        "bot": 0,
    }
    if i % 5 == 0:
        row["last"] = "https://referrer.example/"
    row.update(overrides)
    return row


@pytest.fixture(scope="module")
def legacy_schema(tmp_path_factory):
    return downgrade_schema(tmp_path_factory.mktemp("schema-18.16"))


@pytest.fixture(scope="module")
def server():
    """One server for the tests that neither stop it nor change its config."""
    with ClickHouseServer() as ch:
        yield ch


@pytest.fixture
def make_store(tmp_path, legacy_schema):
    """``make_store(hosts, **options)``: a store on its own database, stopped afterwards."""
    stores = []

    def make(hosts, **options):
        options.setdefault("schema_directory", legacy_schema)
        options.setdefault("database", "t_" + uuid.uuid4().hex[:10])
        store = ClickHouseStore(reactor, hosts, tmp_path / "data", **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        pytest_twisted.blockon(store.stop())


def rows_of(client, sql: str) -> list[tuple]:
    return client.execute(sql)


@pytest_twisted.inlineCallbacks
def test_batches_arrive_exactly(server, make_store):
    store = make_store([server.hostport], compression="lz4")
    yield store.start()
    assert store.server_version.startswith("ClickHouse 18.16")
    batches = [[event_row(b * 1000 + i) for i in range(1000)] for b in range(3)]
    # a row without most columns: the others get their type's zero value
    batches.append([{"eid": str(uuid.uuid4()), "created_at": EPOCH_MS, "url": "/bare"}])
    for rows in batches:
        assert (yield store.insert("events", rows)) == len(rows)

    c = server.client()
    db = store.database
    stored = rows_of(
        c,
        f"SELECT toString(eid), toString(vid), toUnixTimestamp(created_at), ename, url, params, "
        f"cflags, lat, server, last FROM {db}.events",
    )
    expected = [
        (
            r["eid"],
            r.get("vid", "00000000-0000-0000-0000-000000000000"),
            r["created_at"] // 1000,
            r.get("ename", ""),
            r["url"],
            r.get("params", ""),
            r.get("cflags", 0),
            r.get("lat", 0.0),
            r.get("server", 0),
            r.get("last", ""),
        )
        for rows in batches
        for r in rows
    ]
    assert sorted(stored) == sorted(expected)
    # the materialized views saw every client event once
    hits = dict(rows_of(c, f"SELECT url, sum(total) FROM {db}.hits GROUP BY url"))
    client_rows = [r for rows in batches for r in rows if r.get("server", 0) == 0]
    assert sum(hits.values()) == len(client_rows)
    assert hits["https://example.com/p/0"] == sum(
        1 for r in client_rows if r["url"] == "https://example.com/p/0"
    )


@pytest_twisted.inlineCallbacks
def test_default_expressions_are_left_to_the_server(server, make_store):
    store = make_store([server.hostport], compression="zstd")
    yield store.start()
    common = {"created_at": EPOCH_MS, "updated_at": EPOCH_MS, "revenue": 10.0}
    rows = [
        {"id": str(uuid.uuid4()), "currency": "EUR", **common},
        {"id": str(uuid.uuid4()), **common},  # currency DEFAULT 'USD'
        {"id": str(uuid.uuid4()), "currency": None, **common},
    ]
    assert (yield store.insert("payments", rows)) == 3
    stored = dict(
        server.client().execute(f"SELECT toString(id), currency FROM {store.database}.payments")
    )
    assert stored == {rows[0]["id"]: "EUR", rows[1]["id"]: "USD", rows[2]["id"]: "USD"}


@pytest_twisted.inlineCallbacks
def test_retry_with_dedup_skips_rows_already_stored(server, make_store):
    store = make_store([server.hostport])
    yield store.start()
    rows = [event_row(i) for i in range(500)]
    # the first attempt landed, but its answer was lost: the batcher retries with dedup
    server.client().execute(
        f"INSERT INTO {store.database}.events (eid, created_at, url) VALUES",
        [
            (uuid.UUID(r["eid"]), datetime.datetime.fromtimestamp(r["created_at"] / 1000), r["url"])
            for r in rows[:300]
        ],
    )
    assert (yield store.insert("events", rows, dedup=True)) == 200
    count, unique = server.client().execute(
        f"SELECT count(), uniqExact(eid) FROM {store.database}.events"
    )[0]
    assert count == unique == 500
    assert store.stats["deduplicated"]["events"] == 300
    # without dedup (a first attempt) nothing is skipped
    assert (yield store.insert("events", rows[:1])) == 1


@pytest_twisted.inlineCallbacks
def test_server_killed_mid_load_every_row_arrives_once(make_store):
    with ClickHouseServer() as ch:
        store = make_store([ch.hostport], timeout=2)
        yield store.start()
        batcher = Batcher(
            store, reactor, {"events": BatchSettings("size", 500, 0.2, 10, 3, 30, 100)}
        )
        accepted, results = [], []
        for n in range(20):
            rows = [event_row(n * 500 + i) for i in range(500)]
            accepted.extend(r["eid"] for r in rows)
            results.append(batcher.add("events", rows))
            yield task.deferLater(reactor, 0.05, lambda: None)
            if n == 6:
                yield threads.deferToThread(ch.kill)  # SIGKILL, mid-load
                reactor.callLater(1.0, lambda: threads.deferToThread(ch.restart))
        yield defer.gatherResults(results)  # every batch was eventually stored
        assert batcher.stats.failed_attempts > 0  # the outage did hit the load
        assert batcher.stats.failed_batches == 0
        count, unique = ch.client().execute(
            f"SELECT count(), uniqExact(eid) FROM {store.database}.events"
        )[0]
        assert count == unique == len(accepted)
        stored = {
            str(e) for (e,) in ch.client().execute(f"SELECT eid FROM {store.database}.events")
        }
        assert stored == set(accepted)


@pytest_twisted.inlineCallbacks
def test_first_host_down_writes_go_to_the_second(server, make_store):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    store = make_store([dead, server.hostport])
    yield store.start()
    rows = [event_row(i) for i in range(100)]
    assert (yield store.insert("events", rows)) == 100
    assert server.client().execute(f"SELECT count() FROM {store.database}.events") == [(100,)]
    assert store._last_host == server.hostport


@pytest_twisted.inlineCallbacks
def test_failover_when_the_host_in_use_dies(make_store):
    with ClickHouseServer() as first, ClickHouseServer() as second:
        database = "t_" + uuid.uuid4().hex[:10]
        # the schema is on every node of a real cluster; here: load it on each server
        for ch in (first, second):
            yield make_store([ch.hostport], database=database).start()
        store = make_store([first.hostport, second.hostport], database=database, timeout=2)
        yield store.start()
        before = [event_row(i) for i in range(200)]
        assert (yield store.insert("events", before)) == 200
        yield threads.deferToThread(first.kill)
        after = [event_row(1000 + i) for i in range(300)]
        assert (yield store.insert("events", after)) == 300
        assert second.client().execute(f"SELECT count() FROM {database}.events") == [(300,)]
        assert store.stats["host_changes"] == {second.hostport: 1}
        yield threads.deferToThread(first.restart)
        assert first.client().execute(f"SELECT count() FROM {database}.events") == [(200,)]


@pytest_twisted.inlineCallbacks
def test_rejected_rows_are_dead_lettered_and_the_rest_lands(server, make_store, tmp_path):
    store = make_store([server.hostport])
    yield store.start()
    db = store.database
    # A server-side rule 18.16 enforces on insert: xid must parse as an integer.
    server.client().execute(
        f"ALTER TABLE {db}.events ADD COLUMN xid_number Int64 MATERIALIZED toInt64(xid)"
    )
    rows = [event_row(i, xid=str(i)) for i in range(200)]
    rows[17]["xid"] = "abc"
    rows[150]["xid"] = "12x"
    not_sendable = event_row(999, created_at="yesterday")  # refused before sending
    rows.append(not_sendable)
    assert (yield store.insert("events", rows)) == 198

    stored = {str(e) for (e,) in server.client().execute(f"SELECT eid FROM {db}.events")}
    assert stored == {r["eid"] for r in rows} - {
        rows[17]["eid"],
        rows[150]["eid"],
        not_sendable["eid"],
    }
    dead = store.deadletters.read("events")
    assert store.deadletters.path("events") == tmp_path / "data" / "deadletter" / "events.jsonl"
    by_eid = {d["row"]["eid"]: d for d in dead}
    assert set(by_eid) == {rows[17]["eid"], rows[150]["eid"], not_sendable["eid"]}
    assert by_eid[rows[17]["eid"]]["row"] == rows[17]  # the row as it came, to replay
    assert by_eid[rows[17]["eid"]]["code"] == 6
    assert "Cannot parse string 'abc' as Int64" in by_eid[rows[17]["eid"]]["reason"]
    assert "Cannot parse string '12x' as Int64" in by_eid[rows[150]["eid"]]["reason"]
    assert by_eid[rows[17]["eid"]]["server"] == server.hostport
    assert by_eid[not_sendable["eid"]]["reason"].startswith("not sent: column created_at")
    families = {f.name: f for f in store.metric_families()}
    samples = families["sfpl_store_dead_letter_rows"].samples
    assert [(s.labels, s.value) for s in samples] == [({"table": "events"}, 3)]


@pytest_twisted.inlineCallbacks
def test_dead_letters_are_replayed_once_fixed(server, make_store):
    """``deadletter replay`` on the server store: a fixed row goes in once, a bad one stays."""
    store = make_store([server.hostport])
    yield store.start()
    db = store.database
    server.client().execute(
        f"ALTER TABLE {db}.events ADD COLUMN xid_number Int64 MATERIALIZED toInt64(xid)"
    )
    rows = [event_row(i, xid=str(i)) for i in range(3)]
    rows[1]["xid"] = "abc"
    rows[2]["xid"] = "12x"
    assert (yield store.insert("events", rows)) == 1
    path = store.deadletters.path("events")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(entries) == 2
    for entry in entries:  # the operator fixes one row
        if entry["row"]["xid"] == "abc":
            entry["row"]["xid"] = "1"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))

    dry = yield replay(store, "events", dry_run=True)
    assert (dry["rows"], dry["already_stored"], dry["to_insert"]) == (2, 0, 2)
    result = yield replay(store, "events")
    assert (result["replayed"], result["still_refused"]) == (1, 1)
    again = yield replay(store, "events")
    assert again["replayed"] == 0
    stored = sorted(str(e) for (e,) in server.client().execute(f"SELECT eid FROM {db}.events"))
    assert stored == sorted([rows[0]["eid"], rows[1]["eid"]])
    kept = [json.loads(line)["row"]["xid"] for line in path.read_text().splitlines()]
    assert kept == ["12x"]


@pytest_twisted.inlineCallbacks
def test_connection_failures_are_retried_not_dead_lettered(make_store):
    with ClickHouseServer() as ch:
        store = make_store([ch.hostport], timeout=1)
        yield store.start()
        yield threads.deferToThread(ch.stop)
        with pytest.raises(StoreError, match="ClickHouse 127.0.0.1"):
            yield store.insert("events", [event_row(1)])
        assert store.deadletters.read("events") == []
        yield threads.deferToThread(ch.start)
        assert (yield store.insert("events", [event_row(2)])) == 1  # reconnects by itself


@pytest_twisted.inlineCallbacks
def test_store_starts_while_the_server_is_down_and_loads_the_schema_later(make_store):
    with ClickHouseServer() as ch:
        yield threads.deferToThread(ch.stop)
        store = make_store([ch.hostport], timeout=1)
        yield store.start()  # not Critical: starts anyway
        with pytest.raises(StoreError):
            yield store.insert("events", [event_row(1)])
        yield threads.deferToThread(ch.start)
        assert (yield store.insert("events", [event_row(2)])) == 1
        critical = make_store([ch.hostport], critical=True)
        yield threads.deferToThread(ch.stop)
        with pytest.raises(StoreError):
            yield critical.start()


@pytest_twisted.inlineCallbacks
def test_reactor_is_never_blocked_by_a_slow_insert_or_query(server, make_store):
    store = make_store([server.hostport])
    yield store.start()
    db = store.database
    # every insert into events waits 1.5 s in the server (a view that sleeps per block)
    c = server.client()
    c.execute(f"CREATE TABLE {db}.slow (x UInt8) ENGINE = Memory")
    c.execute(
        f"CREATE MATERIALIZED VIEW {db}.slow_mv TO {db}.slow AS "
        f"SELECT toUInt8(sleep(1.5)) AS x FROM {db}.events"
    )
    interval = 0.02
    lateness: list[float] = []
    expected = [reactor.seconds() + interval]

    def tick():
        now = reactor.seconds()
        lateness.append(now - expected[0])
        expected[0] = now + interval

    probe = task.LoopingCall(tick)
    probe.start(interval, now=False)
    try:
        began = time.monotonic()
        yield store.insert("events", [event_row(i) for i in range(1000)])
        insert_seconds = time.monotonic() - began
        began = time.monotonic()
        yield store.query("SELECT sleep(1.5)", "TabSeparated")
        query_seconds = time.monotonic() - began
    finally:
        probe.stop()
    assert insert_seconds >= 1.4 and query_seconds >= 1.4  # the probe ran across both
    assert len(lateness) > 40
    # had either call run on the reactor thread, one tick would be >= 1.4 s late
    assert max(lateness) < 0.7, sorted(lateness)[-5:]


@pytest_twisted.inlineCallbacks
def test_the_shipped_schema_is_refused_by_a_server_too_old_for_it(server, tmp_path):
    store = ClickHouseStore(reactor, [server.hostport], tmp_path / "data")  # packaged schema
    try:
        with pytest.raises(StoreError) as info:
            yield store.start()
        message = str(info.value)
        assert f"ClickHouse 18.16.1 at {server.hostport} is too old for the schema" in message
        assert "needs ClickHouse 25.3 or newer" in message
        # nothing was created on the old server
        assert server.client().execute(
            "SELECT count() FROM system.databases WHERE name = 'sfpla'"
        ) == [(0,)]
    finally:
        yield store.stop()


QUERY = (
    "SELECT 'a\\tb\\nc\\\\d''e\"f/g' AS s, toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS u, "
    "toDate('2024-05-01') AS d, toDateTime('2024-05-01 12:00:01') AS dt, toInt64(-5) AS i64, "
    "toUInt64(18446744073709551615) AS u64, toUInt8(3) AS u8, 1.5 AS f, toFloat64(1) AS f1, "
    "1e-7 AS fe, 1e21 AS fb, 123456789012345678.0 AS fbig, toFloat32(0.1) AS f32, nan AS fn, "
    "['x', 'y\\'z'] AS arr, [1, 2] AS ai, CAST(NULL AS Nullable(String)) AS n, "
    "toDecimal64(1.25, 2) AS dec, [toDate('2024-01-01')] AS ad, 'é' AS uni, number "
    "FROM system.numbers LIMIT 3"
)


@pytest.mark.parametrize(
    "fmt",
    [
        "JSONEachRow",
        "TabSeparated",
        "TabSeparatedWithNames",
        "TSVWithNamesAndTypes",
        "CSV",
        "CSVWithNames",
        "JSON",
    ],
)
@pytest_twisted.inlineCallbacks
def test_query_results_are_formatted_as_the_server_formats_them(server, make_store, fmt):
    store = make_store([server.hostport])
    yield store.start()
    ours = yield store.query(QUERY, fmt)
    url = server.http_url + "?" + urllib.parse.urlencode({"query": f"{QUERY} FORMAT {fmt}"})
    theirs = yield threads.deferToThread(lambda: urllib.request.urlopen(url, timeout=10).read())
    if fmt == "JSON":  # statistics hold timings
        ours, theirs = json.loads(ours), json.loads(theirs)
        ours.pop("statistics"), theirs.pop("statistics")
    assert ours == theirs


@pytest_twisted.inlineCallbacks
def test_query_is_read_only_and_reports_server_errors(server, make_store):
    store = make_store([server.hostport])
    yield store.start()
    with pytest.raises(StoreError) as info:
        yield store.query(f"CREATE TABLE {store.database}.x (a UInt8) ENGINE = Memory")
    assert info.value.code == 164  # READONLY
    with pytest.raises(StoreError) as info:
        yield store.query(f"SELECT * FROM {store.database}.nope")
    assert info.value.code == 60
    with pytest.raises(StoreError) as info:
        yield store.query("SELECT 1", "Pretty")
    assert info.value.code == 73
    assert (
        yield store.query("SELECT count() FROM events", "TSV", database=store.database)
    ) == b"0\n"
    assert (yield store.ping()) == b"1\n"


@pytest_twisted.inlineCallbacks
def test_tls_with_the_configured_ca(make_store, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, cert, key = _make_test_pki(pki)  # a CA and a certificate for 127.0.0.1
    port = free_port()
    extra = (
        f"<tcp_port_secure>{port}</tcp_port_secure><openSSL><server>"
        f"<certificateFile>{cert}</certificateFile><privateKeyFile>{key}</privateKeyFile>"
        "<verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>"
        "</server></openSSL>"
    )
    with ClickHouseServer(extra_config=extra) as ch:
        store = make_store([f"127.0.0.1:{port}"], secure=True, ca_cert=str(ca))
        yield store.start()
        assert (yield store.insert("events", [event_row(i) for i in range(10)])) == 10
        assert ch.client().execute(f"SELECT count() FROM {store.database}.events") == [(10,)]
        # the server's certificate is verified: without our CA it is refused
        unverified = make_store([f"127.0.0.1:{port}"], secure=True, critical=True)
        with pytest.raises(StoreError, match="CERTIFICATE_VERIFY_FAILED"):
            yield unverified.start()


@pytest_twisted.inlineCallbacks
def test_a_table_altered_under_the_store_is_retried_not_dead_lettered(server, make_store):
    store = make_store([server.hostport])
    yield store.start()
    server.client().execute(f"ALTER TABLE {store.database}.events MODIFY COLUMN app UInt64")
    rows = [event_row(i, app="web") for i in range(20)]
    with pytest.raises(StoreError, match="columns of .*events changed"):
        yield store.insert(
            "events", rows
        )  # converted for String, sent to UInt64: not the rows' fault
    assert store.deadletters.read("events") == []
    # the retry converts for the table as it is now: these rows really do not fit any more
    assert (yield store.insert("events", rows, dedup=True)) == 0
    reasons = {d["reason"] for d in store.deadletters.read("events")}
    assert reasons == {'not sent: column app (UInt64): expected an integer, got str "web"'}
