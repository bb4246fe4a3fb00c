"""A record the embedded store can never accept must not block the loader.

Real gateway processes on the embedded chDB store. A row chDB refuses for its data is set
aside in ``DataDirectory/deadletter/<table>.jsonl`` with chDB's reason, counted in
``sfpl_store_dead_letter_rows``, and every other row (of its batch and after it) is stored. A
store outage is not a data error: it is retried, nothing is dead-lettered. Input that chDB
would refuse is stopped at the web layer (400, or the clashing field dropped).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import pytest_twisted

from sfpltracker.ingest.fields import unique_json_paths
from sfpltracker.pipeline.spool import encode_frame, list_segments, segment_path
from sfpltracker.store.errors import StoreError
from sfpltracker.store.rejects import DataRejected, bisect
from tests.test_durability import (
    TRACK,
    assert_exactly_once,
    drained,
    events_table_dir,
    health,
    store_writes_blocked,
    wait_health,
)

# What the gateway before this change let through over HTTP and chDB refuses (docs/durability.md
# "A row the store can never accept"): a JSON escape of a lone UTF-16 surrogate, re-escaped
# into ``params``, and a dotted key naming the same JSON path as a nested one.
LONE_SURROGATE_PARAMS = '{"note":"\\ud800"}'
CLASHING_PATHS_PARAMS = '{"a.b":1,"a":{"b":2}}'


def dead_letters(gw, table: str = "events") -> list[dict]:
    path = Path(gw.config["DataDirectory"]) / "deadletter" / f"{table}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prometheus(gw) -> str:
    return gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()


def stored_eids(gw) -> set[str]:
    return {r["e"] for r in gw.query("SELECT toString(eid) AS e FROM sfpla.events")}


def event_row(eid: str, n: int, params: str = "{}") -> dict:
    """An ``events`` row as the gateway spools it."""
    return {
        "eid": eid,
        "vid": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "ename": f"old{n}",
        "url": f"https://old.test/{n}",
        "created_at": int(time.time() * 1000),
        "hhash": "h",
        "ip": "",
        "iphash": "",
        "bhash": "",
        "params": params,
        "server": 0,
        "bot": 0,
    }


def test_a_refused_row_is_dead_lettered_and_the_rest_is_stored(gateway_factory):
    # Everything waits in the spool (and the batcher) until the kill: on restart, the events
    # sent over HTTP and the old-version frame are replayed as one batch.
    slow = {"Batching": {"events": {"Strategy": "time", "MaxBatchTime": "10m"}}}
    gw = gateway_factory(slow)
    acked = []
    for n in range(20):
        eid = str(uuid.uuid4())
        r = gw.http(
            "POST", TRACK, json_body={"eid": eid, "ename": f"e{n}", "url": f"https://t/{n}"}
        )
        assert r.status == 200, r
        acked.append(eid)
    gw.kill()
    # A frame from an older gateway, which spooled what chDB refuses: two good rows around a
    # row whose params chDB cannot parse, and one whose paths clash.
    series = Path(gw.config["DataDirectory"]) / "spool" / "main"
    good = [str(uuid.uuid4()) for _ in range(2)]
    bad = [str(uuid.uuid4()) for _ in range(2)]
    records = [
        ["events", event_row(good[0], 0)],
        ["events", event_row(bad[0], 1, LONE_SURROGATE_PARAMS)],
        ["events", event_row(good[1], 2)],
        ["events", event_row(bad[1], 3, CLASHING_PATHS_PARAMS)],
    ]
    with open(segment_path(series, list_segments(series)[-1]), "ab") as f:
        f.write(encode_frame(records, int(time.time() * 1000)))

    gw.config.pop("Batching")
    gw.start()
    h = wait_health(gw, drained)
    assert h["spool"]["loaded_records"] == 24
    # every later event is stored too: the loader is not blocked
    for n in range(5):
        r = gw.http("POST", TRACK, json_body={"ename": "later", "url": f"https://t/later/{n}"})
        assert r.status == 200, r
    gw.wait_for(
        "SELECT count() AS n FROM sfpla.events WHERE ename = 'later'", lambda r: r[0]["n"] == 5
    )
    stored = stored_eids(gw)
    assert set(acked + good) <= stored
    assert not set(bad) & stored
    assert_exactly_once(gw, acked + good)  # no row twice, every derived table exact

    dead = {d["row"]["eid"]: d for d in dead_letters(gw)}
    assert set(dead) == set(bad)
    assert dead[bad[0]]["row"] == records[1][1]  # the row as spooled, ready to fix and replay
    assert dead[bad[0]]["code"] == 117
    assert "Cannot parse JSON object" in dead[bad[0]]["reason"]
    assert "Duplicate path found during parsing JSON object: a.b" in dead[bad[1]]["reason"]
    assert all(d["table"] == "events" and d["server"] == "embedded" for d in dead.values())
    assert 'sfpl_store_dead_letter_rows_total{table="events"} 2.0' in prometheus(gw)
    log = gw.log_text()
    assert log.count("chDB refused 2 row(s) of events for their data") == 1, gw.log_tail()
    assert "deadletter/events.jsonl" in log
    h = health(gw)
    assert h["status"] == "ok" and h["spool"]["records_pending"] == 0
    assert gw.http("GET", "/metrics").json()["batching"]["failed_batches"] == 0


def test_a_store_outage_is_retried_not_dead_lettered(gateway_factory):
    gw = gateway_factory()
    before = [str(uuid.uuid4()) for _ in range(5)]
    for eid in before:
        assert gw.http("POST", TRACK, json_body={"eid": eid, "ename": "before"}).status == 200
    gw.wait_for(
        "SELECT count() AS n FROM sfpla.events WHERE ename = 'before'", lambda r: r[0]["n"] == 5
    )
    during = [str(uuid.uuid4()) for _ in range(20)]
    with store_writes_blocked(events_table_dir(gw)):
        for eid in during:
            r = gw.http(
                "POST", TRACK, json_body={"eid": eid, "ename": "during", "url": "https://t/d"}
            )
            assert r.status == 200, r
        wait_health(gw, lambda h: h["status"] == "degraded")
        assert gw.http("GET", "/metrics").json()["batching"]["failed_attempts"] > 0
        assert dead_letters(gw) == []
    wait_health(gw, drained)
    assert_exactly_once(gw, before + during)
    assert dead_letters(gw) == []
    assert "sfpl_store_dead_letter_rows_total{" not in prometheus(gw)


def test_input_chdb_would_refuse_never_becomes_a_row(gateway):
    vid = str(uuid.uuid4())
    # A JSON escape of a lone surrogate is not text (RFC 8259 8.2): the body is refused.
    for body in (
        b'{"ename": "x", "vid": "%s", "note": "\\ud800"}',
        b'{"ename": "x", "vid": "%s", "url": "https://t/\\udc00"}',
        b'[{"ename": "ok", "vid": "%s"}, {"ename": "x", "params": {"k\\ud83d": 1}}]',
    ):
        r = gateway.http(
            "POST", TRACK, body=body % vid.encode(), headers={"Content-Type": "application/json"}
        )
        assert r.status == 400, r
        assert "surrogate" in r.json()["error"]
    # A surrogate *pair* is a character like any other.
    r = gateway.http(
        "POST",
        TRACK,
        body=b'{"ename": "pair", "vid": "%s", "note": "\\ud83d\\ude00"}' % vid.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 200, r
    # Keys naming the same JSON path ("a.b" and a -> b): the later one is dropped, the event
    # and its other fields are stored.
    r = gateway.http(
        "POST",
        TRACK,
        json_body={
            "ename": "paths",
            "vid": vid,
            "params": {"a.b": 1, "a": {"b": 2, "c": 3}, "x": [{"p.q": 1, "p": {"q": 2}}]},
            "targets": {"t.u": "one", "t": {"u": "two"}},
        },
    )
    assert r.status == 200, r
    rows = gateway.wait_for(
        f"SELECT ename, toJSONString(params) AS p, toJSONString(targets) AS t "
        f"FROM sfpla.events WHERE vid = '{vid}' ORDER BY ename",
        lambda rows: len(rows) == 2,
    )
    assert rows[0]["ename"] == "pair" and "\U0001f600" in rows[0]["p"]
    params = json.loads(rows[1]["p"])
    assert params["a"] == {"b": "1", "c": "3"} or params["a"] == {"b": 1, "c": 3}, params
    assert params["x"] == [{"p": {"q": 1}}] or params["x"] == [{"p": {"q": "1"}}], params
    assert json.loads(rows[1]["t"]) == {"t": {"u": "one"}}
    assert dead_letters(gateway) == []
    assert health(gateway)["status"] == "ok"


# -- the store itself (real chDB, no gateway) ------------------------------------------------


@pytest_twisted.inlineCallbacks
def view_counts(store) -> tuple[int, int, int]:
    out = yield store.execute(
        "SELECT (SELECT count() FROM sfpla.events), (SELECT sum(total) FROM sfpla.hits), "
        "(SELECT sum(events) FROM sfpla.visitors)"
    )
    return tuple(int(v) for v in out.decode().split())


@pytest_twisted.inlineCallbacks
def test_the_search_is_the_same_on_a_resend_so_views_stay_exact(store):
    rows = [event_row(str(uuid.uuid4()), n) for n in range(40)]
    rows[5]["params"] = LONE_SURROGATE_PARAMS
    rows[21]["duration"] = "not a number"  # Arrow refuses it before chDB sees it
    rows[33]["params"] = CLASHING_PATHS_PARAMS
    # "A crash in the middle of the search": the halves' source parts land, hits' do not.
    yield store.execute("DETACH TABLE sfpla.hits_mv")
    assert (yield store.insert("events", rows, token="sfpl-poison")) == 37
    yield store.execute("ATTACH TABLE sfpla.hits_mv")
    assert (yield view_counts(store)) == (37, 0, 37)
    # The batch sent again with its token (what the loader does after a crash) is searched
    # the same way: each half's token is the same, so only hits' missing parts are written.
    assert (yield store.insert("events", rows, token="sfpl-poison")) == 37
    assert (yield view_counts(store)) == (37, 37, 37)
    dead = store.deadletters.read("events")
    assert {d["row"]["eid"] for d in dead} == {rows[i]["eid"] for i in (5, 21, 33)}
    reasons = {d["row"]["eid"]: d["reason"] for d in dead}
    assert reasons[rows[21]["eid"]].startswith("not sent: ArrowInvalid")
    assert "Cannot parse JSON object" in reasons[rows[5]["eid"]]
    assert store.stats["dead_letters"]["events"] == 6  # both sends set them aside


@pytest_twisted.inlineCallbacks
def test_a_dropped_column_is_retried_with_the_table_as_it_is_now(store):
    # A column no materialized view reads (ClickHouse refuses to drop one a view reads).
    yield store.execute("ALTER TABLE sfpla.events DROP COLUMN term")
    row = dict(event_row(str(uuid.uuid4()), 1), term="x1")
    with pytest.raises(StoreError, match="No such column term"):
        yield store.insert("events", [row], token="sfpl-drop")
    assert (yield store.insert("events", [row], token="sfpl-drop")) == 1  # the batcher's retry
    assert store.deadletters.read("events") == []


def test_bisect_names_each_half_by_its_place():
    refused = {2, 5}
    tried, dead = [], []

    def insert(half, label):
        tried.append((label, half))
        if refused & set(half):
            raise DataRejected(f"refused {sorted(refused & set(half))}", 117)

    bisect(list(range(8)), DataRejected("first", 117), insert, dead)
    assert dead == [(2, "refused [2]", 117), (5, "refused [5]", 117)]
    assert tried == [
        ("0", [0, 1, 2, 3]),
        ("00", [0, 1]),
        ("01", [2, 3]),
        ("010", [2]),
        ("011", [3]),
        ("1", [4, 5, 6, 7]),
        ("10", [4, 5]),
        ("100", [4]),
        ("101", [5]),
        ("11", [6, 7]),
    ]


def test_unique_json_paths_keeps_the_first_value_of_each_path():
    assert unique_json_paths({"a": 1, "b": {"c": 2}}) == {"a": 1, "b": {"c": 2}}
    assert unique_json_paths({"a.b": 1, "a": {"b": 2, "c": 3}}) == {"a.b": 1, "a": {"c": 3}}
    assert unique_json_paths({"a": {"b": 2}, "a.b": 1}) == {"a": {"b": 2}}
    assert unique_json_paths({"x": [{"p.q": 1, "p": {"q": 2}}]}) == {"x": [{"p.q": 1, "p": {}}]}
    assert unique_json_paths({"a.b": None, "a": {"b": 2}}) == {"a.b": None, "a": {"b": 2}}


# What chDB 26.9 does with each value (docs/durability.md "What chDB 26.9 refuses"): "refused"
# means the row is dead-lettered with a reason containing the text given.
CHDB_FINDINGS = [
    ({"params": "not json"}, "Cannot parse JSON object"),
    ({"params": "[1,2]"}, "Cannot read JSON object"),
    ({"params": '{"a":NaN}'}, "Cannot parse JSON object"),
    ({"targets": '{"a":Infinity}'}, "Cannot parse JSON object"),
    ({"params": LONE_SURROGATE_PARAMS}, "Cannot parse JSON object"),
    ({"params": CLASHING_PATHS_PARAMS}, "Duplicate path"),
    ({"params": '{"a":[{"b.c":1,"b":{"c":2}}]}'}, "Duplicate path"),
    ({"params": '{"a":' * 1100 + "1" + "}" * 1100}, "Cannot parse JSON object"),
    ({"url": "\ud800"}, "UnicodeEncodeError"),
    ({"duration": "x"}, "ArrowInvalid"),
    ({"country": b"\xff"}, "ArrowInvalid"),
    ({"url": {"a": 1}}, "ArrowTypeError"),
    ({"duration": 2**64}, "OverflowError"),
    ({"uid": "not-a-uuid"}, None),  # stored as the zero UUID
    ({"ver": 2**40}, None),
    ({"created_at": -(10**15)}, None),
    ({"params": '{"a":123456789012345678901234567890}'}, None),
    ({"params": '{"a":1,"a.b":2}'}, None),
    ({"params": '{"a":' * 1000 + "1" + "}" * 1000}, None),
    ({"no_such_column": 1}, None),
]


@pytest_twisted.inlineCallbacks
def test_what_chdb_refuses(store):
    rows = [
        dict(event_row(str(uuid.uuid4()), n), **change)
        for n, (change, _) in enumerate(CHDB_FINDINGS)
    ]
    refused = {rows[n]["eid"]: why for n, (_, why) in enumerate(CHDB_FINDINGS) if why}
    stored = yield store.insert("events", rows, token="sfpl-findings")
    reasons = {d["row"]["eid"]: d["reason"] for d in store.deadletters.read("events")}
    assert set(reasons) == set(refused)
    for eid, why in refused.items():
        assert why in reasons[eid], (why, reasons[eid])
    assert stored == len(rows) - len(refused)
