"""The messaging tables through a real gateway process: a tracking event with a valid ``tid``
writes one row to each of mthreads, mstore and mtriage (API.md section 6, docs/messaging.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlencode

import pytest
import websockets

from tests.gateway_process import GatewayProcess

QUICK = {"Strategy": "hybrid", "MaxBatchSize": 100, "MaxBatchTime": "100ms"}
CONFIG = {"Batching": {t: QUICK for t in ("events", "mthreads", "mstore", "mtriage")}}
MESSAGING = ("mthreads", "mstore", "mtriage")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("messaging"), CONFIG) as gateway:
        yield gateway


def new_id() -> str:
    return str(uuid.uuid4())


def rows_of(gw, table: str, tid: str, columns: str, n: int = 1) -> list[dict]:
    """The ``FINAL`` rows of ``table`` for ``tid`` once there are ``n``."""
    return gw.wait_for(
        f"SELECT {columns} FROM sfpla.{table} FINAL WHERE tid = '{tid}'",
        lambda rows: len(rows) >= n,
    )


def count(gw, table: str, where: str) -> int:
    return int(gw.query(f"SELECT count() AS n FROM sfpla.{table} FINAL WHERE {where}")[0]["n"])


def wait_events(gw, where: str, n: int) -> None:
    gw.wait_for(f"SELECT eid FROM sfpla.events FINAL WHERE {where}", lambda rows: len(rows) >= n)


COMMON = "toString(tid) AS tid, toString(vid) AS vid, toString(uid) AS uid, toString(oid) AS oid"
MESSAGE = (
    f"{COMMON}, toString(mid) AS mid, subject, msg, urgency, sys, mtypes, "
    "arrayMap(u -> toString(u), users) AS users, toString(repl) AS repl, "
    "toUnixTimestamp64Milli(scheduled) AS scheduled, scheduled_local_hour"
)


def test_a_tid_event_by_post_and_by_str_writes_one_row_per_table(gw):
    for route in ("/tr/v1/tr/", "/tr/v1/str/"):
        tid, vid, uid, oid, eid, user = (new_id() for _ in range(6))
        event = {
            "eid": eid,
            "tid": tid,
            "vid": vid,
            "uid": uid,
            "oid": oid,
            "ename": "message_sent",
            "subject": "Your order",
            "msg": "It shipped",
            "urgency": 3,
            "sys": True,
            "users": [user],
            "mtypes": ["email", "push"],
            "repl": {"name": "Ada"},
            "scheduled": "2026-11-18T10:00:00Z",
            "alias": "order:42",
            "cats": ["orders"],
        }
        r = gw.http("POST", route, json_body=event)
        assert r.status == 200, r
        if route == "/tr/v1/str/":
            assert r.json() == eid
        thread = rows_of(gw, "mthreads", tid, f"{COMMON}, ename, alias, cats, urgency, sys")
        assert thread == [
            {
                "tid": tid,
                "vid": vid,
                "uid": uid,
                "oid": oid,
                "ename": "message_sent",
                "alias": "order:42",
                "cats": ["orders"],
                "urgency": 3,
                "sys": True,
            }
        ]
        for table in ("mstore", "mtriage"):
            rows = rows_of(gw, table, tid, MESSAGE)
            assert rows == [
                {
                    "tid": tid,
                    "vid": vid,
                    "uid": uid,
                    "oid": oid,
                    "mid": eid,  # no mid sent: the event's eid
                    "subject": "Your order",
                    "msg": "It shipped",
                    "urgency": 3,
                    "sys": True,
                    "mtypes": ["email", "push"],
                    "users": [user],
                    "repl": '{"name":"Ada"}',
                    "scheduled": 1_794_996_000_000,
                    "scheduled_local_hour": -1,
                }
            ], table
        wait_events(gw, f"eid = '{eid}'", 1)
        assert count(gw, "events", f"tid = '{tid}'") == 1


def test_a_tid_event_by_get_pixel_with_text_values(gw):
    # GET and path values are text: numbers, booleans and JSON arrays are typed from it
    tid, user = new_id(), new_id()
    query = urlencode({"urgency": "2", "sys": "true", "users": json.dumps([user])})
    r = gw.http("GET", f"/tr/v1/img/tid/{tid}/subject/Hi?{query}")
    assert r.status == 200 and r.header("content-type") == "image/gif"
    rows = rows_of(
        gw, "mstore", tid, "subject, urgency, sys, arrayMap(u -> toString(u), users) AS u"
    )
    assert rows == [{"subject": "Hi", "urgency": 2, "sys": True, "u": [user]}]


def accepted(gw) -> int:
    return gw.http("GET", "/metrics").json()["metrics"]["event_count"]


def test_a_tid_event_over_a_websocket(gw):
    tid, eid = new_id(), new_id()
    before = accepted(gw)

    async def send():
        url = f"ws://127.0.0.1:{gw.port}/tr/v1/ws?ack=1"
        async with websockets.connect(url, open_timeout=20) as ws:
            await ws.send(json.dumps({"eid": eid, "tid": tid, "subject": "hi", "ename": "chat"}))
            return json.loads(await ws.recv())

    assert asyncio.run(asyncio.wait_for(send(), 60))["ok"] == [eid]
    assert accepted(gw) == before + 1  # events are counted, not the records they make
    for table in MESSAGING:
        assert rows_of(gw, table, tid, "toString(tid) AS tid") == [{"tid": tid}]
    assert rows_of(gw, "mstore", tid, "subject, toString(mid) AS mid") == [
        {"subject": "hi", "mid": eid}
    ]


def test_an_event_without_a_valid_tid_writes_no_messaging_row(gw):
    vid = new_id()
    for body in (
        {"vid": vid, "ename": "page_view", "subject": "not a message"},
        {"vid": vid, "ename": "page_view", "tid": "not-a-uuid", "subject": "not a message"},
    ):
        assert gw.http("POST", "/tr/v1/tr/", json_body=body).status == 200
    wait_events(gw, f"vid = '{vid}'", 2)
    # a tid event sent after them is stored: the batches that carried the others have landed
    tid = new_id()
    gw.http("POST", "/tr/v1/tr/", json_body={"vid": vid, "tid": tid, "subject": "marker"})
    for table in MESSAGING:
        rows_of(gw, table, tid, "tid")
        assert count(gw, table, f"vid = '{vid}'") == 1, table


def test_badly_typed_messaging_fields_are_dropped_alone(gw):
    tid, eid = new_id(), new_id()
    body = {
        "eid": eid,
        "tid": tid,
        "ename": "message_sent",
        "urgency": "high",
        "users": "x",
        "sys": "maybe",
        "scheduled": "next tuesday",
        "repl": [1, 2],
        "subject": "Kept",
        "mtypes": ["sms"],
    }
    r = gw.http("POST", "/tr/v1/str/", json_body=body)
    assert r.status == 200 and r.json() == eid
    columns = "subject, mtypes, urgency, users, sys, toUnixTimestamp64Milli(scheduled) AS s"
    store = rows_of(gw, "mstore", tid, columns)
    assert store == [
        {"subject": "Kept", "mtypes": ["sms"], "urgency": 0, "users": [], "sys": False, "s": 0}
    ]
    triage = rows_of(gw, "mtriage", tid, columns + ", keep")
    assert triage == [
        {
            "subject": "Kept",
            "mtypes": ["sms"],
            "urgency": 8,  # the original's triage default
            "users": [],
            "sys": False,
            "s": 0,
            "keep": True,
        }
    ]
    # events is its own batch: it may land after the messaging tables' batches.
    events = gw.wait_for(
        f"SELECT ename, toString(tid) AS tid FROM sfpla.events WHERE eid = '{eid}'", len
    )
    assert events == [{"ename": "message_sent", "tid": tid}]


def test_a_thread_is_one_row_the_latest_event_wins(gw):
    tid, oid = new_id(), new_id()
    for n, name in enumerate(("Draft", "Launch", "Final")):
        body = {"tid": tid, "oid": oid, "name": name, "urgency": n + 1, "ename": f"step{n}"}
        assert gw.http("POST", "/tr/v1/str/", json_body=body).status == 200
        wait_events(gw, f"tid = '{tid}'", n + 1)  # each event a later created_at
    rows = gw.wait_for(
        f"SELECT name, urgency, ename FROM sfpla.mthreads FINAL WHERE tid = '{tid}'",
        lambda rows: rows and rows[0]["name"] == "Final",
    )
    assert rows == [{"name": "Final", "urgency": 3, "ename": "step2"}]
    # each event is still its own message
    assert count(gw, "mstore", f"tid = '{tid}'") == 3
    assert count(gw, "events", f"tid = '{tid}'") == 3


def test_the_same_event_sent_twice_is_one_message(gw):
    tid, eid, mid = new_id(), new_id(), new_id()
    body = {"eid": eid, "tid": tid, "subject": "once"}
    for _ in range(2):
        assert gw.http("POST", "/tr/v1/str/", json_body=body).status == 200
    # the client's own mid is the key when it sends one
    for _ in range(2):
        body = {"eid": new_id(), "tid": tid, "mid": mid, "subject": "also once"}
        assert gw.http("POST", "/tr/v1/str/", json_body=body).status == 200
    wait_events(gw, f"tid = '{tid}'", 3)
    rows = rows_of(gw, "mstore", tid, "toString(mid) AS mid, subject", n=2)
    assert sorted((r["mid"], r["subject"]) for r in rows) == sorted(
        [(eid, "once"), (mid, "also once")]
    )
    assert count(gw, "mtriage", f"tid = '{tid}'") == 2
    assert count(gw, "mthreads", f"tid = '{tid}'") == 1


def test_spooled_messaging_rows_are_replayed_once_after_a_crash(tmp_path):
    # Messaging rows wait in the spool (a long batching delay); SIGKILL; the restarted gateway
    # replays them into the store once.
    slow = {"Strategy": "time", "MaxBatchSize": 10_000, "MaxBatchTime": "60s"}
    config = {"Batching": {"events": QUICK, **{t: slow for t in MESSAGING}}}
    gw = GatewayProcess(tmp_path, config)
    tid, eid = new_id(), new_id()
    with gw:
        body = {"eid": eid, "tid": tid, "subject": "survives", "users": [eid]}
        assert gw.http("POST", "/tr/v1/str/", json_body=body).status == 200
        wait_events(gw, f"eid = '{eid}'", 1)
        assert count(gw, "mstore", f"tid = '{tid}'") == 0  # still in the spool
        assert accepted(gw) == 1  # one event (four records)
        gw.kill()
        gw.config["Batching"] = CONFIG["Batching"]
        gw.start()
        for table in MESSAGING:
            rows_of(gw, table, tid, "tid")
        rows = rows_of(gw, "mstore", tid, "subject, toString(mid) AS mid")
        assert rows == [{"subject": "survives", "mid": eid}]
        for table in MESSAGING:  # not even before a merge: each row was inserted once
            rows = gw.query(f"SELECT count() AS n FROM sfpla.{table} WHERE tid = '{tid}'")
            assert int(rows[0]["n"]) == 1, table
