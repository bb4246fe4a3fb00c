"""Input bounds at the door (issue 12, repro 4): answers and rows in memory; hostile bodies whose
rows must go into chDB, WebSocket frames and short links through a real gateway.

Hostile JSON on every ingestion route (POST /tr/, /str/, /ltv/, /ppi/agree, GET query and path,
WebSocket text and LZ4 frames) is answered with a 4xx and a reason, or the offending event is
refused alone (``X-Rejected-Events``) while the good events of the same batch are stored, and
never with a 500, a crash of the connection, or a row the store chokes on.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import lz4.block
import pytest
import websockets

from sfpltracker.testing import MemoryGateway
from tests.gateway_process import GatewayProcess
from tests.test_shortlinks import create_account

JSON = {"Content-Type": "application/json"}
LONG_INT = "7" * 4301  # over Python's 4,300-digit int conversion limit
ROUTES = ("/tr/v1/tr/", "/tr/v1/str/", "/tr/v1/ltv/", "/tr/v1/ppi/agree")


def nested(levels: int, leaf=1, kind: str = "list"):
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


LONG = "<long int>"


def long_ints(obj) -> bytes:
    """``obj`` as JSON with every ``LONG`` value replaced by the 4,301-digit integer."""
    return json.dumps(obj).replace(f'"{LONG}"', LONG_INT).encode()


def vid() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """A real process: hostile bodies whose rows must go into chDB, WebSockets, short links."""
    with GatewayProcess(tmp_path_factory.mktemp("bounds")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def mem(tmp_path_factory):
    """In memory: the answers and the rows the gateway makes of bounded input."""
    with MemoryGateway(tmp_path_factory.mktemp("bounds_memory")) as gateway:
        yield gateway


def post(gw, path: str, body: bytes, headers=JSON):
    return gw.http("POST", path, body=body, headers=headers)


def assert_refused(r, reason: str):
    assert r.status == 400, r
    assert reason in r.json()["error"], r


def events_of(gw, v: str, n: int) -> list[dict]:
    """``ename`` and ``params`` (as JSON text) of visitor ``v``'s events, by ``ename``."""
    if isinstance(gw, MemoryGateway):
        rows = [r for r in gw.rows("events") if r["vid"] == v]
        assert len(rows) >= n, rows
        return sorted(({"ename": r["ename"], "p": r.get("params", "{}")} for r in rows),
                      key=lambda r: r["ename"])  # fmt: skip
    return gw.wait_for(
        f"SELECT ename, toJSONString(params) AS p FROM sfpla.events FINAL "
        f"WHERE vid = '{v}' ORDER BY ename",
        lambda rows: len(rows) >= n,
    )


def test_deep_params_refuse_that_event_alone_and_the_batch_is_stored(mem):
    gw = mem
    v = vid()
    batch = [
        {"ename": "good_1", "vid": v},
        {"ename": "deep_list", "vid": v, "p": nested(482)},
        {"ename": "deep_object", "vid": v, "params": nested(500, kind="object")},
        {"ename": "at_the_limit", "vid": v, "p": nested(14)},  # event 1 + p 15 levels = 16
        {"ename": "good_2", "vid": v},
    ]
    r = post(gw, "/tr/v1/tr/", json.dumps(batch).encode())
    assert r.status == 200 and r.header("x-rejected-events") == "2", r
    r = post(gw, "/tr/v1/str/", json.dumps(batch).encode())
    assert r.status == 200 and r.header("x-rejected-events") == "2", r
    eids = r.json()
    assert eids[1] is None and eids[2] is None and None not in (eids[0], eids[3], eids[4])
    rows = events_of(gw, v, 6)
    assert [row["ename"] for row in rows] == ["at_the_limit"] * 2 + ["good_1"] * 2 + ["good_2"] * 2
    assert json.loads(rows[0]["p"]) == {"p": nested(14)}
    # A single too-deep event: 400 with the reason, on every route.
    for path in ROUTES:
        body = {"ename": "deep", "cflags": 1, "vid": v, "amt": 1, "p": nested(482)}
        assert_refused(post(gw, path, json.dumps(body).encode()), "MaxJSONDepth")


def test_integer_over_4300_digits_is_kept_as_text_on_every_route(mem):
    gw = mem
    v = vid()
    fields = {"ename": "long_int", "vid": v, "cflags": 1, "amt": 5}
    body = long_ints({**fields, "n": LONG, "duration": LONG, "lat": LONG, "starts": LONG})
    for path in ROUTES:
        r = post(gw, path, body)
        assert r.status == 200, (path, r)
    rows = events_of(gw, v, 2)
    assert [json.loads(row["p"])["n"] for row in rows] == [LONG_INT, LONG_INT]
    [payment] = [r for r in gw.rows("payments") if r["vid"] == v]
    assert payment["revenue"] == 5
    [agreed] = [r for r in gw.rows("agreed") if r["vid"] == v]
    assert agreed["cflags"] == 1


def test_an_integer_past_a_floats_range_in_a_text_column_is_kept_as_text(mem):
    # Found by the fuzzer (SFPL_FUZZ_SCALE=10): a 500 (OverflowError) for "app": 1e400 as an
    # integer; "app" is a text column, the integer becomes its digits.
    gw = mem
    v = vid()
    big = 10**400
    for path in ("/tr/v1/tr/", "/tr/v1/str/"):
        r = post(gw, path, json.dumps({"ename": "big_app", "vid": v, "app": big}).encode())
        assert r.status == 200, (path, r)
    apps = [r["app"] for r in gw.rows("events") if r["vid"] == v]
    assert apps == [str(big), str(big)]


def test_long_digits_in_get_query_and_path_values(mem):
    gw = mem
    v = vid()
    r = gw.http("GET", f"/tr/v1/tr/?ename=get_query&vid={v}&n={'1' * 4400}&duration={'2' * 4400}")
    assert r.status == 200, r
    r = gw.http("GET", f"/tr/v1/tr/ename/get_path/vid/{v}/n/{'3' * 4400}")
    assert r.status == 200, r
    r = gw.http("GET", f"/tr/v1/img/?ename=get_img&vid={v}&lat={'4' * 4400}")
    assert r.status == 200, r
    rows = events_of(gw, v, 3)
    assert {row["ename"]: json.loads(row["p"]).get("n") for row in rows} == {
        "get_img": None,
        "get_path": "3" * 4400,
        "get_query": "1" * 4400,
    }


def test_params_beyond_key_and_size_limits(mem):
    gw = mem
    v = vid()
    many = {f"k{i}": i for i in range(300)}  # MaxParamsKeys 256
    wide_nested = {"a": [{f"k{i}": i for i in range(20)} for _ in range(20)]}  # 421 keys
    big = {"blob": "x" * 70000}  # MaxParamsBytes 65536
    batch = [
        {"ename": "ok", "vid": v, "params": {f"k{i}": i for i in range(256)}},
        {"ename": "many", "vid": v, "params": many},
        {"ename": "wide", "vid": v, "params": wide_nested},
        {"ename": "big", "vid": v, **big},
    ]
    r = post(gw, "/tr/v1/tr/", json.dumps(batch).encode())
    assert r.status == 200 and r.header("x-rejected-events") == "3", r
    assert [row["ename"] for row in events_of(gw, v, 1)] == ["ok"]
    assert_refused(post(gw, "/tr/v1/tr/", json.dumps(batch[1]).encode()), "MaxParamsKeys")
    assert_refused(post(gw, "/tr/v1/tr/", json.dumps(batch[3]).encode()), "MaxParamsBytes")
    # GET: keys of the query string are params too.
    query = "&".join(f"q{i}=1" for i in range(300))
    assert_refused(gw.http("GET", f"/tr/v1/tr/?ename=q&{query}"), "MaxParamsKeys")


def test_json_text_inside_a_field_is_bounded(mem):
    gw = mem
    v = vid()
    deep_text = json.dumps({"a": nested(900)})
    body = {"ename": "text_params", "vid": v, "params": deep_text, "targets": deep_text}
    assert post(gw, "/tr/v1/tr/", json.dumps(body).encode()).status == 200
    surrogate = {"ename": "text_surrogate", "vid": v, "params": '{"a": "\\udc00"}'}
    assert post(gw, "/tr/v1/tr/", json.dumps(surrogate).encode()).status == 200
    r = gw.http(
        "GET",
        f"/tr/v1/tr/?ename=get_text_params&vid={v}&params="
        + "%7B%22a%22:" * 400
        + "1"
        + "%7D" * 400,
    )
    assert r.status == 200, r
    rows = events_of(gw, v, 3)
    assert [(row["ename"], json.loads(row["p"])) for row in rows] == [
        ("get_text_params", {}),
        ("text_params", {}),
        ("text_surrogate", {}),
    ]


def test_no_500_for_hostile_bodies(gw):
    v = vid()
    cases = [
        b'{"ename": "nan", "vid": "%s", "cflags": 1, "amt": NaN, "lat": Infinity, "p": -Infinity}',
        b'{"ename": "huge_float", "vid": "%s", "cflags": 1, "amt": 1e999, "lat": -1e999, '
        b'"p": 1e999, "starts": 1e999, "paid_at": 1e308, "duration": 1e999}',
        b'{"ename": "ints", "vid": "%s", "cflags": 1, "p": 18446744073709551616, '
        b'"q": -9223372036854775809, "w": 99999999999999999999999}',
        b'[1, "a", null, [], {"ename": "array_items", "vid": "%s", "cflags": 1}]',
        b'{"ename": "x\\ud800", "vid": "%s", "cflags": 1}',
        b'{"ename": "\xed\xa0\x80", "vid": "%s", "cflags": 1}',  # an encoded surrogate
        b'{"ename": "latin1 \xe9", "vid": "%s", "cflags": 1}',
        b'\xef\xbb\xbf{"ename": "bom", "vid": "%s", "cflags": 1}',
        b"",
        b"   ",
        b"null",
        b'"%s"',
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ]
    for path in ROUTES:
        for body in cases:
            body = body.replace(b"%s", v.encode())
            for headers in (JSON, {"Content-Type": "text/plain"}, {}):
                r = post(gw, path, body, headers)
                assert r.status < 500, (path, body[:80], r)
                if r.status >= 400:
                    assert r.json()["error"], (path, body[:80], r)
    rows = gw.wait_for(
        f"SELECT ename FROM sfpla.events FINAL WHERE vid = '{v}'",
        lambda rows: (
            {"nan", "huge_float", "ints", "array_items", "bom"} <= {r["ename"] for r in rows}
        ),
    )
    assert "latin1 \xe9" not in {r["ename"] for r in rows}
    assert gw.http("GET", "/health").json()["status"] == "ok"
    assert "Traceback" not in gw.log_text()


def test_rpi_bodies_with_long_integers_and_infinities(gw):
    account = create_account(gw, "bounds")
    auth = {**JSON, "Authorization": f"Bearer {account['uid']}.{account['secret']}"}
    for body in (
        b'{"urlto": "https://localhost/x", "status": ' + LONG_INT.encode() + b"}",
        b'{"urlto": "https://localhost/x", "status": 1e999, "expires": 1e999}',
        b'{"urlto": "https://localhost/x", "expires": NaN}',
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ):
        r = post(gw, "/tr/v1/rpi/redirect", body, auth)
        assert r.status == 400 and r.json()["error"], r
    assert "Traceback" not in gw.log_text()


def test_websocket_messages_beyond_the_bounds_get_an_error_reply(gw):
    v = vid()
    good = str(uuid.uuid4())

    async def scenario():
        url = f"ws://127.0.0.1:{gw.port}/tr/v1/ws?ack=1"
        async with websockets.connect(url, open_timeout=20) as ws:
            replies = []
            for message in (
                json.dumps({"ename": "deep", "vid": v, "p": nested(482)}),
                lz4.block.compress(json.dumps({"ename": "deep", "p": nested(600)}).encode()),
                json.dumps({"ename": "many", "params": {f"k{i}": 1 for i in range(300)}}),
                long_ints({"ename": "ws_long_int", "vid": v, "n": LONG}).decode(),
                json.dumps([{"ename": "ws_good", "eid": good, "vid": v}, {"p": nested(40)}]),
            ):
                await ws.send(message)
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            return replies

    replies = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "MaxJSONDepth" in replies[0]["error"] and "ok" not in replies[0]
    assert "MaxJSONDepth" in replies[1]["error"] and "ok" not in replies[1]
    assert "MaxParamsKeys" in replies[2]["error"]
    assert len(replies[3]["ok"]) == 1 and "error" not in replies[3]
    assert replies[4]["ok"] == [good] and "event 1: nested deeper" in replies[4]["error"]
    rows = events_of(gw, v, 2)
    assert [row["ename"] for row in rows] == ["ws_good", "ws_long_int"]
    assert json.loads(rows[1]["p"]) == {"n": LONG_INT}


def test_redirects_beyond_the_bounds_still_redirect_untracked(gw):
    account = create_account(gw, "bounds_links")
    auth = {**JSON, "Authorization": f"Bearer {account['uid']}.{account['secret']}"}
    link = {"urlfrom": "bounds.test/go", "urlto": "https://shop.example/landing"}
    assert post(gw, "/tr/v1/rpi/redirect", json.dumps(link).encode(), auth).status == 200
    query = "&".join(f"q{i}=1" for i in range(300)) + "&n=" + "5" * 4400
    r = gw.http("GET", f"/go?{query}", headers={"Host": "bounds.test"})
    assert (r.status, r.header("location")) == (302, "https://shop.example/landing"), r
    r = gw.http("GET", f"/tr/v1/rdr/?url=%2Flanding&{query}")
    assert (r.status, r.header("location")) == (302, "/landing"), r
    assert "Traceback" not in gw.log_text()
