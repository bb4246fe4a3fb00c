"""Both HTTP layers (``HTTPServer: twisted`` and ``fast``) give the same answers: status, body
and headers, framing apart (twisted.web chunks an empty body the fast layer gives a length).
Real gateway processes over loopback sockets."""

from __future__ import annotations

import socket

import pytest

from tests.edge_helpers import metric_value
from tests.gateway_process import GatewayProcess

PATHS = [
    b"/ping",
    b"/tr/v1/rdr/?url=%2Flanding&ename=parity",  # a bodiless redirect
    b"/tr/v1/rdr/?url=https%3A%2F%2Fevil.example%2F",  # refused: JSON 400
    b"/no-such-slug",  # the fallbacks' 404
]
FRAMING = {"date", "connection", "content-length", "transfer-encoding"}


def answer(port: int, path: bytes) -> tuple[bytes, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":  # only empty bodies here: "0\r\n\r\n"
        body = b"" if body == b"0\r\n\r\n" else body
    return status.encode(), headers, body


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    with (
        GatewayProcess(tmp_path_factory.mktemp("t"), {"HTTPServer": "twisted"}) as t,
        GatewayProcess(tmp_path_factory.mktemp("f"), {"HTTPServer": "fast"}) as f,
    ):
        yield t, f


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.decode().split("?")[0])
def test_the_layers_answer_alike(both, path):
    t, f = both
    t_status, t_headers, t_body = answer(t.port, path)
    f_status, f_headers, f_body = answer(f.port, path)
    assert f_status == t_status
    assert f_body == t_body
    assert f_headers["server"].startswith("TwistedWeb/")
    same = {k: v for k, v in t_headers.items() if k not in FRAMING}
    assert {k: v for k, v in f_headers.items() if k not in FRAMING} == same


def _limited_gateway(workdir, layer: str) -> GatewayProcess:
    gateway = GatewayProcess(
        workdir, {"HTTPServer": layer, "RateLimitPerDay": 2, "ForceHTTPS": True}
    )
    # ForceHTTPS redirects ProxyPort and the harness health-checks ``port``: ``alt_port`` is
    # the redirecting ProxyPort, ``port`` ProxyExceptHTTP (as in test_edge_limits.py).
    gateway.config["ProxyPort"] = f"127.0.0.1:{gateway.alt_port}"
    gateway.config["ProxyExceptHTTP"] = f"127.0.0.1:{gateway.port}"
    return gateway


@pytest.fixture(scope="module")
def both_limited(tmp_path_factory):
    with (
        _limited_gateway(tmp_path_factory.mktemp("lt"), "twisted") as t,
        _limited_gateway(tmp_path_factory.mktemp("lf"), "fast") as f,
    ):
        yield t, f


def fast_answers(gw) -> float:
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    return metric_value(text, "sfpl_http_fast_answers_total")


def test_force_https_and_rate_limit_answered_alike_and_by_the_fast_layer(both_limited):
    t, f = both_limited
    before = fast_answers(f)
    # ForceHTTPS: every path on ProxyPort is redirected, the API's and ops' too.
    redirected = [b"/ping", b"/tr/v1/img/?ename=x", b"/some/page?q=1"]
    for path in redirected:
        t_status, t_headers, t_body = answer(t.alt_port, path)
        f_status, f_headers, f_body = answer(f.alt_port, path)
        assert t_status.split(b" ")[1] == b"301" and f_status == t_status
        assert f_headers["location"] == "https://localhost" + path.decode()
        assert f_body == t_body
        same = {k: v for k, v in t_headers.items() if k not in FRAMING}
        assert {k: v for k, v in f_headers.items() if k not in FRAMING} == same
    # RateLimitPerDay on ProxyExceptHTTP (not redirected): 2 a day, then 429.
    statuses = {}
    for name, gw in (("twisted", t), ("fast", f)):
        statuses[name] = [answer(gw.port, b"/tr/v1/img/?ename=limited") for _ in range(3)]
    assert [s[0].split(b" ")[1] for s in statuses["fast"]] == [b"200", b"200", b"429"]
    assert [s[0] for s in statuses["fast"]] == [s[0] for s in statuses["twisted"]]
    (_, t_headers, t_body), (_, f_headers, f_body) = statuses["twisted"][2], statuses["fast"][2]
    assert f_body == t_body == b'{"error":"daily request limit reached (RateLimitPerDay)"}\n'
    assert 0 < int(f_headers["retry-after"]) <= 86400
    ignore = FRAMING | {"retry-after"}  # a second apart, perhaps
    same = {k: v for k, v in t_headers.items() if k not in ignore}
    assert {k: v for k, v in f_headers.items() if k not in ignore} == same
    # ... all of them answered without a twisted.web Request.
    assert fast_answers(f) - before == len(redirected) + 3
