"""Limits on every listener, ForceHTTPS and HSTS, through a real gateway."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.edge_helpers import insecure_tls, metric_value, request, trickle
from tests.gateway_process import GatewayProcess, http_request
from tests.servers import free_port


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tls_port = free_port()
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("gw"),
        {
            "MaxConnections": 4,
            "RateLimitPerDay": 3,
            "ReadTimeoutSeconds": 1,
            "IdleTimeoutSeconds": 3,
            "MaxHeaderBytes": 2048,
            "MaxBodyBytes": 1000,
            "ForceHTTPS": True,
            "HSTS": True,
            "ProxyPortTLS": f"127.0.0.1:{tls_port}",
        },
    )
    # The harness health-checks ``port``; ForceHTTPS redirects ProxyPort, so swap the two
    # plain listeners: ``alt_port`` is the redirecting ProxyPort, ``port`` ProxyExceptHTTP.
    gateway.config["ProxyPort"] = f"127.0.0.1:{gateway.alt_port}"
    gateway.config["ProxyExceptHTTP"] = f"127.0.0.1:{gateway.port}"
    gateway.tls_port = tls_port
    with gateway:
        yield gateway


def metrics(gw) -> str:
    return gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()


def test_force_https_redirects_proxy_port_only_and_hsts_on_tls(gw):
    r = http_request(gw.alt_port, "GET", "/tr/v1/img/?a=1", headers={"Host": "shop.test"})
    assert r.status == 301
    assert r.header("location") == f"https://shop.test:{gw.tls_port}/tr/v1/img/?a=1"
    # ACME challenges are never redirected (an unknown token is a plain 404).
    r = http_request(gw.alt_port, "GET", "/.well-known/acme-challenge/nope")
    assert r.status == 404 and r.json() == {"error": "no such ACME challenge"}
    # ProxyExceptHTTP is never redirected and gets no HSTS.
    r = gw.http("GET", "/ping")
    assert r.status == 200 and r.header("strict-transport-security") is None
    r = request(gw.tls_port, "GET", "/ping", tls=insecure_tls())
    assert r.status == 200 and r.body == b"pong"
    assert r.header("strict-transport-security") == "max-age=31536000"


def poll_ping(gw, until: int, timeout: float = 10):
    """``GET /ping`` until it answers ``until``; the last response."""
    deadline = time.monotonic() + timeout
    while (r := gw.http("GET", "/ping")).status != until:
        assert time.monotonic() < deadline, f"/ping still answers {r}, expected {until}"
        time.sleep(0.05)
    return r


def test_connection_cap_answers_503_with_retry_after(gw):
    # Fill the cap with idle connections, then one more asks for something.
    idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(4)]
    try:
        # The kernel completes the handshakes before the gateway accepts them: poll until it
        # has (a /ping accepted before them is still under the cap).
        r = poll_ping(gw, until=503)
        assert r.header("retry-after") == "5"
        assert r.json() == {"error": "too many connections (MaxConnections)"}
        # Over TLS too.
        r = request(gw.tls_port, "GET", "/ping", tls=insecure_tls())
        assert r.status == 503
    finally:
        for s in idle:
            s.close()
    poll_ping(gw, until=200)  # the closes free the cap once the gateway has read them
    assert metric_value(metrics(gw), "sfpl_connections_refused_total") >= 2


def test_daily_limit_per_ip_on_ingestion_routes(gw):
    for _ in range(3):
        assert gw.http("GET", "/tr/v1/img/?ename=limited").status == 200
    r = gw.http("POST", "/tr/v1/str/", json_body={"ename": "limited"})
    assert r.status == 429
    assert r.json() == {"error": "daily request limit reached (RateLimitPerDay)"}
    retry = int(r.header("retry-after"))
    assert 0 < retry <= 86400
    # Until midnight UTC: time to the next day, give or take the request itself.
    assert abs(retry - (86400 - time.time() % 86400)) < 30
    # Another client is counted on its own.
    r = request(gw.port, "GET", "/tr/v1/img/?ename=other", source_ip="127.0.0.3")
    assert r.status == 200
    # Preflights, HEAD and non-ingestion routes are not counted or limited.
    assert gw.http("OPTIONS", "/tr/v1/tr/").status == 200
    assert gw.http("GET", "/health").status == 200
    assert metric_value(metrics(gw), "sfpl_requests_rate_limited_total") >= 1
    # The limiter never logs or keeps the raw address.
    after_start = re.split(r"sfpltracker \S+ ready", gw.log_text(), maxsplit=1)[1]
    assert "127.0.0.1" not in after_start


def test_slow_request_gets_408_after_read_timeout(gw):
    data, elapsed = trickle(gw.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n")
    assert data.startswith(b"HTTP/1.1 408"), data
    assert elapsed < 5  # ReadTimeoutSeconds is 1; the idle timeout (3 s) never fired


def test_idle_connection_is_closed(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as s:
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the gateway
        assert 2 < time.monotonic() - started < 12


def test_header_and_body_limits(gw):
    r = gw.http("GET", "/ping", headers={"X-Big": "a" * 4000})
    assert r.status == 400 and "MaxHeaderBytes" in r.json()["error"]
    r = request(
        gw.port, "POST", "/tr/v1/tr/", body=b"[" + b"{}," * 600 + b"{}]", source_ip="127.0.0.2"
    )
    assert r.status == 413  # from its Content-Length, before the body is read
    assert "MaxBodyBytes" in r.json()["error"]
