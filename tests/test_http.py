"""The HTTP routes: answers and rows in memory; static files, the query listener and shutdown on a real
gateway process over real HTTP, rows read back from chDB."""

import json
import os
import uuid

import chdb
import clickhouse_connect

from tests.gateway_process import GatewayProcess

# Answers and rows: in memory (sfpltracker.testing.MemoryGateway), the rows as the gateway hands
# them to the store. What needs the process (the query listener, shutdown) is at the end.


def events(gw, **match) -> list[dict]:
    """The stored ``events`` rows whose columns equal ``match``, by ``ename``."""
    rows = [r for r in gw.rows("events") if all(r.get(k) == v for k, v in match.items())]
    return sorted(rows, key=lambda r: r["ename"])


def test_get_rest_path_and_query_form(memory_gateway):
    gw, vid = memory_gateway, str(uuid.uuid4())
    r = gw.http("GET", f"/tr/v1/tr/vid/{vid}/ename/Page_View/etyp/view?utm_source=Google&plan=3")
    assert r.status == 200 and r.body == b""
    cookies = r.headers_named("set-cookie")
    assert any(c.startswith(f"vid={vid};") for c in cookies)
    [row] = events(gw, vid=vid)
    assert row["ename"] == "page_view" and row["source"] == "google"
    assert json.loads(row["params"]) == {"plan": 3}


def test_new_visitor_cookie_vid_is_the_stored_vid(memory_gateway):
    r = memory_gateway.http(
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
    [row] = events(memory_gateway, ename="first_visit")
    assert row["vid"] == vid


def test_pixel_and_server_events(memory_gateway):
    gw = memory_gateway
    r = gw.http("GET", "/tr/v1/img/ename/pixel_open/campaign/Spring")
    assert r.status == 200 and r.header("content-type") == "image/gif" and len(r.body) == 35
    assert "no-store" in r.header("cache-control")
    r = gw.http("POST", "/tr/v1/str/", json_body=[{"ename": "a"}, {"ename": "b"}])
    assert r.status == 200 and not r.headers_named("set-cookie")
    eids = r.json()
    assert len(eids) == 2 and all(uuid.UUID(e) for e in eids)
    rows = [(r["ename"], r.get("server", 0), r.get("campaign", "")) for r in events(gw)]
    assert rows == [("a", 1, ""), ("b", 1, ""), ("pixel_open", 0, "spring")]


def test_cors_preflight(memory_gateway):
    r = memory_gateway.http(
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


def test_bad_input_is_refused_and_good_events_still_stored(memory_gateway):
    gw = memory_gateway
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (json.dumps([{"ename": "x"}] * 501).encode(), 400, "too many events"),
        # Refused from its Content-Length, before it is read (edge/http.py).
        (b"x" * (1048576 + 10), 413, "larger than MaxBodyBytes"),
        (b"", 400, "no event"),
        (b"[1, 2]", 400, "not a JSON object"),
    ]
    for body, status, reason in cases:
        r = gw.http("POST", "/tr/v1/tr/", body=body)
        assert r.status == status, (reason, r)
        assert reason in r.json()["error"]
    mixed = [
        {"ename": "good_1", "lat": "north", "zip": 94107, "uid": "nope"},
        "junk",
        {"ename": "good_2", "duration": {"x": 1}},
    ]
    r = gw.http("POST", "/tr/v1/tr/", json_body=mixed)
    assert r.status == 200 and r.header("x-rejected-events") == "1"
    r = gw.http("POST", "/tr/v1/ltv/", body=b"[1]")
    assert r.status == 400
    assert gw.http("GET", "/ping").body == b"pong"  # still alive
    rows = [(r["ename"], r.get("zip", ""), r.get("lat", 0)) for r in events(gw)]
    assert rows == [("good_1", "94107", 0), ("good_2", "", 0)]  # bad fields dropped alone
    assert gw.failures == []  # nothing logged as a failure (a real process: no Traceback)


def test_ops_routes(memory_gateway):
    gw = memory_gateway
    health = gw.http("GET", "/health")
    assert health.status == 200 and health.json()["status"] == "ok"
    status = gw.http("GET", "/status?format=object").json()
    assert status["client"] == "127.0.0.1" and status["conns"] >= 1 and status["version"]
    clear = gw.http("GET", "/clear")
    assert clear.body == b"OK" and "cookies" in clear.header("clear-site-data")
    gw.http("POST", "/tr/v1/tr/", json_body=[{"ename": "m"}] * 3)
    assert len(gw.rows("events")) == 3
    metrics = gw.http("GET", "/metrics").json()
    assert metrics["batching"]["total_items"] == 3 and metrics["batching"]["queued_items"] == 0
    assert metrics["metrics"]["event_count"] == 3
    assert metrics["batching"]["batch_success_rate"] == 1.0
    prom = gw.http("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert prom.header("content-type").startswith("text/plain")
    assert b"sfpl_rows_stored_total 3.0" in prom.body
    # health checks are not tracked (the original counted them as short-link hits)
    assert len(gw.rows("events")) == 3


# -- what needs the real process: static files (sent by a producer on the reactor), the query
# -- listener (ClickHouse HTTP), shutdown -----------------------------------------------------


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
