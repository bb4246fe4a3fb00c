"""Tests for the browser client static/track.js, run in Node (v18+) via subprocess.

* tests/js/lz4_roundtrip.mjs compresses many inputs with track.js's LZ4 encoder; every frame
  must decompress with Python's ``lz4.block.decompress`` (the format the /ws route reads).
* tests/js/client_harness.mjs runs track.js in fake browsers (node:vm + shims) against the
  real HTTP server started here and reports; we check what the server received.

Node is required: when it is missing these tests fail (they are not skipped).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import lz4.block
import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACK_JS = ROOT / "static" / "track.js"
JS_DIR = Path(__file__).resolve().parent / "js"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def node() -> str:
    exe = shutil.which("node")
    if not exe:
        pytest.fail("node (v18+) is required for tests/test_static_js.py but is not on PATH")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(out.strip().lstrip("v").split(".")[0])
    if major < 18:
        pytest.fail(f"node v18+ is required (global fetch/Blob), found {out.strip()}")
    return exe


def run_node(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        [node(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TZ": "America/Los_Angeles"},
    )
    if proc.returncode != 0:
        pytest.fail(f"node {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


# --------------------------------------------------------------------------- LZ4


def read_records(data: bytes):
    off = 0

    def take() -> bytes:
        nonlocal off
        (n,) = struct.unpack_from("<I", data, off)
        off += 4
        v = data[off : off + n]
        off += n
        return v

    while off < len(data):
        yield take().decode(), take(), take()


@pytest.fixture(scope="module")
def lz4_cases(tmp_path_factory):
    out = tmp_path_factory.mktemp("lz4") / "frames.bin"
    summary = json.loads(run_node(str(JS_DIR / "lz4_roundtrip.mjs"), str(TRACK_JS), str(out)))
    cases = list(read_records(out.read_bytes()))
    assert len(cases) == summary["cases"] > 500
    return {name: (data, frame) for name, data, frame in cases}


def test_lz4_frames_decompress_with_python_lz4(lz4_cases):
    bad = []
    for name, (data, frame) in lz4_cases.items():
        assert struct.unpack_from("<I", frame)[0] == len(data), name
        try:
            if lz4.block.decompress(frame) != data:
                bad.append(name)
        except Exception as exc:  # noqa: BLE001 - report every failing case
            bad.append(f"{name}: {exc}")
    assert not bad, f"{len(bad)} frames do not round-trip: {bad[:10]}"


def test_lz4_empty_matches_python(lz4_cases):
    assert lz4_cases["empty"][1] == lz4.block.compress(b"")


def test_lz4_really_compresses(lz4_cases):
    ratio = {n: len(f) / max(1, len(d)) for n, (d, f) in lz4_cases.items()}
    assert ratio["a_x10000"] < 0.01
    assert ratio["abc_x5000"] < 0.01
    assert ratio["json_200k"] < 0.5
    assert 190_000 < len(lz4_cases["json_200k"][0]) < 400_000
    # a copy 65535 bytes back is usable, 65536 back is not (offsets are 16 bits)
    assert ratio["far_repeat_65535"] < ratio["far_repeat_65536"]
    # incompressible data grows by at most the LZ4 bound
    data, frame = lz4_cases["random_100k"]
    assert len(frame) <= 4 + len(data) + len(data) // 255 + 16


# --------------------------------------------------------------------------- client


class Recorder(BaseHTTPRequestHandler):
    requests: list[dict] = []
    lock = threading.Lock()
    failed_once: set[str] = set()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _cors(self):
        self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
        self.send_header("Access-Control-Allow-Credentials", "true")

    def do_OPTIONS(self):  # noqa: N802
        self.send_response(204)
        self._cors()
        self.send_header("Access-Control-Allow-Headers", "Content-Type")
        self.end_headers()

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        scenario = self.path.strip("/").split("/")[0]
        with self.lock:
            self.requests.append(
                {
                    "scenario": scenario,
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type", ""),
                    "body": body,
                }
            )
            fail = scenario == "s7" and scenario not in self.failed_once
            if fail:
                self.failed_once.add(scenario)
        if fail:
            self.send_response(503)
            self.send_header("Retry-After", "0")
        else:
            self.send_response(200)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def client_run():
    Recorder.requests = []
    Recorder.failed_once = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        stdout = run_node(str(JS_DIR / "client_harness.mjs"), str(TRACK_JS), base)
    finally:
        server.shutdown()
        server.server_close()
    report = json.loads(stdout.strip().splitlines()[-1])
    posts = defaultdict(list)
    for r in Recorder.requests:
        r["json"] = json.loads(r["body"])
        posts[r["scenario"]].append(r)
    return report, posts


def scenario(client_run, name):
    report, posts = client_run
    rep = report[name]
    assert "harnessError" not in rep, rep.get("harnessError")
    return rep, posts[name]


def events_of(posts):
    out = []
    for p in posts:
        assert isinstance(p["json"], list), "client must POST a JSON array"
        out.extend(p["json"])
    return out


def test_page_view_fields(client_run):
    rep, posts = scenario(client_run, "s1")
    first = posts[0]
    assert first["path"] == "/s1/tr/v1/tr/"
    assert first["content_type"].lower().startswith("text/plain")  # simple CORS request
    (pv,) = first["json"]
    assert pv["ename"] == "page_view" and pv["etyp"] == "view"
    assert pv["url"].startswith("https://shop.example.com/products/42?utm_source=")
    assert pv["last"] == "https://www.google.com/"
    assert pv["first"] == "true"
    assert UUID_RE.match(pv["sid"]) and UUID_RE.match(pv["eid"])
    assert pv["tz"] == "America/Los_Angeles"
    assert pv["device"] == "Mobile" and pv["os"] == "iOS"
    assert pv["w"] == 390 and pv["h"] == 844
    assert pv["app"] == "shop" and pv["rel"] == "2024.05" and pv["ptyp"] == "product"
    # utm_ stripped, values as sent; other query params are not copied
    assert pv["source"] == "Newsletter" and pv["medium"] == "email"
    assert pv["campaign"] == "spring_sale" and pv["content"] == "Banner A"
    assert "ref" not in pv and "utm_source" not in pv
    assert "vid" not in pv and "uid" not in pv  # no vid of its own; uid only after identify
    assert rep["fetches"][0]["credentials"] == "include"


def test_custom_event_identify_and_spa_page_view(client_run):
    rep, posts = scenario(client_run, "s1")
    evs = events_of(posts)
    assert [e["ename"] for e in evs] == ["page_view", "add_to_cart", "page_view"]
    pv, cart, pv2 = evs
    assert cart["eid"] == rep["customEid"]
    assert cart["sku"] == "A1" and cart["qty"] == 2
    assert cart["uid"] == "0190aaaa-0000-7000-8000-000000000001"
    assert "first" not in cart and "etyp" not in cart
    assert cart["sid"] == pv["sid"] == pv2["sid"]
    assert len({pv["eid"], cart["eid"], pv2["eid"]}) == 3
    assert pv2["url"] == "https://shop.example.com/products/43"
    assert pv2["last"] == pv["url"]  # SPA navigation: previous page becomes `last`
    assert "source" not in pv2
    assert rep["storage"]["sfpl_sid"].startswith(pv["sid"] + "|")


def test_batching_25_events_in_two_posts(client_run):
    rep, posts = scenario(client_run, "s2")
    assert rep["postsImmediately"] == 1  # the 20th event flushes at once
    assert [len(p["json"]) for p in posts] == [20, 5]
    evs = events_of(posts)
    assert [e["ename"] for e in evs] == [f"e{i}" for i in range(25)]
    assert len({e["eid"] for e in evs}) == 25


def test_pagehide_uses_send_beacon(client_run):
    rep, posts = scenario(client_run, "s3")
    assert len(rep["beacons"]) == 1 and rep["fetches"] == 0 and rep["queued"] == 0
    beacon = rep["beacons"][0]
    assert beacon["url"].endswith("/s3/tr/v1/tr/")
    assert beacon["type"].lower() == "text/plain;charset=utf-8"
    assert [e["ename"] for e in events_of(posts)] == ["leave0", "leave1", "leave2"]
    assert posts[0]["content_type"].lower() == "text/plain;charset=utf-8"


def test_visibility_hidden_uses_send_beacon(client_run):
    rep, posts = scenario(client_run, "s3b")
    assert len(rep["beacons"]) == 1 and rep["fetches"] == 0
    assert [e["ename"] for e in events_of(posts)] == ["hidden0"]


def test_refused_beacon_falls_back_to_keepalive_fetch(client_run):
    rep, posts = scenario(client_run, "s3c")
    assert len(rep["fetches"]) == 1
    assert rep["fetches"][0]["keepalive"] is True
    assert rep["fetches"][0]["credentials"] == "include"
    assert [e["ename"] for e in events_of(posts)] == ["refused0"]


def test_global_privacy_control_sends_no_vid(client_run):
    rep, posts = scenario(client_run, "s4")
    (pv,) = events_of(posts)
    assert pv["ename"] == "page_view" and "vid" not in pv
    assert UUID_RE.match(pv["sid"])
    assert rep["storage"] == {} and rep["optedOut"] is True


def test_page_vid_sent_without_gpc(client_run):
    rep, posts = scenario(client_run, "s4b")
    (pv,) = events_of(posts)
    assert pv["vid"] == "0190aaaa-bbbb-7ccc-8ddd-000000000041"
    assert "sfpl_sid" in rep["storage"] and rep["optedOut"] is False


def test_opt_out(client_run):
    rep, posts = scenario(client_run, "s4c")
    evs = events_of(posts)
    assert [e["ename"] for e in evs] == ["page_view", "bye"]
    assert all("vid" not in e for e in evs)
    assert rep["beacons"] == 0  # sendBeacon would carry cookies
    assert {f["credentials"] for f in rep["fetches"]} == {"omit"}
    assert rep["optedOut"] is True and rep["persisted"] == {"sfpl_optout": "1"}


def test_ws_unavailable_falls_back_to_http(client_run):
    rep, posts = scenario(client_run, "s5")
    assert rep["wsUrls"][0].endswith("/s5/tr/v1/ws?ack=1")
    assert rep["wsUrls"][0].startswith("ws://127.0.0.1:")
    assert rep["frames"] == [0]
    assert sorted(e["ename"] for e in events_of(posts)) == ["page_view", "ws_down_1", "ws_down_2"]


def test_ws_lz4_frames_and_unacked_events_resent(client_run):
    rep, posts = scenario(client_run, "s6")
    assert rep["connected"] is True and rep["binary"] is True
    assert rep["httpBeforeDrop"] == 0  # all five went over the socket
    decoded = [json.loads(lz4.block.decompress(bytes.fromhex(f))) for f in rep["frames"]]
    assert [d["eid"] for d in decoded] == rep["eids"]
    assert [d["n"] for d in decoded] == [0, 1, 2, 3, 4]
    assert all(d["ename"] == "ws_evt" and d["tz"] == "America/Los_Angeles" for d in decoded)
    # acked: 1-3; the socket dropped before 4 and 5 were acked -> HTTP, nothing lost
    assert [e["eid"] for e in events_of(posts)] == rep["eids"][3:]


def test_ws_without_acks_resends_then_fire_and_forget(client_run):
    rep, posts = scenario(client_run, "s8")
    assert rep["frames"] == [2]
    assert [e["ename"] for e in events_of(posts)] == ["before_timeout"]


def test_ws_unacked_events_leave_by_beacon_on_pagehide(client_run):
    rep, posts = scenario(client_run, "s8b")
    assert rep["frames"] == 1 and rep["beacons"] == 1 and rep["closedWith"] == 1000
    assert [e["eid"] for e in events_of(posts)] == ["0190aaaa-bbbb-7ccc-8ddd-000000000811"]


def test_http_503_is_retried_with_same_eids(client_run):
    rep, posts = scenario(client_run, "s7")
    assert len(posts) == 2
    first, second = ([e["eid"] for e in p["json"]] for p in posts)
    assert first == second and len(first) == 2


def test_never_throws_into_the_page(client_run):
    rep, _ = scenario(client_run, "s9")
    assert rep["thrown"] == []
    assert rep["results"] == {"circular": None, "bigint": None}


def test_snippet_queue_is_replayed(client_run):
    rep, posts = scenario(client_run, "s10")
    assert rep["isApi"] and rep["tracker"]
    (ev,) = events_of(posts)
    assert ev["ename"] == "queued_evt" and ev["a"] == 1


def test_endpoint_and_version_from_script_src(client_run):
    rep, posts = scenario(client_run, "s11")
    assert rep["config"]["apiVersion"] == 3
    assert [p["path"] for p in posts] == ["/s11/tr/v3/tr/"]
    assert events_of(posts)[0]["ename"] == "page_view"


# --------------------------------------------------------------------------- static pages


@pytest.mark.parametrize("page", ["index.html", "track_url.html"])
def test_static_pages_are_self_contained(page):
    html = (ROOT / "static" / page).read_text()
    # no external assets: every src/href is relative or a fragment
    for ref in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert not re.match(r"^(https?:)?//", ref), f"{page} loads external {ref}"
    if page == "index.html":
        assert 'src="track.js"' in html


def build_links(*inputs: dict) -> list[dict]:
    out = run_node(
        str(JS_DIR / "track_url_builder.mjs"),
        str(ROOT / "static" / "track_url.js"),
        json.dumps(inputs),
    )
    return json.loads(out)


def test_track_url_builder():
    dest = "https://www.example.com/landing?offer=spring&x=a b#top"
    full, utm, bad, pasted = build_links(
        {
            "url": dest,
            "tracker": "https://t.example.com/",
            "apiVersion": "1",
            "source": "News Letter",
            "medium": "Email",
            "campaign": "spring_sale",
            "term": "",
            "content": "Banner A",
            "score": "9.5",
        },
        {
            "url": "www.example.com/p",
            "tracker": "https://t.example.com",
            "source": "x",
            "medium": "y",
            "campaign": "z",
            "normalise": False,
            "utmOnDestination": True,
        },
        {"url": "javascript:alert(1)", "tracker": "", "score": "lots"},
        {"url": "https://example.com/", "tracker": "https://t.example.com/tr/v2/rdr/"},
    )
    assert full["errors"] == [] and full["warnings"] == []
    for kind in ("rdr", "xrdr"):
        parts = urlsplit(full[kind])
        assert (parts.scheme, parts.netloc, parts.path) == (
            "https",
            "t.example.com",
            f"/tr/v1/{kind}/",
        )
        q = parse_qs(parts.query)
        assert q == {
            "url": [full["destination"]],
            "source": ["news_letter"],
            "medium": ["email"],
            "campaign": ["spring_sale"],
            "content": ["banner_a"],
            "score": ["9.5"],
        }
    assert full["destination"] == "https://www.example.com/landing?offer=spring&x=a%20b#top"
    assert "/tr/v1/rdr/?url=https%3A%2F%2Fwww.example.com%2Flanding%3Foffer%3Dspring" in full["rdr"]

    assert (
        utm["destination"] == "https://www.example.com/p?utm_source=x&utm_medium=y&utm_campaign=z"
    )
    assert parse_qs(urlsplit(utm["rdr"]).query)["url"] == [utm["destination"]]

    assert bad["rdr"] == "" and len(bad["errors"]) == 3
    assert pasted["rdr"].startswith("https://t.example.com/tr/v2/rdr/?url=")
