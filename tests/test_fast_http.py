"""The HTTP/1.1 fast path (edge/http.py, ``HTTPServer: fast``) over real loopback sockets:
HTTP semantics, limits, and request smuggling refused with 400 and the connection closed."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from twisted.web.http import datetimeToString

from sfpltracker.edge.http import _DateCache
from tests.edge_helpers import metric_value
from tests.gateway_process import GatewayProcess

MAX_BODY = 2000
MAX_HEAD = 2048


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(
        tmp_path_factory.mktemp("fast"),
        {
            "HTTPServer": "fast",
            "MaxConnections": 6,
            "ReadTimeoutSeconds": 1,
            "IdleTimeoutSeconds": 3,
            "MaxHeaderBytes": MAX_HEAD,
            "MaxBodyBytes": MAX_BODY,
        },
    ) as gateway:
        yield gateway


def connect(gw, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)


def read_all(s: socket.socket) -> bytes:
    """Read until the gateway closes the connection (socket.timeout if it never does)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def raw(gw, data: bytes) -> bytes:
    with connect(gw) as s:
        s.sendall(data)
        return read_all(s)


class Answer:
    def __init__(self, status: int, head: bytes, body: bytes):
        self.status, self.head, self.body = status, head, body

    def header(self, name: str) -> str | None:
        m = re.search(rb"(?im)^" + name.encode() + rb":\s*([^\r]*)", self.head)
        return m.group(1).decode() if m else None

    def json(self):
        return json.loads(self.body)


def answers(data: bytes) -> list[Answer]:
    """Each response in ``data`` (bodies with Content-Length; no chunked answers here)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        out.append(Answer(status, head, rest[:length]))
        data = rest[length:]
    return out


def read_answers(s: socket.socket, count: int) -> list[Answer]:
    """Read until ``count`` complete answers are in (the connection stays open)."""
    data = b""
    while True:
        try:
            parsed = answers(data)
        except (ValueError, IndexError):
            parsed = []
        if len(parsed) >= count and all(len(a.body) >= _length(a) for a in parsed):
            return parsed
        chunk = s.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk


def _length(a: Answer) -> int:
    m = re.search(rb"(?im)^content-length:\s*(\d+)", a.head)
    return int(m.group(1)) if m else 0


GET_PING = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"


# -- HTTP semantics ---------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(gw):
    with connect(gw) as s:
        for _ in range(3):
            s.sendall(GET_PING)
            [a] = read_answers(s, 1)
            assert a.status == 200 and a.body == b"pong"
            assert a.header("connection") is None


def test_http_1_0_is_answered_then_closed(gw):
    data = raw(gw, b"GET /ping HTTP/1.0\r\n\r\n")
    [a] = answers(data)
    assert a.status == 200 and a.body == b"pong"


def test_connection_close_is_honoured(gw):
    with connect(gw) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET_PING)
        [a] = answers(read_all(s))  # the second request is never read
    assert a.status == 200 and a.header("connection") == "close"


def test_pipelined_requests_are_answered_in_order(gw):
    # A tracking call answers after its group commit; the ones behind it must wait for it.
    pipeline = (
        b"GET /tr/v1/str/?ename=pipelined_1 HTTP/1.1\r\nHost: x\r\n\r\n"
        + GET_PING
        + b"GET /status?format=object HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /tr/v1/str/?ename=pipelined_2 HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    got = answers(raw(gw, pipeline))
    assert [a.status for a in got] == [200, 200, 200, 200, 404]
    first, second = got[0].json(), got[3].json()
    assert got[1].body == b"pong" and "uptime_seconds" in got[2].json()
    rows = gw.wait_for(
        "SELECT eid, ename FROM events WHERE ename LIKE 'pipelined_%' ORDER BY ename",
        lambda r: len(r) == 2,
    )
    assert [r["eid"] for r in rows] == [first, second]


def test_expect_100_continue_then_the_body(gw):
    body = json.dumps({"ename": "after_continue"}).encode()
    with connect(gw) as s:
        s.sendall(
            b"POST /tr/v1/str/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += s.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        [a] = read_answers(s, 1)
    assert a.status == 200
    gw.wait_for(f"SELECT 1 FROM events WHERE eid = '{a.json()}'", lambda r: len(r) == 1)


def test_chunked_request_body(gw):
    body = json.dumps([{"ename": "chunked_1"}, {"ename": "chunked_2"}]).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:]))
    data = raw(
        gw,
        b"POST /tr/v1/str/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunks + b"0\r\n\r\n",
    )
    [a] = answers(data)
    assert a.status == 200 and len(a.json()) == 2
    gw.wait_for("SELECT 1 FROM events WHERE ename LIKE 'chunked_%'", lambda r: len(r) == 2)


def test_head_has_the_length_but_no_body(gw):
    with connect(gw) as s:
        s.sendall(b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n" + GET_PING)
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"pong"):
            data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 4" in head
    assert rest.startswith(b"HTTP/1.1 200")  # no body between the two answers


def test_date_header_and_its_per_second_cache(gw):
    [a] = answers(raw(gw, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", a.header("date"))
    cache = _DateCache()
    before = int(time.time())
    value = cache()
    after = int(time.time())
    assert value in {datetimeToString(s) for s in range(before, after + 1)}
    assert cache() is value or int(time.time()) != after  # the same object within a second


# -- limits -----------------------------------------------------------------------------------


def test_head_over_max_header_bytes_is_400_and_closed(gw):
    data = raw(gw, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n")
    [a] = answers(data)
    assert a.status == 400 and "MaxHeaderBytes" in a.json()["error"]


def test_request_line_over_the_limit_is_refused_and_closed(gw):
    data = raw(gw, b"GET /tr/v1/tr/" + b"k/v/" * MAX_HEAD + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    [a] = answers(data)
    assert a.status == 414 and "MaxHeaderBytes" in a.json()["error"]


def test_declared_body_over_max_body_bytes_is_413_before_it_is_sent(gw):
    with connect(gw) as s:
        # ReadTimeoutSeconds would answer 408 if the gateway waited for the body.
        s.sendall(b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        [a] = answers(read_all(s))
    assert a.status == 413 and "MaxBodyBytes" in a.json()["error"]


def test_chunked_body_over_max_body_bytes_is_413(gw):
    chunk = b"x" * 1500
    data = raw(
        gw,
        b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2,
    )
    [a] = answers(data)
    assert a.status == 413 and "MaxBodyBytes" in a.json()["error"]


def test_slowloris_gets_408_and_close(gw):
    with connect(gw) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        data = b""
        try:
            for _ in range(100):  # one byte every 0.1 s keeps any idle timer quiet
                s.sendall(b"X")
                time.sleep(0.1)
        except OSError:  # closed by the gateway
            pass
        data = read_all(s)
    [a] = answers(data)
    assert a.status == 408 and "ReadTimeoutSeconds" in a.json()["error"]


def test_idle_connection_is_closed_without_an_answer(gw):
    with connect(gw, timeout=20) as s:
        s.sendall(GET_PING)
        read_answers(s, 1)
        assert s.recv(100) == b""  # IdleTimeoutSeconds (3) later


def test_a_kept_alive_connection_idles_out_after_its_answer_not_the_read_deadline(gateway_factory):
    """After an answer the idle timer counts, not the read deadline armed at connect (the
    connection stayed open for ReadTimeoutSeconds; seen as test_log_privacy timing out in CI)."""
    gw = gateway_factory({"HTTPServer": "fast", "ReadTimeoutSeconds": 120, "IdleTimeoutSeconds": 1})
    with connect(gw, timeout=60) as s:
        s.sendall(GET_PING)
        read_answers(s, 1)
        assert s.recv(100) == b""  # closed after IdleTimeoutSeconds; 120 s would time out


def test_max_connections_answers_503(gw):
    idle = [connect(gw) for _ in range(6)]
    try:
        deadline = time.monotonic() + 10
        while True:
            [a] = answers(raw(gw, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
            if a.status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert a.status == 503 and a.header("retry-after") == "5"
        assert a.json() == {"error": "too many connections (MaxConnections)"}
    finally:
        for s in idle:
            s.close()


# -- request smuggling: 400, and nothing after it is read -------------------------------------

SMUGGLED = b"GET /tr/v1/tr/?ename=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLING = {
    "content-length and transfer-encoding": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two content-lengths": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 2\r\nContent-Length: 4\r\n\r\n{}",
    "te chunked, identity": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te identity, chunked": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    "te gzip": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "invalid chunk size": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "negative chunk size": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
    "chunk size overflow": b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n1000000000000000000002\r\n{}\r\n0\r\n\r\n",
    "bare LF": b"GET /ping HTTP/1.1\nHost: x\n\n",
    "bare LF in the head": b"GET /ping HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "obs-fold": b"GET /ping HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "NUL in a value": b"GET /ping HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "CR in a value": b"GET /ping HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "space before the colon": b"GET /ping HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
}


@pytest.mark.parametrize("case", list(SMUGGLING), ids=lambda c: c.replace(" ", "-"))
def test_smuggling_is_refused_with_400_and_closed(gw, case):
    # A good request first: it is answered, then the refusal, then nothing (the smuggled
    # request after it is never read; read_all returning proves the connection closed).
    got = answers(raw(gw, GET_PING + SMUGGLING[case] + SMUGGLED))
    assert [a.status for a in got] == [200, 400], got
    assert got[1].header("connection") == "close" and got[1].json()["error"]
    assert gw.query("SELECT eid FROM events WHERE ename = 'smuggled'") == []


# -- the hot routes -----------------------------------------------------------------------------


def fast_answers(gw) -> float:
    """Requests the fast layer answered without a twisted.web Request (/metrics is not one)."""
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    return metric_value(text, "sfpl_http_fast_answers_total")


def test_hot_routes_are_answered_without_twisted_web(gw):
    # The answers are the resources' own (same bodies, cookies, types as behind twisted.web),
    # with the same Server header, but no twisted.web Request made them.
    before = fast_answers(gw)
    pipeline = (
        GET_PING
        + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /tr/v1/img/?ename=hot_img HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /tr/v1/tr/ename/hot_tr?k=v HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    ping, health, img, tr, status = answers(raw(gw, pipeline))
    for a in (ping, health, img, tr, status):
        assert a.status == 200 and a.header("server").startswith("TwistedWeb"), a.head
    assert fast_answers(gw) - before == 4  # all but /status
    assert ping.body == b"pong" and health.json()["status"] == "ok"
    assert img.header("content-type") == "image/gif" and img.body.startswith(b"GIF89a")
    assert "vid=" in img.header("set-cookie")
    rows = gw.wait_for(
        "SELECT ename, params FROM events WHERE ename IN ('hot_img', 'hot_tr') ORDER BY ename",
        lambda r: len(r) == 2,
    )
    assert [r["ename"] for r in rows] == ["hot_img", "hot_tr"]
    assert rows[1]["params"] == {"k": "v"}


def test_http_1_1_without_host_is_400_on_the_fast_routes_too(gw):
    # RFC 9112 3.2; /ping and /tr/ are answered without twisted.web, which skipped the check.
    for path in (b"/ping", b"/tr/v1/tr/?ename=nohost", b"/elsewhere"):
        [a] = answers(raw(gw, b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % path))
        assert a.status == 400 and a.json() == {"error": "missing Host header"}, (path, a.body)
    [a] = answers(raw(gw, b"GET /ping HTTP/1.0\r\n\r\n"))
    assert (a.status, a.body) == (200, b"pong")


def test_absolute_form_targets_are_routed_on_the_fast_layer_too(gw):
    # RFC 9112 3.2.2 (was 404): the fast routes miss it, twisted.web's front routes it.
    request = b"GET http://x/ping HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n"
    [a] = answers(raw(gw, request))
    assert (a.status, a.body) == (200, b"pong")


def test_posts_redirects_and_misses_are_answered_without_twisted_web(gw):
    # The tracking POSTs, /ltv/, /rdr/ and /xrdr/ and a path no fallback serves: the same
    # resources' answers and rows, without a twisted.web Request.
    before = fast_answers(gw)
    post = json.dumps([{"ename": "fast_post_1"}, {"ename": "fast_post_2"}]).encode()
    ltv = json.dumps({"amt": 12.5, "currency": "EUR", "ename": "fast_ltv"}).encode()
    pipeline = (
        b"POST /tr/v1/str/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
        % (len(post), post)
        + b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n{not"
        + b"POST /tr/v1/ltv/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(ltv), ltv)
        + b"GET /tr/v1/rdr/?url=%2Flanding&ename=fast_rdr HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"POST /tr/v1/xrdr/?url=%2Felsewhere&ename=fast_xrdr HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\n\r\n"
        + b"GET /tr/v1/rdr/?url=https%3A%2F%2Fevil.example%2F HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /no-such-slug HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    stored, bad, payment, rdr, xrdr, refused, miss = answers(raw(gw, pipeline))
    assert fast_answers(gw) - before == 7
    assert stored.status == 200 and len(stored.json()) == 2
    assert bad.status == 400 and "malformed JSON" in bad.json()["error"]
    assert payment.status == 200
    assert (rdr.status, rdr.header("location")) == (302, "/landing")
    assert rdr.header("set-cookie") is None  # /rdr/ is a server event: no visitor cookies
    assert (xrdr.status, xrdr.header("location")) == (302, "/elsewhere")
    assert "vid=" in xrdr.header("set-cookie")
    assert refused.status == 400 and "not allowed" in refused.json()["error"]
    assert miss.status == 404 and miss.json() == {"error": "not found"}
    rows = gw.wait_for(
        "SELECT ename FROM events WHERE ename LIKE 'fast\\_%' ORDER BY ename",
        lambda r: len(r) == 4,
    )
    assert [r["ename"] for r in rows] == ["fast_post_1", "fast_post_2", "fast_rdr", "fast_xrdr"]
    gw.wait_for("SELECT 1 FROM payments WHERE currency = 'EUR'", lambda r: len(r) == 1)
