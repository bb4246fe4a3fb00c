"""Reverse proxy against a real upstream process, through a real gateway (HTTP and HTTPS)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import socket
import ssl
import time
import warnings

import pytest
from websockets.asyncio.client import connect as ws_connect_async
from websockets.sync.client import connect as ws_connect

from tests.edge_helpers import (
    UpstreamProcess,
    insecure_tls,
    metric_value,
    peak_rss_kib,
    request,
)
from tests.edge_upstream import PATTERN
from tests.gateway_process import GatewayProcess
from tests.servers import free_port

MB = 1024 * 1024
# Peak-RSS growth (KiB) a streamed 50 MB body may show. Measured (6 downloads of 50 MB on one
# gateway, RSS sampled every 20 ms): a step of ~16 MB in 1-2 of them, kept afterwards, at
# different downloads from run to run (also with MALLOC_MMAP_THRESHOLD_ fixed), with nothing
# held by the proxy; under load it failed the former 10 MB bound in 1 of 3 runs of this file.
RSS_NOISE = 30 * 1024


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with UpstreamProcess(tmp_path_factory.mktemp("upstream")) as up:
        yield up


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):
    up = f"http://127.0.0.1:{upstream.port}"
    tls_port = free_port()
    sites = {
        "*": {
            "Proxy": {
                "/api/": up,
                "/v2": f"{up}/echo/mapped",
                "/ws": f"http://127.0.0.1:{upstream.ws_port}",
                "/down/": f"http://127.0.0.1:{free_port()}",
            }
        },
        "catchall.test": {"Proxy": {"/": up}},
        "tracked.test": {"Proxy": {"/": up}, "ProxyUrlFilter": "^/echo/skip"},
    }
    with GatewayProcess(
        tmp_path_factory.mktemp("gw"),
        {
            "Sites": sites,
            "ProxyPortTLS": f"127.0.0.1:{tls_port}",
            "ProxyTimeoutSeconds": 1.5,
            "Batching": {"events": {"Strategy": "immediate"}},
        },
    ) as gateway:
        gateway.tls_port = tls_port
        yield gateway


def test_proxy_passes_request_and_answer_with_forwarded_headers(gw, upstream):
    r = gw.http(
        "GET",
        "/api/echo?x=1&y=2",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "Accept": "text/x-test",
            "Connection": "keep-alive, x-private",
            "X-Private": "hop-by-hop: listed in Connection",
        },
    )
    assert r.status == 200, r
    echo = r.json()
    assert echo["method"] == "GET" and echo["uri"] == "/api/echo?x=1&y=2"
    h = echo["headers"]
    # The peer (not trusted) replaces whatever the client claimed.
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == [f"127.0.0.1:{gw.port}"]
    assert h["host"] == [f"127.0.0.1:{upstream.port}"]
    assert h["accept"] == ["text/x-test"]
    assert "x-private" not in h and "connection" not in h
    # The upstream's headers come back; its hop-by-hop ones do not.
    assert r.header("x-upstream") == "yes"
    assert r.header("keep-alive") is None
    assert r.header("x-hop-private") is None
    assert r.header("content-type") == "application/json"


def test_proxy_maps_prefix_to_upstream_path(gw):
    r = gw.http("GET", "/v2/deeper/x?q=1")
    assert r.status == 200, r
    assert r.json()["uri"] == "/echo/mapped/deeper/x?q=1"
    # "/v2" does not match "/v2x": that falls through to the 404 of the gateway.
    assert gw.http("GET", "/v2x").status == 404


def test_proxy_over_https_says_so(gw):
    r = request(gw.tls_port, "POST", "/api/echo", body=b"over tls", tls=insecure_tls())
    assert r.status == 200, r
    echo = r.json()
    assert echo["headers"]["x-forwarded-proto"] == ["https"]
    assert echo["body_len"] == 8


def test_small_bodies_both_ways(gw):
    body = b"hello upstream" * 100
    r = gw.http("PUT", "/api/echo/put", body=body, headers={"Content-Type": "text/plain"})
    assert r.status == 200, r
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert r.json()["headers"]["content-type"] == ["text/plain"]
    # A chunked (no Content-Length) answer arrives whole.
    r = gw.http("GET", "/api/chunked/300")
    assert r.status == 200 and r.body == b"x" * 300_000
    r = gw.http("GET", "/api/status/418")
    assert r.status == 418 and r.body == b"status"
    r = gw.http("GET", "/api/status/304")
    assert r.status == 304 and r.body == b"" and r.header("content-length") is None
    r = gw.http("HEAD", "/api/echo")
    assert r.status == 200 and r.body == b"" and r.header("x-upstream") == "yes"


def _stream_upload(port: int, path: str, total: int, tls=None, chunked: bool = False):
    """Send ``total`` bytes of PATTERN as a body, chunk by chunk; return (response, sha256)."""
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=tls)
        if tls
        else http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    )
    digest = hashlib.sha256()
    conn.putrequest("POST", path)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(total))
    conn.endheaders()
    sent = 0
    while sent < total:
        chunk = PATTERN[: min(len(PATTERN), total - sent)] * 1
        digest.update(chunk)
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        sent += len(chunk)
    if chunked:
        conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, digest.hexdigest()


def test_50mb_upload_is_streamed_not_buffered(gw):
    before = peak_rss_kib(gw.proc.pid)
    status, body, sha = _stream_upload(gw.port, "/api/echo/upload", 50 * MB)
    assert status == 200, body
    echo = json.loads(body)
    assert echo["body_len"] == 50 * MB and echo["body_sha256"] == sha
    grown = peak_rss_kib(gw.proc.pid) - before
    # Buffering the body would add 50 MB (plus copies). The bytes held are bounded exactly by
    # the metric below; the process's RSS (chDB's threads live in it) also takes one-off steps
    # of up to ~16 MB that no proxying causes (RSS_NOISE), so it bounds only against buffering.
    assert grown < RSS_NOISE, f"peak RSS grew by {grown} KiB"
    metrics = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    assert metric_value(metrics, "sfpl_proxy_request_body_bytes_total") >= 50 * MB
    assert metric_value(metrics, "sfpl_proxy_request_body_pending_peak_bytes") < 1 * MB


def test_chunked_upload_over_tls_is_streamed(gw):
    status, body, sha = _stream_upload(
        gw.tls_port, "/api/echo/tls-upload", 8 * MB, tls=insecure_tls(), chunked=True
    )
    assert status == 200, body
    echo = json.loads(body)
    assert echo["body_len"] == 8 * MB and echo["body_sha256"] == sha
    assert "transfer-encoding" in echo["headers"]  # passed on chunked, not collected


def test_50mb_download_is_streamed(gw):
    before = peak_rss_kib(gw.proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
    conn.request("GET", f"/api/big/{50 * MB}")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-length") == str(50 * MB)
    digest, n = hashlib.sha256(), 0
    while chunk := resp.read(256 * 1024):
        digest.update(chunk)
        n += len(chunk)
        if n < 4 * MB:
            time.sleep(0.01)  # a slow reader for a while: the upstream must be paused
    conn.close()
    assert n == 50 * MB
    expected = hashlib.sha256()
    for _ in range(50 * MB // len(PATTERN)):
        expected.update(PATTERN)
    assert digest.hexdigest() == expected.hexdigest()
    grown = peak_rss_kib(gw.proc.pid) - before
    assert grown < RSS_NOISE, f"peak RSS grew by {grown} KiB"  # buffering: 50 MB or more


def test_upstream_down_is_502_and_slow_upstream_is_504(gw):
    r = gw.http("GET", "/down/anything")
    assert r.status == 502
    assert "refused" in r.json()["error"]
    started = time.monotonic()
    r = gw.http("GET", "/api/slow/10")
    assert r.status == 504
    assert r.json() == {"error": "upstream did not answer in time"}
    assert time.monotonic() - started < 8  # ProxyTimeoutSeconds 1.5, not the 10 s upstream
    metrics = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    assert metric_value(metrics, "sfpl_proxy_upstream_errors_total", 'status="502"') >= 1
    assert metric_value(metrics, "sfpl_proxy_upstream_errors_total", 'status="504"') >= 1


def test_upstream_stalling_mid_body_cuts_the_connection(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("GET", "/api/stall")
    resp = conn.getresponse()
    assert resp.status == 200
    started = time.monotonic()
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        resp.read()
    assert time.monotonic() - started < 10  # cut after ProxyTimeoutSeconds, not left hanging
    conn.close()


def test_websocket_pass_through(gw):
    with ws_connect(f"ws://127.0.0.1:{gw.port}/ws/chat", open_timeout=10) as ws:
        headers = json.loads(ws.recv(timeout=10))
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["upgrade"].lower() == "websocket"
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        big = bytes(range(256)) * 4096  # 1 MiB binary message
        ws.send(big)
        assert ws.recv(timeout=30) == big


def test_websocket_pass_through_over_tls(gw):
    # asyncio's client, not the sync one: the sync client reads its TLS socket in a thread
    # while it writes the opening handshake from another, which Python's SSL sockets do not
    # support; now and then its request never left (a handshake time-out: 1-2 in 120 under
    # load here, and the gateway's log had no such request; websockets issue #1648).
    async def talk():
        url = f"wss://127.0.0.1:{gw.tls_port}/ws"
        async with ws_connect_async(url, ssl=insecure_tls(), open_timeout=10) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["x-forwarded-proto"] == "https"
            for i in range(20):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 10) == f"m{i}"

    asyncio.run(talk())


def test_gateway_routes_come_before_a_catch_all_proxy(gw):
    host = {"Host": "catchall.test"}
    r = gw.http("GET", "/health", headers=host)
    assert r.status == 200 and "store" in r.json()
    r = gw.http("POST", "/tr/v1/tr/", json_body={"ename": "not_proxied"}, headers=host)
    assert r.status == 200 and r.body == b""
    r = gw.http("POST", "/anything/else", body=b"abc", headers=host)
    assert r.status == 200 and r.json()["uri"] == "/anything/else"
    gw.wait_for(
        "SELECT count() AS n FROM sfpla.events WHERE ename = 'not_proxied'",
        lambda rows: rows[0]["n"] == 1,
    )


def test_proxied_requests_tracked_per_proxy_url_filter(gw):
    host = {"Host": "tracked.test"}
    assert gw.http("GET", "/echo/page?campaign=spring", headers=host).status == 200
    assert gw.http("GET", "/echo/skip/me", headers=host).status == 200
    rows = gw.wait_for(
        "SELECT ename, etyp, url, campaign, server FROM sfpla.events WHERE ename = 'proxy'",
        lambda rows: len(rows) >= 1,
    )
    time.sleep(0.5)  # give a wrongly tracked /echo/skip request the time to show up
    rows = gw.query(
        "SELECT ename, etyp, url, campaign, server FROM sfpla.events WHERE ename = 'proxy'"
    )
    assert len(rows) == 1, rows
    assert rows[0]["url"] == "http://tracked.test/echo/page?campaign=spring"
    assert (rows[0]["etyp"], rows[0]["server"]) == ("request", 1)
    assert rows[0]["campaign"].lower() == "spring"  # query fields land as with /tr/ GET


def test_client_leaving_mid_upload_does_not_hurt(gw):
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    sock.sendall(PATTERN * 10)
    sock.close()
    assert gw.http("GET", "/api/echo").status == 200


def test_tls_versions_and_ciphers(gw):
    tls12 = insecure_tls()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", gw.tls_port)) as raw:
        with tls12.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
            name, _, _ = tls.cipher()
            assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
    with socket.create_connection(("127.0.0.1", gw.tls_port)) as raw:
        with insecure_tls().wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
    # A client willing to speak TLS 1.1 (security level 0, so it really offers it) is refused.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", gw.tls_port)) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="localhost")


def test_upload_to_a_down_upstream_is_answered_502_and_closed(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as s:
        s.sendall(b"POST /down/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        s.sendall(PATTERN * 4)  # 64 KiB of the promised 5 MB
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), data[:300]
    assert b"Connection: close" in head
    assert b"connection refused" in body
    assert gw.http("GET", "/api/echo").status == 200  # and the gateway is fine


def _read_answers(data: bytes, methods: list[bytes]) -> list[tuple[int, bytes, bytes]]:
    """(status, head, body) of each answer: Content-Length, chunked, or none (HEAD, 304)."""
    out = []
    for method in methods:
        head, _, data = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields.setdefault(name.strip().lower(), []).append(value.strip())
        body = b""
        if method == b"HEAD" or status in (204, 304):
            pass
        elif b"content-length" in fields:
            n = int(fields[b"content-length"][0])
            body, data = data[:n], data[n:]
        elif fields.get(b"transfer-encoding") == [b"chunked"]:
            while True:
                size_line, _, data = data.partition(b"\r\n")
                n = int(size_line, 16)
                body, data = body + data[:n], data[n + 2 :]
                if n == 0:
                    break
        out.append((status, head, body))
    return out


def test_proxied_answers_keep_alive_and_pipelined_in_order(gw):
    # Bodiless proxied requests among others on one connection: each answer framed (a length,
    # or chunks when the upstream gave none), with one Date header (the upstream's), in order.
    requests = [
        (b"GET", b"/api/echo?x=1"),
        (b"GET", b"/api/chunked/3"),
        (b"GET", b"/ping"),
        (b"HEAD", b"/api/echo"),
        (b"GET", b"/api/status/304"),
        (b"GET", b"/down/x"),
        (b"GET", b"/api/status/418"),
    ]
    data = b"".join(b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % r for r in requests[:-1])
    data += b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % requests[-1]
    fast = "sfpl_http_fast_answers_total"
    before = metric_value(
        gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode(), fast
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    answers = _read_answers(got, [m for m, _ in requests])
    assert [a[0] for a in answers] == [200, 200, 200, 200, 304, 502, 418]
    (_, echo_head, echo), (_, _, chunked), (_, _, pong), (_, head_head, _) = answers[:4]
    assert json.loads(echo)["uri"] == "/api/echo?x=1" and b"X-Upstream: yes" in echo_head
    assert chunked == b"x" * 3000 and pong == b"pong"
    assert b"X-Upstream: yes" in head_head
    assert "upstream unavailable" in json.loads(answers[5][2])["error"]
    # One Server header each: the upstream's, or the gateway's own (on its 502), as the
    # twisted.web layer writes them.
    for _, head, _ in answers:
        assert head.lower().count(b"\r\nserver:") == 1, head
    assert b"Server: TwistedWeb/" in answers[5][1]
    # ... and all answered by the fast layer (HTTPServer's default), not a twisted.web Request.
    after = metric_value(
        gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode(), fast
    )
    assert after - before == len(requests)
    assert answers[6][2] == b"status"
    for _, head, _ in answers:
        assert head.lower().count(b"\r\ndate:") == 1, head


def test_proxied_bodies_pipelined_answered_in_order_by_the_fast_layer(gw):
    # Requests with bodies (a length, or chunked) among bodiless ones on one kept-alive
    # connection: each body reaches the upstream whole, the answers come back in order, and
    # the fast layer answers them all (no twisted.web Request for a proxied body).
    big = PATTERN * 20  # 320 KiB
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"abc", big, b"z"))
    requests = [
        (b"POST", b"/api/echo/1", b"Content-Length: 5\r\n", b"hello"),
        (b"PUT", b"/api/echo/2", b"Transfer-Encoding: chunked\r\n", chunked + b"0\r\n\r\n"),
        (b"GET", b"/ping", b"", b""),
        (b"PATCH", b"/api/echo/3", b"Content-Length: %d\r\n" % len(big), big),
        (b"POST", b"/api/echo/4", b"Connection: close\r\nContent-Length: 2\r\n", b"ok"),
    ]
    sent = [b"hello", b"abc" + big + b"z", b"", big, b"ok"]
    data = b"".join(
        b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n%s" % (m, p, h, b) for m, p, h, b in requests
    )
    fast = "sfpl_http_fast_answers_total"
    before = metric_value(
        gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode(), fast
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    answers = _read_answers(got, [r[0] for r in requests])
    assert [a[0] for a in answers] == [200] * 5
    assert answers[2][2] == b"pong"
    for (method, path, *_), body, (_, _, answer) in zip(requests, sent, answers, strict=True):
        if path == b"/ping":
            continue
        echo = json.loads(answer)
        assert (echo["method"].encode(), echo["uri"].encode()) == (method, path)
        assert echo["body_len"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    after = metric_value(
        gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode(), fast
    )
    assert after - before == len(requests)


def test_connect_to_a_proxied_route_is_405_not_502(gw):
    """A reverse proxy forwards no tunnels (found by the fuzzer: CONNECT with a body was a 502
    "RequestGenerationFailed", a 5xx for client input)."""
    for body in (None, b"[]"):
        r = gw.http("CONNECT", "/api/echo", body=body)
        assert r.status == 405, r
        assert r.json() == {"error": "CONNECT is not forwarded"}
        assert "GET" in r.header("allow")
