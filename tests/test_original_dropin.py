"""Issue 16's leftovers for a user switching from the original tracker: its URL normalisation
(``NormalizeURLs``, with ``UrlFilter``/``UrlFilterMatchGroup``), switched on by its config
file, and a ``Consume[]`` nats entry consumed on its own subjects."""

from __future__ import annotations

import json
import uuid

import pytest

from sfpltracker.config import ConfigError, load, load_dict
from tests.gateway_process import ROOT, GatewayProcess
from tests.test_nats import nats_server  # noqa: F401 - fixture
from tests.test_nats_consumer import publish

ORIGINAL = ROOT / "tests" / "data" / "original"
QUICK = {"Strategy": "hybrid", "MaxBatchSize": 100, "MaxBatchTime": "100ms"}
# the original's config.json: the path of its own sites
SITE_FILTER = json.loads((ORIGINAL / "config.json").read_text())["UrlFilter"]


def test_the_originals_normalisation_as_its_reference_gives_it():
    from sfpltracker.ingest.urls import UrlNormaliser

    plain = UrlNormaliser()
    assert plain("https://Ex.com/A?q=1") == "//ex.com/a"
    assert plain("/slug?x=1") == "/slug"
    assert plain("see http://Ex.com/b#top?x") == "//ex.com/b#top"  # scheme found anywhere
    sites = UrlNormaliser(SITE_FILTER, 6)
    assert sites("https://tr.sfpl.io/Foo/Bar?x=1") == "/foo/bar"  # group 6: the path
    assert sites("http://dev.valid9.com:8443/p#f") == "/p"
    assert sites("https://Example.com/A?q=1") == "//example.com/a"  # no match: query dropped


def test_the_originals_config_files_switch_it_on_ours_keeps_values_as_sent():
    notes: list[str] = []
    cfg = load(ORIGINAL / "config.json", notes)
    assert cfg.NormalizeURLs and cfg.UrlFilter == SITE_FILTER and cfg.UrlFilterMatchGroup == 6
    assert any("NormalizeURLs: true" in n for n in notes)
    assert not any(n.startswith(("UrlFilter", "UrlFilterMatchGroup")) for n in notes), notes
    assert load(ORIGINAL / "readme-sample.json", []).NormalizeURLs
    assert load_dict({}).NormalizeURLs is False  # API.md: values kept as sent
    # the file's own NormalizeURLs wins; UrlFilter then has nothing to do
    original = json.loads((ORIGINAL / "config.json").read_text())
    cfg = load_dict({**original, "NormalizeURLs": False})
    assert not cfg.NormalizeURLs and cfg.UrlFilter == ""
    # a regex Python cannot read does not stop the original's file from starting
    cfg = load_dict({**original, "UrlFilter": "(?<bad"}, ".", notes := [])
    assert cfg.NormalizeURLs and cfg.UrlFilter == ""
    assert any(n.startswith("UrlFilter:") for n in notes)
    assert load_dict({"UrlFilter": "x"}).NormalizeURLs  # a key of the original's files
    with pytest.raises(ConfigError, match="UrlFilterMatchGroup"):
        load_dict({"NormalizeURLs": True, "UrlFilter": "(a)", "UrlFilterMatchGroup": 2})


@pytest.fixture(scope="module")
def original_gw(tmp_path_factory):
    # keys only the original's files have: the gateway takes it for the original's config
    config = {
        "MaximumConnections": 1000,
        "UrlFilter": SITE_FILTER,
        "UrlFilterMatchGroup": 6,
        "Batching": {"events": QUICK},
    }
    with GatewayProcess(tmp_path_factory.mktemp("dropin"), config) as gw:
        yield gw


def test_url_and_last_are_stored_the_originals_way(original_gw):
    gw, ename = original_gw, "e" + uuid.uuid4().hex[:12]
    events = [
        {"ename": ename, "xid": "own", "url": "https://tr.sfpl.io/Pricing?plan=Pro",
         "last": "https://Google.com/search?q=tracker"},
        {"ename": ename, "xid": "other", "url": "HTTPS://Shop.Example.com/Cart/?id=7#pay",
         "last": "/Landing?utm=x"},
    ]  # fmt: skip
    assert gw.http("POST", "/tr/v1/tr/", json_body=events).status == 200
    query = "?ename=" + ename + "&xid=get&url=https%3A%2F%2FWWW.Example.org%2FA%3Fb%3D1"
    assert gw.http("GET", "/tr/v1/tr/" + query).status == 200
    rows = gw.wait_for(
        f"SELECT xid, url, last FROM sfpla.events FINAL WHERE ename = '{ename}' ORDER BY xid",
        lambda r: len(r) == 3,
    )
    assert rows == [
        {"xid": "get", "url": "//www.example.org/a", "last": ""},
        {"xid": "other", "url": "//shop.example.com/cart/", "last": "/landing"},
        {"xid": "own", "url": "/pricing", "last": "//google.com/search"},
    ]
    # the derived tables follow: hits per normalised url
    hits = gw.wait_for(
        "SELECT url FROM sfpla.hits FINAL WHERE url = '/pricing'", lambda r: len(r) == 1
    )
    assert hits == [{"url": "/pricing"}]


def test_a_consume_entry_of_the_original_consumes_its_subjects(
    nats_server,  # noqa: F811
    tmp_path,
):
    original = json.loads((ORIGINAL / "config.json").read_text())
    consume = original["Consume"][1]
    # the original's entry as it ships, switched on and pointed at this test's server (no TLS)
    entry = {**consume, "Service": "nats", "Hosts": [nats_server.url], "Secure": False}
    for key in ("CACert", "Cert", "Key"):
        entry.pop(key)
    config = {"Consume": [original["Consume"][0], entry], "Batching": {"counters": QUICK}}
    with GatewayProcess(tmp_path, config) as gw:
        assert "mapped Consume[1] -> Notify[0]" in gw.log_text()
        gw.wait_for("SELECT 1 AS ok", lambda _: _connected(gw))
        publish(
            nats_server.url,
            [
                ("tic.count", json.dumps({"id": "bare"}).encode()),  # not one of its subjects
                ("tic.count.signups", b"{}"),
                ("tic.update.cfg", json.dumps({"id": "u1", "msg": "v1"}).encode()),
                ("tic.log.app", json.dumps({"topic": "billing", "msg": "hi"}).encode()),
            ],
        )
        counters = gw.wait_for(
            "SELECT id, sum(total) AS n FROM sfpla.counters WHERE id LIKE 'tic.%' OR id = 'bare'"
            " GROUP BY id",
            lambda r: len(r) >= 1,
        )
        logs = gw.wait_for("SELECT topic, msg FROM sfpla.logs", lambda r: len(r) >= 1)
        updates = gw.wait_for("SELECT id, msg FROM sfpla.updates FINAL", lambda r: r)
        assert [(c["id"], int(c["n"])) for c in counters] == [("tic.count.signups", 1)]
        assert logs == [{"topic": "billing", "msg": "hi"}]
        assert updates == [{"id": "u1", "msg": "v1"}]


def _connected(gw) -> bool:
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    return any(
        line.startswith("sfpl_nats_connected") and line.endswith(" 1.0")
        for line in text.splitlines()
    )


def test_the_originals_visitors_and_sessions_views_as_first_event_views(original_gw):
    gw = original_gw
    vid, sid, later_sid = (str(uuid.uuid4()) for _ in range(3))
    for url, session in (("/first", sid), ("/second", sid), ("/third", later_sid)):
        r = gw.http("POST", "/tr/v1/tr/", json_body={"vid": vid, "sid": session, "url": url})
        assert r.status == 200
        gw.wait_for(f"SELECT eid FROM sfpla.events WHERE url = '{url}' AND vid = '{vid}'", bool)
    first = gw.query(
        f"SELECT url, toString(sid) AS sid FROM sfpla.visitors_first WHERE vid = '{vid}'"
    )
    assert first == [{"url": "/first", "sid": sid}]
    sessions = gw.query(
        f"SELECT toString(sid) AS sid, url FROM sfpla.sessions_first WHERE vid = '{vid}' "
        "ORDER BY url"
    )
    assert sessions == [{"sid": sid, "url": "/first"}, {"sid": later_sid, "url": "/third"}]
    # every column of the original's views: the events row (as visitors_latest)
    columns = {
        table: [c["name"] for c in gw.query(f"DESCRIBE TABLE sfpla.{table}")]
        for table in ("visitors_first", "sessions_first", "events")
    }
    assert columns["visitors_first"] == columns["sessions_first"] == columns["events"]


def test_health_keeps_its_shape_and_answers_the_originals_metrics_alongside(original_gw):
    r = original_gw.http("GET", "/health")
    assert r.status == 200, r
    health = r.json()
    # API.md's keys, as before
    assert health["status"] == "ok" and health["store"]["kind"] == "embedded"
    assert health["spool"]["durability"]
    # the original answered its /metrics JSON on /health: its clients read these
    assert health["metrics"]["health_status"] == "healthy"
    assert {"event_count", "error_count", "total_latency_ns", "start_time_unix"} <= set(
        health["metrics"]
    )
    assert health["batching"]["enabled"] is True
    assert {"avg_latency_ms", "error_rate", "uptime_seconds"} <= set(health["calculated"])
    assert health["timestamp"].endswith("Z")


def test_total_latency_counts_websocket_events(original_gw):
    import asyncio

    import websockets

    gw = original_gw

    def metrics() -> dict:
        return gw.http("GET", "/metrics").json()["metrics"]

    before = metrics()

    async def send() -> list[str]:
        url = f"ws://127.0.0.1:{gw.port}/tr/v1/ws?ack=1"
        acked: list[str] = []
        async with websockets.connect(url, open_timeout=20) as ws:
            for i in range(5):
                await ws.send(json.dumps({"ename": "ws_latency", "i": i}))
            while len(acked) < 5:
                acked.extend(json.loads(await ws.recv())["ok"])
        return acked

    assert len(asyncio.run(asyncio.wait_for(send(), 60))) == 5
    after = metrics()
    assert after["event_count"] == before["event_count"] + 5
    assert after["total_latency_ns"] > before["total_latency_ns"]
    assert after["last_processed_unix"] >= max(before["last_processed_unix"], 1)
