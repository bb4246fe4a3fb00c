"""static/track.js in WebSocket mode keeps one visitor across page loads, as in HTTP mode.

The client runs in Node (tests/js/ws_visitor_live.mjs) in a fake browser that keeps the
tracker's cookies as a browser does, also those of the WebSocket upgrade; the gateway is a real
process. Each visitor loads the page twice: events over the socket, then one over HTTP.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess
from tests.test_static_js import TRACK_JS, run_node
from tests.test_ws_visitor import cookieless_vid

JS = Path(__file__).resolve().parent / "js" / "ws_visitor_live.mjs"
PAGE_VID = "0190aaaa-bbbb-7ccc-8ddd-00000000d001"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with GatewayProcess(
        tmp_path_factory.mktemp("ws_visitor"), {"Batching": {"events": {"Strategy": "immediate"}}}
    ) as gw:
        out = run_node(str(JS), str(TRACK_JS), f"http://127.0.0.1:{gw.port}", timeout=120)
        yield gw, json.loads(out.strip().splitlines()[-1])


def stored_vids(gw, loads) -> list[str]:
    eids = [e for load in loads for e in load["eids"]]
    keys = ",".join(f"'{e}'" for e in eids)
    rows = gw.wait_for(
        f"SELECT eid, vid FROM sfpla.events FINAL WHERE eid IN ({keys})",
        lambda r: len(r) == len(eids),
    )
    by_eid = {r["eid"]: r["vid"] for r in rows}
    return [by_eid[e] for e in eids]


def over_the_socket(load) -> None:
    """The page's events went over the socket: the only HTTP request is the one after it."""
    assert load["open"] is True and load["sockets"] == 1
    assert [r["url"].rsplit("/tr/v1/", 1)[1] for r in load["requests"]] == ["tr/"], load


def test_first_time_visitor_keeps_one_vid_across_page_loads(run):
    gw, report = run
    first, second = report["first_time"]
    vid = first["vidCookie"]
    assert vid and uuid.UUID(vid)  # set by the 101 answer of the first upgrade
    assert any(c.startswith(f"vid={vid};") for c in first["upgradeCookies"][0])
    assert second["vidCookie"] == vid
    for load in (first, second):
        over_the_socket(load)
    assert set(stored_vids(gw, [first, second])) == {vid}


def test_gpc_visitor_gets_no_cookie_and_the_daily_hash(run):
    gw, report = run
    loads = report["gpc"]
    for load in loads:
        over_the_socket(load)
        assert load["vidCookie"] is None and load["upgradeCookies"] == [[]]
        assert all(r["cookie"] is None for r in load["requests"])
    assert set(stored_vids(gw, loads)) == {cookieless_vid(gw)}


def test_the_pages_own_vid_is_the_cookies_vid(run):
    gw, report = run
    loads = report["page_vid"]
    for load in loads:
        over_the_socket(load)
        assert load["vidCookie"] == PAGE_VID
    assert set(stored_vids(gw, loads)) == {PAGE_VID}


def test_opted_out_visitor_opens_no_socket_and_gets_no_cookie(run):
    gw, report = run
    loads = report["opted_out"]
    for load in loads:
        # a socket's upgrade would carry the tracker's cookies: opted out, only fetch(omit)
        assert load["sockets"] == 0 and load["vidCookie"] is None
        assert load["requests"] and all(r["cookie"] is None for r in load["requests"])
    # nothing links the two page loads (the gateway never knew this browser's vid)
    first, second = (set(stored_vids(gw, [load])) for load in loads)
    assert not first & second
