"""A real gateway started on the original tracker's config files (issue 16, part 1).

Each file (tests/data/original, see tests/test_original_config.py) is used as it is, except what
cannot be the same on a test machine, overridden the way ``GatewayProcess`` does it: listeners
on free 127.0.0.1 ports, the data directory in the test's temp dir, the ClickHouse entry's host
pointed at the real clickhouse-server 18.16 of ``tests/servers.py`` (schema downgraded for it, as
in test_clickhouse_gateway.py), ``ProxyUrl`` at a real upstream process, and files the original
repository ships (TLS pair, GeoIP) replaced by generated or test ones.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.clickhouse_legacy import downgrade_schema
from tests.edge_helpers import UpstreamProcess
from tests.gateway_process import ROOT, GatewayProcess, free_port, http_request
from tests.servers import ClickHouseServer

DATA = ROOT / "tests" / "data" / "original"
CITY_MMDB = ROOT / "tests" / "data" / "maxmind" / "GeoIP2-City-Test.mmdb"


@pytest.fixture(scope="module")
def server():
    with ClickHouseServer() as ch:
        yield ch


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with UpstreamProcess(tmp_path_factory.mktemp("upstream")) as up:
        yield up


def gateway_on(tmp_path, data: dict) -> GatewayProcess:
    """A gateway on ``data``, with this test's ports and directories."""
    gw = GatewayProcess(tmp_path, data)
    gw.config.update(
        {
            "ProxyPort": f"127.0.0.1:{gw.port}",
            "ProxyExceptHTTP": f"127.0.0.1:{gw.alt_port}",
            "QueryPort": f"127.0.0.1:{gw.query_port}",
            "DataDirectory": str(gw.workdir / "data"),
            "StaticDirectory": str(ROOT / "static"),
        }
    )
    return gw


def wait_rows(client, sql: str, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    rows = []
    while time.monotonic() < deadline:
        rows = client.execute(sql)
        if predicate(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"timed out on {sql}: {rows}")


def test_a_gateway_runs_on_the_originals_config_json(server, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    data = json.loads((DATA / "config.json").read_text())
    database = "orig_" + uuid.uuid4().hex[:8]
    data["Notify"][0].update(Hosts=[server.hostport], Context=database)
    data["ProxyUrl"] = f"http://127.0.0.1:{upstream.port}"
    data.update(TLSCert="", TLSKey="")  # the original repository's pair: a generated one here
    gw = gateway_on(tmp_path, data)
    tls_port = free_port()
    gw.config["ProxyPortTLS"] = f"127.0.0.1:{tls_port}"
    redirector = gw.port
    gw.port = gw.alt_port  # ProxyPort only redirects (ProxyPortRedirect): talk to ProxyExceptHTTP
    c = server.client()
    with gw:
        health = gw.http("GET", "/health").json()
        assert health["store"]["kind"] == "clickhouse", health  # Service: clickhouse
        vid = str(uuid.uuid4())
        r = gw.http(
            "POST", "/tr/v1/tr/", json_body=[{"vid": vid, "ename": f"e{i}"} for i in range(5)]
        )
        assert r.status == 200, r
        rows = wait_rows(
            c,
            f"SELECT ename, ip FROM {database}.events WHERE vid = '{vid}' ORDER BY ename",
            lambda rows: len(rows) == 5,
        )
        assert rows == [(f"e{i}", "") for i in range(5)]  # UseRemoveIP: no IP stored

        # ProxyUrl: /api/ goes upstream with its path unchanged; ProxyUrlFilter: a path it
        # matches (.css) is not tracked, one it misses is (the .css request goes first: had it
        # been tracked, its row would be stored no later than the second one's)
        skipped, tag = uuid.uuid4().hex, uuid.uuid4().hex
        r = gw.http("GET", f"/api/echo/site.css?tag={skipped}")
        assert r.status == 200 and r.json()["uri"] == f"/api/echo/site.css?tag={skipped}", r
        r = gw.http("GET", f"/api/echo?tag={tag}")
        assert r.status == 200 and r.json()["uri"] == f"/api/echo?tag={tag}", r
        tracked = wait_rows(
            c,
            f"SELECT ename, url FROM {database}.events WHERE params LIKE '%{tag}%'",
            lambda rows: len(rows) >= 1,
        )
        # the url as the original stored it (NormalizeURLs: its config file): no query
        assert tracked == [("proxy", "//127.0.0.1/api/echo")], tracked
        others = c.execute(f"SELECT url FROM {database}.events WHERE params LIKE '%{skipped}%'")
        assert others == []
        # IgnoreProxyOptions: false: the preflight is answered here, not upstream
        r = gw.http("OPTIONS", "/api/echo", headers={"Origin": "https://app.example"})
        assert r.status == 200 and r.body == b"", r
        assert "OPTIONS" in r.header("access-control-allow-methods")

        # ProxyPort answers the original's redirect to https on ProxyPortTLS's port
        r = http_request(redirector, "GET", "/tr/v1/tr/?ename=x", headers={"Host": "localhost"})
        assert r.status == 301
        assert r.header("location") == f"https://localhost:{tls_port}/tr/v1/tr/?ename=x"
    log = gw.log_text()
    assert "[sfpltracker.config#info] config: mapped ProxyUrl" in log, gw.log_tail()
    assert "[sfpltracker.config#warn] config: UseGeoIP" in log


def test_a_gateway_runs_on_the_original_readmes_sample(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    data = json.loads((DATA / "readme-sample.json").read_text())
    data["Notify"][0].update(Host="127.0.0.1", Port=server.tcp_port)
    data["GeoIPDatabase"] = str(CITY_MMDB)
    # LetsEncryptDomains stays: renewals are tried (and fail) against a closed port, not the CA
    data["ACMEDirectory"] = f"http://127.0.0.1:{free_port()}/directory"
    gw = gateway_on(tmp_path, data)
    gw.config["ProxyPortTLS"] = f"127.0.0.1:{free_port()}"
    c = server.client()
    with gw:
        health = gw.http("GET", "/health").json()
        assert health["store"]["kind"] == "clickhouse", health  # Host + Port
        vid = str(uuid.uuid4())
        r = gw.http("POST", "/tr/v1/tr/", json_body={"vid": vid, "ename": "signup"})
        assert r.status == 200, r
        rows = wait_rows(
            c,
            f"SELECT ename, ip FROM sfpla.events WHERE vid = '{vid}'",
            lambda rows: len(rows) == 1,
        )
        assert rows == [("signup", "127.0.0.0")]  # AnonymizeIP: truncated
        geo = gw.http("GET", "/tr/v1/ppi/geoip?ip=81.2.69.142")
        assert geo.status == 200 and geo.json()["iso2"] == "GB", geo
    assert "[sfpltracker.config#warn] config: Notify[1]: a cassandra service" in gw.log_text()


def test_proxy_daily_limit_applies_to_api_only(upstream, tmp_path):
    config = {"ProxyUrl": f"http://127.0.0.1:{upstream.port}", "ProxyDailyLimit": 2}
    with GatewayProcess(tmp_path, config) as gw:
        assert [gw.http("GET", "/api/echo").status for _ in range(2)] == [200, 200]
        r = gw.http("GET", "/api/echo")
        assert r.status == 429 and r.json() == {"error": "daily request limit reached (DailyLimit)"}
        assert int(r.header("retry-after")) > 0
        # the ingestion routes are not counted, as in the original
        for _ in range(3):
            assert gw.http("POST", "/tr/v1/tr/", json_body={"ename": "x"}).status == 200


def test_tracker_tac_logs_the_mapping_too(tmp_path, monkeypatch):
    from tests.test_logs import TacGatewayProcess, json_lines

    gw = TacGatewayProcess(
        tmp_path, {"LogFormat": "json", "MaximumConnections": 500, "S3Bucket": "b"}
    )
    monkeypatch.setenv("SFPL_CONFIG", str(gw.config_path))
    with gw:
        assert gw.http("GET", "/health").status == 200
    events = {(e["level"], e["text"]) for e in json_lines(gw.log_text())}
    assert ("info", "config: mapped MaximumConnections -> MaxConnections: 500") in events
    assert (
        "warn",
        "config: S3Bucket: key of the original tracker with no meaning here, ignored",
    ) in events
