"""The original tracker's answer shapes where its clients parse them (issue 16, part 2), over
real HTTP to one real gateway process: ``/status`` as its array, every ``/metrics`` JSON key with
counts from what this gateway really did, ``/ppi/geoip`` with its fields, GET ``/tr/v1/ltv/``
ingesting the query, and ``/tr/v1/pub/shorten_url.html`` driving the short-link admin API.

The keys the original sends are written out from shared/reference/original-behaviour.md (a.9,
a.10); this gateway's extra keys are allowed beside them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import time
import uuid

import pytest

from sfpltracker.privacy.geoip import open_geoip
from tests.gateway_process import ROOT, GatewayProcess
from tests.test_privacy_geoip import CITY_MMDB, write_test_bin
from tests.test_shortlinks import create_account

ORIGINAL_METRICS = {
    "metrics": {
        "event_count",
        "error_count",
        "campaign_events",
        "mthreads_ops",
        "mstore_ops",
        "mtriage_ops",
        "total_latency_ns",
        "last_processed_unix",
        "connection_count",
        "health_status",
        "start_time_unix",
    },
    "batching": {
        "enabled",
        "total_batches",
        "total_items",
        "failed_batches",
        "avg_batch_size",
        "avg_flush_latency_ms",
        "queued_items",
        "memory_usage_mb",
        "last_flush_time",
    },
    "calculated": {
        "avg_latency_ms",
        "error_rate",
        "uptime_seconds",
        "events_per_second",
        "batch_success_rate",
        "avg_items_per_batch",
    },
}
HEALTH_STATUSES = {
    "initializing",
    "connected",
    "connection_failed",
    "healthy",
    "unhealthy",
    "degraded",
    "disconnected",
}
ORIGINAL_GEOIP = ["ips", "ipe", "iso2", "country", "region", "city", "lat", "lon", "zip", "tz"]
LONDON = "81.2.69.142"  # in the test BIN's 81.2.69.0/24 (tests/test_privacy_geoip.py)
IMMEDIATE = {
    t: {"Strategy": "immediate"} for t in ("events", "mthreads", "mstore", "mtriage", "payments")
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("answers")
    config = {
        "GeoIPDatabase": str(write_test_bin(workdir / "DB11.BIN")),
        "TrustedProxies": ["127.0.0.1/32"],
        "Batching": IMMEDIATE,
        "Domains": ["localhost", "tracker.test"],
        "LoginFailureLimit": 1000,
    }
    with GatewayProcess(workdir, config) as gateway:
        yield gateway


def new_id() -> str:
    return str(uuid.uuid4())


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- /status -----------------------------------------------------------------------------------


def test_status_is_the_original_array_and_our_object_on_request(gw):
    r = gw.http("GET", "/status")
    assert r.status == 200 and r.header("content-type").startswith("application/json")
    body = r.json()
    assert isinstance(body, list) and [e["Key"] for e in body] == ["client", "conns"], body
    assert body[0] == {"Key": "client", "Value": "127.0.0.1"}
    assert isinstance(body[1]["Value"], int) and body[1]["Value"] >= 1  # this request's own
    # the caller behind a trusted proxy, as everywhere else
    behind = gw.http("GET", "/status", headers={"X-Forwarded-For": "203.0.113.9"}).json()
    assert behind[0] == {"Key": "client", "Value": "203.0.113.9"}

    ours = gw.http("GET", "/status?format=object").json()
    assert ours["client"] == "127.0.0.1" and ours["conns"] >= 1
    assert ours["version"] and ours["uptime_seconds"] > 0

    bad = gw.http("GET", "/status?format=xml")
    assert bad.status == 400 and "format" in bad.json()["error"]


# -- /metrics ----------------------------------------------------------------------------------


def metrics(gw) -> dict:
    r = gw.http("GET", "/metrics")
    assert r.status == 200 and r.header("content-type").startswith("application/json")
    return r.json()


def test_metrics_json_has_every_original_key_with_real_counts(gw):
    before = metrics(gw)
    for section, keys in ORIGINAL_METRICS.items():
        assert keys <= set(before[section]), (section, keys - set(before[section]))
    assert set(before["timestamp"]) and parse_rfc3339(before["timestamp"]).tzinfo is not None
    parse_rfc3339(before["batching"]["last_flush_time"])  # RFC 3339 even before any flush
    m0 = before["metrics"]
    assert m0["health_status"] in HEALTH_STATUSES

    # 3 events of a message thread, 2 plain ones and 1 refused item, in two requests
    tid = new_id()
    sent_at = time.time()
    threaded = [{"ename": "opened", "tid": tid, "eid": new_id()} for _ in range(3)]
    r = gw.http("POST", "/tr/v1/tr/", json_body=threaded)
    assert r.status == 200, r
    r = gw.http("POST", "/tr/v1/tr/", json_body=[{"ename": "a"}, {"ename": "b"}, 7])
    assert r.status == 200 and r.header("x-rejected-events") == "1", r
    gw.wait_for(
        f"SELECT count() AS n FROM sfpla.mtriage WHERE tid = '{tid}'",
        lambda rows: rows[0]["n"] == 3,
    )
    # the batcher counts a batch once its insert has returned, just after the rows are visible
    deadline = time.monotonic() + 15
    while True:
        after = metrics(gw)
        m = after["metrics"]
        stored = {t: m[f"{t}_ops"] - m0[f"{t}_ops"] for t in ("mthreads", "mstore", "mtriage")}
        if stored == {"mthreads": 3, "mstore": 3, "mtriage": 3} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stored == {"mthreads": 3, "mstore": 3, "mtriage": 3}
    assert m["campaign_events"] - m0["campaign_events"] == 3
    assert m["event_count"] - m0["event_count"] == 5
    assert m["error_count"] - m0["error_count"] == 1
    assert m["total_latency_ns"] > m0["total_latency_ns"]
    assert int(sent_at) <= m["last_processed_unix"] <= time.time() + 1
    calc = after["calculated"]
    # the original's formulas, on the numbers it reports
    assert calc["error_rate"] == round(m["error_count"] / max(m["event_count"], 1), 4)
    assert calc["avg_latency_ms"] > 0
    assert calc["avg_latency_ms"] <= m["total_latency_ns"] / 1e6
    assert calc["avg_items_per_batch"] == after["batching"]["avg_batch_size"]
    assert parse_rfc3339(after["batching"]["last_flush_time"]).timestamp() >= int(sent_at)
    assert m["health_status"] == "healthy"

    # Prometheus text stays what a scraper asks for
    prom = gw.http("GET", "/metrics", headers={"Accept": "text/plain"})
    assert prom.header("content-type").startswith("text/plain")
    assert f"\nsfpl_events_accepted_total {m['event_count']}.0\n".encode() in prom.body


# -- /ppi/geoip --------------------------------------------------------------------------------


def test_geoip_answers_the_original_fields(gw):
    r = gw.http("GET", f"/tr/v1/ppi/geoip?ip={LONDON}")
    assert r.status == 200 and r.header("cache-control") == "no-store"
    record = r.json()
    assert list(record) == ORIGINAL_GEOIP
    net = ipaddress.ip_network("81.2.69.0/24")
    assert record["ips"] == str(int(net.network_address))
    assert record["ipe"] == str(int(net.broadcast_address))
    assert record["iso2"] == "GB"
    assert record["country"] == "United Kingdom of Great Britain and Northern Ireland"
    assert (record["region"], record["city"], record["zip"], record["tz"]) == (
        "England",
        "London",
        "EC1A",
        "+01:00",
    )
    assert record["lat"] == pytest.approx(51.50853, abs=1e-4)
    assert record["lon"] == pytest.approx(-0.12574, abs=1e-4)

    # IPv6: the bounds are the 128-bit numbers, in decimal
    v6 = gw.http("GET", "/tr/v1/ppi/geoip?ip=2a02:8070::1").json()
    net6 = ipaddress.ip_network("2a02:8070::/32")
    assert (v6["ips"], v6["ipe"], v6["iso2"]) == (
        str(int(net6.network_address)),
        str(int(net6.broadcast_address)),
        "DE",
    )

    # the caller's own address (from the trusted proxy) when no ip= is given
    own = gw.http("GET", "/tr/v1/ppi/geoip", headers={"X-Forwarded-For": LONDON}).json()
    assert own == record

    # API.md's record stays one parameter away
    ours = gw.http("GET", f"/tr/v1/ppi/geoip?ip={LONDON}&format=object").json()
    assert set(ours) == {"ip", "country", "region", "city", "lat", "lon", "zip", "tz"}
    assert (ours["ip"], ours["country"]) == (LONDON, "GB")

    assert gw.http("GET", "/tr/v1/ppi/geoip?ip=nonsense").status == 400
    assert gw.http("GET", f"/tr/v1/ppi/geoip?ip={LONDON}&format=csv").status == 400
    assert gw.http("GET", "/tr/v1/ppi/geoip?ip=8.8.4.4").status == 404


def test_geoip_fields_from_a_maxmind_database():
    """The same fields from a MaxMind ``.mmdb`` (its network as the range, its English name)."""
    geo = open_geoip(CITY_MMDB)
    try:
        rec = geo.lookup("2001:218::1")
        net = ipaddress.ip_network("2001:218::/32")
        assert (rec.country, rec.country_name) == ("JP", "Japan")
        assert (rec.ips, rec.ipe) == (
            str(int(net.network_address)),
            str(int(net.broadcast_address)),
        )
        london = geo.lookup(LONDON)
        assert london.country_name == "United Kingdom"
        assert int(london.ips) <= int(ipaddress.ip_address(LONDON)) <= int(london.ipe)
    finally:
        geo.close()


# -- GET /ltv/ ---------------------------------------------------------------------------------


def test_get_ltv_ingests_its_query_and_path(gw):
    uid, orid = new_id(), new_id()
    r = gw.http(
        "GET",
        f"/tr/v1/ltv/uid/{uid}?revenue=9.5&currency=EUR&product=book&orid={orid}&qty=2",
        headers={"Origin": "https://shop.example"},
    )
    assert r.status == 200, r
    assert r.header("access-control-allow-origin")
    answer = r.json()
    assert answer["ok"] is True and len(answer["ids"]) == 1
    rows = gw.wait_for(
        "SELECT toString(uid) AS uid, toString(orid) AS orid, revenue, currency, product, qty "
        f"FROM sfpla.payments WHERE id = '{answer['ids'][0]}'",
        lambda rows: len(rows) == 1,
    )
    assert rows == [
        {"uid": uid, "orid": orid, "revenue": 9.5, "currency": "EUR", "product": "book", "qty": 2}
    ]
    # ... and counts towards the visitor's lifetime value like a POSTed payment
    ltv = gw.wait_for(
        f"SELECT sum(paid) AS paid FROM sfpla.ltv WHERE id = '{uid}' AND id_type = 'uid'",
        lambda rows: rows and rows[0]["paid"] == 9.5,
    )
    assert ltv == [{"paid": 9.5}]

    for stray in ("/tr/v1/ltv/", "/tr/v1/ltv/ref/newsletter?q=1"):  # no payment field at all
        refused = gw.http("GET", stray)
        assert refused.status == 400 and "payment" in refused.json()["error"], refused
    batch_in_query = gw.http("GET", "/tr/v1/ltv/?payments=x")
    assert batch_in_query.status == 400 and "payments" in batch_in_query.json()["error"]


# -- shorten_url.html --------------------------------------------------------------------------


def test_shorten_url_page_drives_the_admin_api(gw):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (v18+) is required for the shorten_url.html test but is not on PATH")
    page = gw.http("GET", "/tr/v1/pub/shorten_url.html")
    assert page.status == 200 and page.header("content-type").startswith("text/html")
    assert b'<script id="api">' in page.body
    account = create_account(gw, "answers")
    host = "short.test"
    proc = subprocess.run(
        [node, str(ROOT / "tests" / "js" / "shorten_url_client.mjs"),
         str(ROOT / "static" / "shorten_url.html"), f"http://127.0.0.1:{gw.port}",
         account["uid"], account["secret"], host],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    destination = "https://www.example.com/landing?offer=spring"
    assert out["request"] == {
        "body": {"urlfrom": f"https://{host}/spring", "urlto": destination},
        "link": f"https://{host}/spring",
        "host": host,
        "errors": [],
    }
    assert out["invalid"]["body"] is None
    assert out["invalid"]["errors"] == ["URL Required", "Redirect Server Required", "Path Required"]
    assert out["save"]["ok"] and out["save"]["data"]["created"] is True, out["save"]
    listed = out["list"]["data"]["results"]
    assert [(link["urlfrom"], link["urlto"]) for link in listed] == [
        (f"{host}/spring", destination)
    ]
    assert out["wrong"] == {"ok": False, "status": 401, "error": "bad credentials"}

    # the link the page made works
    hit = gw.http("GET", "/spring", headers={"Host": host})
    assert hit.status == 302 and hit.header("location") == destination
