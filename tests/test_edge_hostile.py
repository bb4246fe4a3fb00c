"""Hostile URLs, Host headers and request heads through a real gateway (issue 12, repros 4 and 6).

Every answer is a 4xx with a short JSON reason, never a 500, a silent close or a wait for the
read timeout: file paths the OS refuses (name too long, symlink loop, not a directory), slugs
no link can have (``%0d%0a``), odd Host headers, heads over ``MaxHeaderBytes`` and lines that
end in a bare LF. Raw sockets where ``http.client`` would not send the bytes.
"""

from __future__ import annotations

import json
import os
import re
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from sfpltracker.ingest.ids import uuid4
from sfpltracker.links.cache import LinkCache
from sfpltracker.links.repository import LinkRepository
from tests.gateway_process import GatewayProcess
from tests.test_links_unit import NOW, make_link
from tests.test_shortlinks import create_account

HEAD_LIMIT = 16384  # MaxHeaderBytes (the default)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    site, pub = base / "site", base / "pub"
    for root in (site, pub):
        (root / "d").mkdir(parents=True)
        (root / "index.html").write_bytes(b"<p>home</p>")
        (root / "f.txt").write_bytes(b"file")
        os.symlink("loop", root / "loop")  # ELOOP on every lookup through it
    return base


@pytest.fixture(scope="module")
def gw(tmp_path_factory, dirs):
    config = {
        "Sites": {"static.test": {"Root": str(dirs / "site")}},
        "StaticDirectory": str(dirs / "pub"),
        # Long enough that an answer before it is the gateway's own, never a 408.
        "ReadTimeoutSeconds": 60,
        "LoginFailureLimit": 0,
    }
    with GatewayProcess(tmp_path_factory.mktemp("gw"), config) as gateway:
        yield gateway


def raw(gw, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` and read until the gateway closes the connection (socket.timeout if not)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def answers(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in ``data`` (bodies with Content-Length)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


def reason(body: bytes) -> str:
    return json.loads(body)["error"]


# -- file paths: /tr/v1/pub/ and static sites -------------------------------------------------

IMPOSSIBLE_PATHS = [
    "a" * 300,  # a segment over NAME_MAX: ENAMETOOLONG (was a 500)
    "d/" + "b" * 256 + "/x",
    "a/" * 2100,  # over PATH_MAX in all
    "./" * 1500 + "f.txt/x",  # many segments, then ENOTDIR
    "loop",  # ELOOP (was a 500)
    "loop/x",
    "f.txt/x",  # ENOTDIR
    "%00",
    "a%00b",
    "%ff%fe",  # not UTF-8
    "%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2fetc/passwd",
    "%c0%ae%c0%ae/etc/passwd",  # overlong UTF-8 dots
    "d/%2e%2e%2f%2e%2e%2fetc/passwd",
]


@pytest.mark.parametrize("relative", IMPOSSIBLE_PATHS, ids=lambda p: p[:24])
def test_paths_the_os_refuses_are_404_with_a_reason(gw, relative):
    for path, host in ((f"/tr/v1/pub/{relative}", "localhost"), (f"/{relative}", "static.test")):
        r = gw.http("GET", path, headers={"Host": host})
        assert r.status == 404, (path[:60], r)
        assert reason(r.body), r
    # The same files are still served.
    assert gw.http("GET", "/tr/v1/pub/f.txt").body == b"file"
    assert gw.http("GET", "/f.txt", headers={"Host": "static.test"}).body == b"file"


def test_rest_path_pairs_with_huge_or_many_segments_never_fail(gw):
    for path in ("/tr/v1/tr/ename/" + "v" * 10000, "/tr/v1/tr/ename/x" + "/k/v" * 2000):
        r = gw.http("GET", path)
        assert r.status in (200, 400), r  # stored, or refused by the params bounds
        assert r.status == 200 or reason(r.body)
    # A request line longer than MaxHeaderBytes: 414 with a reason (was a silent close).
    data = raw(gw, b"GET /tr/v1/tr/" + b"k/v/" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    [(status, body)] = answers(data)
    assert status == 414 and "MaxHeaderBytes" in reason(body)
    assert gw.http("GET", "/ping").body == b"pong"


# -- short links: slugs no link can have ------------------------------------------------------


def test_slug_with_crlf_is_bad_input_never_an_outage(gw):
    account = create_account(gw, "acme")
    base = f"/tr/v1/rpi/redirect/{account['uid']}/{account['secret']}"
    ok = gw.http(
        "POST", base, json_body={"urlfrom": "links.test/spring", "urlto": "https://e.test/"}
    )
    assert ok.status == 200, ok
    for slug in ("x%0d%0a", "%0d%0aSet-Cookie:%20a=b", "x%00", "x%5c", "x%09y"):
        body = {"urlfrom": f"https://links.test/{slug}", "urlto": "https://e.test/"}
        r = gw.http("POST", base, json_body=body)
        assert r.status == 400 and "from path" in reason(r.body), (slug, r)  # was 503
        r = gw.http("DELETE", f"{base}?urlfrom=links.test/{slug.replace('%', '%25')}")
        assert r.status == 400, (slug, r)  # was 503
        # Served: a 404 like any other miss, and the link that exists still works.
        r = gw.http("GET", f"/{slug}", headers={"Host": "links.test"})
        assert r.status == 404 and reason(r.body), r
    assert gw.http("GET", "/spring", headers={"Host": "links.test"}).status == 302
    lists = f"/tr/v1/rpi/redirects/{account['uid']}/{account['secret']}"
    for host in ("links%0a.test", "links%5c.test", "links%00.test"):
        r = gw.http("GET", f"{lists}/{host}")
        assert r.status == 400 and reason(r.body) == "Bad request (host)", (host, r)  # was 503
    assert (
        gw.http("GET", f"{lists}/links.test").json()["results"][0]["urlfrom"] == "links.test/spring"
    )
    assert "is not available" not in gw.log_text()


@pytest_twisted.inlineCallbacks
def test_impossible_slug_is_never_looked_up_in_the_store(store):
    # lru mode: every cold key would cost a store query; one with CR/LF made that query fail.
    repo = LinkRepository(store, reactor)
    link = make_link("links.test", "/one", "https://e.test/")
    yield repo.write(link, "create", "https://links.test/one", uuid4(), NOW)
    cache = LinkCache(repo, reactor, max_index=0)
    yield cache.start()
    try:
        assert cache.mode == "lru"
        queries = repo.queries
        for key in ("links.test/x\r\n", "links.test/\x00", "links.test/a\\"):
            result = cache.lookup(key)
            if isinstance(result, defer.Deferred):
                result = yield result
            assert result is None
        assert repo.queries == queries
        assert (yield cache.lookup("links.test/fine")) is None
        assert repo.queries == queries + 1  # a possible key is still looked up
    finally:
        yield cache.stop()


# -- Host headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts, why",
    [
        ([b"static.test", b"evil.test"], "more than one Host header"),
        ([b"static.test/../x"], "malformed Host header"),
        ([b"user@static.test"], "malformed Host header"),
        ([b"static.test\tx"], "malformed Host header"),
        ([b"static.test:80:80"], "malformed Host header"),
        ([b"a" * 300], "malformed Host header"),
        ([b"[::1"], "malformed Host header"),
        ([b"caf\xc3\xa9.test"], "malformed Host header"),
    ],
)
def test_odd_host_headers_are_400(gw, hosts, why):
    head = b"".join(b"Host: " + h + b"\r\n" for h in hosts)
    [(status, body)] = answers(raw(gw, b"GET / HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n"))
    assert status == 400 and reason(body) == why


def test_usual_host_headers_still_work(gw):
    for host in ("static.test", "STATIC.test:8080", "127.0.0.1:1", "[::1]:80"):
        r = gw.http("GET", "/ping", headers={"Host": host})
        assert r.status == 200, (host, r)
    assert gw.http("GET", "/", headers={"Host": "Static.Test:99"}).body == b"<p>home</p>"


# -- request heads: MaxHeaderBytes, malformed lines, bare LF ----------------------------------


def test_one_header_over_max_header_bytes_is_400_then_close(gw):
    data = raw(gw, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    [(status, body)] = answers(data)  # was: closed without an answer
    assert status == 400 and "MaxHeaderBytes" in reason(body)


def test_headers_over_max_header_bytes_in_all_are_400_then_close(gw):
    many = b"".join(b"X-H%d: %s\r\n" % (n, b"a" * 500) for n in range(40))  # 20 KB in all
    data = raw(gw, b"GET /ping HTTP/1.1\r\nHost: x\r\n" + many + b"\r\nGET /ping HTTP/1.1\r\n\r\n")
    [(status, body)] = answers(data)  # was: a bare 400 without a reason; nothing after it read
    assert status == 400 and "MaxHeaderBytes" in reason(body)
    # Just under the limit is fine.
    fits = b"".join(b"X-H%d: %s\r\n" % (n, b"a" * 500) for n in range(30))
    [(status, body)] = answers(
        raw(gw, b"GET /ping HTTP/1.1\r\nHost: x\r\n" + fits + b"Connection: close\r\n\r\n")
    )
    assert (status, body) == (200, b"pong")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ping HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n{}",  # both: a smuggling classic
        b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["header", "cl-and-te", "chunk-size"],
)
def test_malformed_requests_are_400_with_a_reason(gw, request_bytes):
    [(status, body)] = answers(raw(gw, request_bytes))  # was: a bare 400 without a reason
    assert status == 400 and reason(body) == "malformed request"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ping HTTP/1.1\nHost: x\n\n",  # the printf | nc
        b"GET /ping HTTP/1.1\r\nHost: x\nX-Other: y\r\n\r\n",  # one bare LF among CRLFs
        b"GET /ping HTTP/1.1\r\nHost: x\r\n\n",  # the blank line
        b"GET /ping HTTP/1.1\rHost: x\r\r",  # bare CR
    ],
    ids=["all-lf", "one-lf", "blank-lf", "bare-cr"],
)
def test_bare_line_endings_are_answered_400_at_once(gw, request_bytes):
    # ReadTimeoutSeconds is 60 and the socket gives up after 10 s: an answer is the gateway's
    # refusal, not the 408 it used to send after the read timeout.
    [(status, body)] = answers(raw(gw, request_bytes, timeout=10))
    assert status == 400 and reason(body) in (
        "request lines must end in CRLF",
        "malformed request",
    )


def test_pipelined_requests_and_bodies_with_lf_still_work(gw):
    body = b'[{"ename":"lf"}]\n\n'  # LFs in a body are data, not line endings

    def post(path):
        return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path + (
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    get = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    # /ping refuses a POST at once (the parser is back at a request line, LFs just read);
    # /tr/ answers once the events are spooled.
    data = raw(gw, post(b"/ping") + get + post(b"/tr/v1/tr/") + get + last)
    assert [status for status, _ in answers(data)] == [405, 200, 200, 200, 200], data


def test_a_method_a_route_does_not_take_is_405_not_501(gw):
    for method, path in (("DELETE", "/tr/v1/pub/f.txt"), ("PUT", "/tr/v1/rdr/"), ("FOO", "/ping")):
        r = gw.http(method, path)
        assert r.status == 405 and reason(r.body), (method, path, r)  # was a 501 HTML page
        assert "GET" in r.header("allow")
    r = gw.http("HEAD", "/tr/v1/pub/f.txt")  # HEAD still works wherever GET does
    assert r.status == 200 and r.body == b""


def test_a_tls_handshake_on_the_http_port_is_400_at_once(gw):
    binary = bytes(b for b in range(256) if b not in b"\r\n")  # (a bare LF has its own reason)
    hello = bytes.fromhex("160301020001") + binary * 2
    [(status, body)] = answers(raw(gw, hello, timeout=10))  # was: a 408 after the read timeout
    assert status == 400 and reason(body) == "not an HTTP/1.1 request"


def test_http_1_1_without_host_is_400_and_http_1_0_without_host_still_works(gw):
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host (was 200).
    for path in (b"/ping", b"/tr/v1/tr/?ename=nohost", b"/f.txt"):
        [(status, body)] = answers(raw(gw, b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % path))
        assert status == 400 and reason(body) == "missing Host header", (path, body)
    # HTTP/1.0 had no Host header: still served.
    [(status, body)] = answers(raw(gw, b"GET /ping HTTP/1.0\r\n\r\n"))
    assert (status, body) == (200, b"pong")


# -- absolute-form request targets (RFC 9112 3.2.2) ------------------------------------------


def test_absolute_form_targets_are_routed_by_their_authority(gw):
    def get(target: bytes, host: bytes = b"elsewhere.test") -> tuple[int, bytes]:
        request = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target, host)
        [answer] = answers(raw(gw, request))
        return answer

    # Was 404 for each: the whole target was taken for the path.
    assert get(b"http://127.0.0.1:%d/ping" % gw.port) == (200, b"pong")
    assert get(b"http://localhost/tr/v1/pub/f.txt") == (200, b"file")
    # The target's authority picks the site; the Host header is ignored.
    assert get(b"http://static.test/f.txt") == (200, b"file")
    assert get(b"HTTPS://Static.Test:99/f.txt") == (200, b"file")
    assert get(b"http://static.test") == (200, b"<p>home</p>")
    assert get(b"http://static.test/f.txt", host=b"static.test") == (200, b"file")
    # An event sent that way is stored as one sent in origin form.
    status, body = get(b"http://localhost/tr/v1/tr/?ename=absolute_form")
    assert status == 200, body
    gw.wait_for("SELECT 1 FROM events WHERE ename = 'absolute_form'", lambda r: len(r) == 1)
    # An authority no Host header could hold is refused, like such a Host header.
    for target in (b"http://user@static.test/f.txt", b"http:///f.txt", b"http://[::1/x"):
        status, body = get(target)
        assert status == 400 and reason(body) == "malformed request target", (target, body)
