"""Integration: a real gateway process driven over real HTTP, rows read back from the store."""

import json
import os
import time
import uuid

import chdb
import clickhouse_connect

from tests.gateway_process import GatewayProcess

EVENT_COLS = "toString(eid) AS eid, toString(vid) AS vid, ename, etyp, source, params, url"


def events(gw, where="1"):
    return gw.query(f"SELECT {EVENT_COLS} FROM sfpla.events FINAL WHERE {where} ORDER BY eid")


def test_get_rest_path_and_query_form(gateway):
    vid = str(uuid.uuid4())
    r = gateway.http(
        "GET", f"/tr/v1/tr/vid/{vid}/ename/Page_View/etyp/view?utm_source=Google&plan=3"
    )
    assert r.status == 200 and r.body == b""
    cookies = r.headers_named("set-cookie")
    assert any(c.startswith(f"vid={vid};") for c in cookies)
    rows = gateway.wait_for(
        f"SELECT {EVENT_COLS} FROM sfpla.events WHERE vid = '{vid}'", lambda rows: len(rows) == 1
    )
    assert rows[0]["ename"] == "page_view" and rows[0]["source"] == "google"
    assert rows[0]["params"] == {"plan": 3}


def test_new_visitor_cookie_vid_is_the_stored_vid(gateway):
    r = gateway.http(
        "POST",
        "/tr/v1/tr/",
        json_body={"ename": "first_visit"},
        headers={"Origin": "https://shop.example"},
    )
    assert r.status == 200
    vid_cookie = next(c for c in r.headers_named("set-cookie") if c.startswith("vid="))
    vid = vid_cookie.split(";")[0][4:]
    assert "SameSite=lax" in vid_cookie and "Max-Age=34128000" in vid_cookie
    assert r.header("access-control-allow-origin") == "https://shop.example"
    assert r.header("access-control-allow-credentials") == "true"
    rows = gateway.wait_for(
        "SELECT toString(vid) AS vid FROM sfpla.events WHERE ename = 'first_visit'",
        lambda rows: len(rows) == 1,
    )
    assert rows[0]["vid"] == vid


def test_pixel_and_server_events(gateway):
    r = gateway.http("GET", "/tr/v1/img/ename/pixel_open/campaign/Spring")
    assert r.status == 200 and r.header("content-type") == "image/gif" and len(r.body) == 35
    assert "no-store" in r.header("cache-control")
    r = gateway.http("POST", "/tr/v1/str/", json_body=[{"ename": "a"}, {"ename": "b"}])
    assert r.status == 200 and not r.headers_named("set-cookie")
    eids = r.json()
    assert len(eids) == 2 and all(uuid.UUID(e) for e in eids)
    rows = gateway.wait_for(
        "SELECT ename, server, campaign FROM sfpla.events ORDER BY ename",
        lambda rows: len(rows) == 3,
    )
    assert rows == [
        {"ename": "a", "server": 1, "campaign": ""},
        {"ename": "b", "server": 1, "campaign": ""},
        {"ename": "pixel_open", "server": 0, "campaign": "spring"},
    ]


def test_cors_preflight(gateway):
    r = gateway.http(
        "OPTIONS",
        "/tr/v1/tr/",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert r.status == 200
    assert "Content-Type" in r.header("access-control-allow-headers")
    assert r.header("access-control-allow-origin") == "https://a.example"


def test_bad_input_is_refused_and_good_events_still_stored(gateway):
    cases = [
        (b"{not json", "malformed JSON"),
        (json.dumps([{"ename": "x"}] * 501).encode(), "too many events"),
        (b"x" * (1048576 + 10), "larger than MaxBodyBytes"),
        (b"", "no event"),
        (b"[1, 2]", "not a JSON object"),
    ]
    for body, reason in cases:
        r = gateway.http("POST", "/tr/v1/tr/", body=body)
        assert r.status == 400, (reason, r)
        assert reason in r.json()["error"]
    mixed = [
        {"ename": "good_1", "lat": "north", "zip": 94107, "uid": "nope"},
        "junk",
        {"ename": "good_2", "duration": {"x": 1}},
    ]
    r = gateway.http("POST", "/tr/v1/tr/", json_body=mixed)
    assert r.status == 200 and r.header("x-rejected-events") == "1"
    r = gateway.http("POST", "/tr/v1/ltv/", body=b"[1]")
    assert r.status == 400
    assert gateway.http("GET", "/ping").body == b"pong"  # still alive
    rows = gateway.wait_for(
        "SELECT ename, zip, lat FROM sfpla.events ORDER BY ename", lambda rows: len(rows) == 2
    )
    assert rows == [
        {"ename": "good_1", "zip": "94107", "lat": 0},
        {"ename": "good_2", "zip": "", "lat": 0},
    ]
    assert "Traceback" not in gateway.log_text()


def test_pub_serves_files_and_refuses_escapes(gateway, tmp_path):
    r = gateway.http("GET", "/tr/v1/pub/track.js")
    assert r.status == 200 and b"sfpl" in r.body
    root = os.path.dirname(gateway.config["StaticDirectory"])
    for path in (
        "/tr/v1/pub/../config.json",
        "/tr/v1/pub/%2e%2e/pyproject.toml",
        "/tr/v1/pub/..%2f..%2fetc/passwd",
        "/tr/v1/pub/%00",
    ):
        r = gateway.http("GET", path)
        assert r.status == 404, path
        assert b"[project]" not in r.body
    assert os.path.exists(os.path.join(root, "pyproject.toml"))
    gateway.wait_for(
        "SELECT url FROM sfpla.events WHERE ename = 'pub'",
        lambda rows: [r["url"] for r in rows] == ["/tr/v1/pub/track.js"],
    )


def test_pub_refuses_symlinks_out(tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "ok.txt").write_text("fine")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", static / "leak.txt")
    with GatewayProcess(tmp_path, {"StaticDirectory": str(static)}) as gw:
        assert gw.http("GET", "/tr/v1/pub/ok.txt").body == b"fine"
        r = gw.http("GET", "/tr/v1/pub/leak.txt")
        assert r.status == 404 and b"secret" not in r.body


def test_ops_routes(gateway):
    health = gateway.http("GET", "/health")
    assert health.status == 200 and health.json()["status"] == "ok"
    status = gateway.http("GET", "/status?format=object").json()
    assert status["client"] == "127.0.0.1" and status["conns"] >= 1 and status["version"]
    clear = gateway.http("GET", "/clear")
    assert clear.body == b"OK" and "cookies" in clear.header("clear-site-data")
    gateway.http("POST", "/tr/v1/tr/", json_body=[{"ename": "m"}] * 3)
    gateway.wait_for("SELECT count() AS n FROM sfpla.events", lambda rows: rows[0]["n"] == 3)
    deadline = time.monotonic() + 10
    while True:  # the stats update on the reactor right after the insert returns
        metrics = gateway.http("GET", "/metrics").json()
        if metrics["batching"]["total_items"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert metrics["batching"]["total_items"] == 3 and metrics["batching"]["queued_items"] == 0
    assert metrics["metrics"]["event_count"] == 3
    assert metrics["batching"]["batch_success_rate"] == 1.0
    prom = gateway.http("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert prom.header("content-type").startswith("text/plain")
    assert b"sfpl_rows_stored_total 3.0" in prom.body
    # health checks are not tracked (the original counted them as short-link hits)
    assert gateway.query("SELECT count() AS n FROM sfpla.events") == [{"n": 3}]


def test_query_listener_is_read_only_and_speaks_clickhouse_http(gateway):
    for sql in (
        "INSERT INTO sfpla.events (ename) VALUES ('x')",
        "DROP TABLE sfpla.events",
        "SELECT 1; DROP TABLE sfpla.events",
        "SELECT 1 INTO OUTFILE '/tmp/x'",
        "ALTER TABLE sfpla.events DELETE WHERE 1",
    ):
        r = gateway.query_raw(sql)
        assert r.status == 403 and b"read-only" in r.body, sql
    r = gateway.query_raw("SELECT * FROM file('/etc/hostname', 'LineAsString')")
    assert r.status == 403 and b"table functions are not allowed" in r.body
    r = gateway.query_raw("SELECT nope FROM")
    assert r.status == 400 and r.header("x-clickhouse-exception-code") == "62"
    assert gateway.query_raw("SELECT 1 FROM sfpla.nothing").status == 404
    gateway.http("GET", "/tr/v1/tr/ename/via_connect")
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=gateway.query_port, database="sfpla"
    )
    deadline_rows = gateway.wait_for(
        "SELECT count() AS n FROM sfpla.events", lambda rows: rows[0]["n"] == 1
    )
    assert deadline_rows == [{"n": 1}]
    result = client.query("SELECT ename, count() AS n FROM events GROUP BY ename")
    assert result.result_rows == [("via_connect", 1)]


def test_shutdown_flushes_and_data_is_readable_with_chdb(tmp_path):
    slow = {"Batching": {"events": {"Strategy": "time", "MaxBatchTime": "60s"}}}
    gw = GatewayProcess(tmp_path, slow).start()
    try:
        r = gw.http("POST", "/tr/v1/str/", json_body=[{"ename": f"e{i}"} for i in range(50)])
        assert r.status == 200
        assert gw.query("SELECT count() AS n FROM sfpla.events") == [{"n": 0}]  # still queued
    finally:
        assert gw.stop() in (0, -15)  # twistd re-raises SIGTERM after a clean shutdown
        assert "Server Shut Down." in gw.log_text()
    conn = chdb.connect(str(tmp_path / "gw" / "data" / "chdb"))
    try:
        out = conn.query("SELECT count(), uniqExact(eid) FROM sfpla.events FINAL", "CSV")
        assert out.bytes().decode().strip() == "50,50"
    finally:
        conn.close()
