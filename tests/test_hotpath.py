"""The per-request shortcuts of the ingestion hot path keep the answers they replaced.

Views instead of copies (headers, cookies), the canonical-UUID fast path, the caches (allowed
origins, the UTC day, per-connection TLS flag and local address, the page url of a request),
one read-deadline timer per connection, Content-Length on tracking answers, no form parsing of
POST bodies, and the garbage-collector settings. Everything runs on a MemoryReactorClock with
in-memory transports; bench/hotpath.py measures what these save.
"""

from __future__ import annotations

import datetime
import gc
import json
import subprocess
import sys
import uuid

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.http_headers import Headers
from zope.interface import alsoProvides

from sfpltracker.config import load_dict
from sfpltracker.ingest.ids import parse_uuid, uuid4, uuid7
from sfpltracker.ingest.request import RequestInfo, utc_day
from sfpltracker.testing import MemoryStore
from sfpltracker.web import common
from sfpltracker.web.common import RequestCookies, RequestHeaders

# -- views of the request -------------------------------------------------------------------


def _headers(*pairs: tuple[bytes, bytes]) -> Headers:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


def _copied(headers: Headers) -> dict[str, str]:
    """What request_info used to build: every header, lower-cased name, first value."""
    return {
        k.decode("latin-1").lower(): v[0].decode("latin-1")
        for k, v in headers.getAllRawHeaders()
        if v
    }


def test_header_view_reads_what_the_copied_dict_held():
    raw = _headers(
        (b"Host", b"Shop.Example.com:8080"),
        (b"User-Agent", b"Mozilla/5.0 caf\xe9"),
        (b"X-Forwarded-For", b"203.0.113.9"),
        (b"x-forwarded-for", b"198.51.100.1"),  # a second value: the first one wins
        (b"Sec-GPC", b"1"),
    )
    view = RequestHeaders(raw)
    copied = _copied(raw)
    assert dict(view) == copied and view == copied
    assert len(view) == len(copied) == 4
    for name in ("host", "HOST", "user-agent", "x-forwarded-for", "sec-gpc"):
        assert view.get(name) == copied[name.lower()]
        assert view[name] == copied[name.lower()]
        assert name in view
    assert view.get("dnt") is None and view.get("dnt", "") == ""
    assert "dnt" not in view and 3 not in view
    assert view.get("caf\u20ac") is None  # not latin-1: no such header, no error
    with pytest.raises(KeyError):
        view["dnt"]


def test_cookie_view_reads_what_the_copied_dict_held():
    raw = {b"vid": b"0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e", b"CookieConsent": b"1792", b"x": b""}
    view = RequestCookies(raw)
    copied = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw.items()}
    assert dict(view) == copied and len(view) == 3
    assert view.get("vid") == copied["vid"] and view["CookieConsent"] == "1792"
    assert view.get("x") == "" and "x" in view  # an empty cookie is still there
    assert view.get("sid") is None and "sid" not in view
    assert view.get("\u20ac", "d") == "d"
    with pytest.raises(KeyError):
        view["sid"]


# -- identifiers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e",  # canonical: the fast path
        "0B6A3C2E-5F1D-4C1A-9D3E-8F2A1B4C5D6E",
        "{0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e}",
        "urn:uuid:0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e",
        "0b6a3c2e5f1d4c1a9d3e8f2a1b4c5d6e",
        "0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6g",  # 36 characters, not hex
        "0b6a3c2e_5f1d_4c1a_9d3e_8f2a1b4c5d6e",
        "0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e\n",
    ],
)
def test_parse_uuid_agrees_with_uuid_module(value):
    try:
        expected = str(uuid.UUID(value))
    except ValueError:
        expected = None
    assert parse_uuid(value) == expected


def test_minted_ids_are_canonical_and_well_formed():
    for _ in range(500):
        v7, v4 = uuid7(1_795_000_000_000), uuid4()
        assert parse_uuid(v7) == v7 == str(uuid.UUID(v7))
        assert parse_uuid(v4) == v4 == str(uuid.UUID(v4))
        u7, u4 = uuid.UUID(v7), uuid.UUID(v4)
        assert (u7.version, u7.variant, u7.int >> 80) == (7, uuid.RFC_4122, 1_795_000_000_000)
        assert (u4.version, u4.variant) == (4, uuid.RFC_4122)
    assert len({uuid7(1) for _ in range(1000)}) == 1000  # the random part is random


# -- caches ---------------------------------------------------------------------------------


def test_utc_day_is_the_calendar_day_and_its_cache_is_bounded():
    for ms in (0, 86_399_999, 86_400_000, 1_795_000_000_000, -1, 253_402_300_799_999):
        expected = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d")
        assert RequestInfo(now_ms=ms).day == expected
    for n in range(100):  # more days than the cache holds
        utc_day(n)
    assert utc_day.cache_info().currsize <= utc_day.cache_info().maxsize == 4


def test_page_url_is_the_uri_unless_it_is_the_tracking_api():
    assert RequestInfo(uri="/shop/cart?x=1").page_url == "/shop/cart?x=1"
    assert RequestInfo(uri="/tr/v1/tr/ename/x").page_url == ""
    assert RequestInfo(uri="/tr/v1/img/?url=/shop").page_url == ""
    assert RequestInfo(uri="/img/v1/ename/x").page_url == ""
    assert RequestInfo(uri="").page_url == ""


class _Request:
    """What apply_cors reads and writes of a request."""

    def __init__(self, origin: bytes | None):
        self.requestHeaders = _headers(*([(b"Origin", origin)] if origin else []))
        self.responseHeaders = Headers()

    def getHeader(self, name):  # noqa: N802
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def setHeader(self, name, value):  # noqa: N802
        self.responseHeaders.setRawHeaders(name, [value])


def _cors(allow_origin: str, origin: bytes | None) -> dict:
    request = _Request(origin)
    common.apply_cors(request, allow_origin)
    return {
        k.decode().lower(): v[0].decode() for k, v in request.responseHeaders.getAllRawHeaders()
    }


def test_allow_origin_is_split_once_per_value_and_the_cache_is_bounded():
    assert _cors("*", None) == {"access-control-allow-origin": "*"}
    listed = "https://a.example, https://b.example"
    assert _cors(listed, b"https://b.example")["access-control-allow-origin"] == (
        "https://b.example"
    )
    assert _cors(listed, b"https://evil.example") == {
        "access-control-allow-origin": "https://a.example"
    }
    assert _cors(" , ", b"https://a.example") == {}
    # Each AllowOrigin value is its own entry: a second value never sees the first's list.
    assert _cors("https://c.example", b"https://b.example") == {
        "access-control-allow-origin": "https://c.example"
    }
    for n in range(100):
        common._allowed_origins(f"https://{n}.example")
    info = common._allowed_origins.cache_info()
    assert info.currsize <= info.maxsize == 16


# -- the edge channel -----------------------------------------------------------------------


class AcceptAll:
    """An intake that takes everything at once (the spool is tested on its own)."""

    def __init__(self):
        self.records = []

    def accept(self, records):
        self.records.extend(records)
        return defer.succeed(None)


@pytest.fixture(params=["fast", "twisted"])
def edge(tmp_path, request):
    """The edge's factory on each HTTP/1.1 layer (``HTTPServer``; ``fast`` is the default)."""
    from sfpltracker.edge.assembly import Edge
    from sfpltracker.gateway import Gateway
    from sfpltracker.web.site import GatewayRoot

    cfg = load_dict(
        {
            "DataDirectory": str(tmp_path / "data"),
            "ProxyPortTLS": "",
            "ReadTimeoutSeconds": 2,
            "HTTPServer": request.param,
        }
    )
    clock = MemoryReactorClock()
    gateway = Gateway(cfg, clock, store=MemoryStore())
    gateway.intake = AcceptAll()
    root = GatewayRoot(gateway)
    site = Edge(gateway, root, clock).site()
    return clock, gateway, site


class CountingTransport(StringTransport):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.host_asked = 0

    def getHost(self):  # noqa: N802
        self.host_asked += 1
        return super().getHost()

    def setTcpNoDelay(self, enabled):  # noqa: N802 - asked of a TLS (hence TCP) transport
        pass


def connect(site, transport=None):
    addr = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(addr)
    transport = transport or CountingTransport(peerAddress=addr)
    channel.makeConnection(transport)
    return channel, transport


GET_TR = b"GET /tr/v1/tr/ename/page_view HTTP/1.1\r\nHost: a\r\n\r\n"


def is_secure(channel) -> bool:
    """What the connection decided once about TLS (FastHTTPProtocol keeps it as ``secure``)."""
    return channel.secure if hasattr(channel, "secure") else channel.isSecure()


def test_tls_flag_and_local_address_are_asked_once_per_connection(edge):
    clock, gateway, site = edge
    channel, transport = connect(site)
    for _ in range(5):
        channel.dataReceived(GET_TR)
    assert transport.value().count(b"HTTP/1.1 200 ") == 5
    assert transport.host_asked == 1
    assert is_secure(channel) is False

    tls = CountingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    alsoProvides(tls, ISSLTransport)
    channel, tls = connect(site, tls)
    channel.dataReceived(GET_TR)
    assert is_secure(channel) is True
    assert b"; Secure" in tls.value()  # the cookies of an HTTPS request


def test_one_read_deadline_timer_per_connection(edge):
    clock, gateway, site = edge
    scheduled = []

    def counting(call_later):
        def counting_call_later(delay, fn, *args, **kwargs):
            if getattr(fn, "__qualname__", "").startswith(("EdgeChannel.", "FastHTTPProtocol.")):
                scheduled.append(fn)
            return call_later(delay, fn, *args, **kwargs)

        return counting_call_later

    # FastHTTPProtocol schedules with its factory's call_later (one timer from the
    # connection's start), EdgeChannel with its own callLater (from the first request).
    if hasattr(site, "call_later"):
        site.call_later = counting(site.call_later)
        channel, transport = connect(site)
    else:
        channel, transport = connect(site)
        channel.callLater = counting(channel.callLater)
    for _ in range(50):
        channel.dataReceived(GET_TR)
        clock.advance(0.01)
    assert transport.value().count(b"HTTP/1.1 200 ") == 50
    assert len(scheduled) == 1  # one timer; the 50 requests only note a deadline
    channel.connectionLost(None)
    assert not [c for c in clock.getDelayedCalls() if c.func in scheduled]


def test_a_later_request_gets_its_own_full_deadline(edge):
    clock, gateway, site = edge
    channel, transport = connect(site)
    channel.dataReceived(GET_TR)  # t=0: arms the timer for t=2
    clock.advance(1.5)
    channel.dataReceived(b"GET /ping HTTP/1.1\r\nHost: a\r\n")  # t=1.5: its deadline is 3.5
    clock.advance(0.6)  # t=2.1: the timer fires, finds a request with a later deadline
    assert b"HTTP/1.1 408" not in transport.value() and not transport.disconnecting
    clock.advance(1.3)  # t=3.4
    assert b"HTTP/1.1 408" not in transport.value()
    clock.advance(0.2)  # t=3.6
    assert b"HTTP/1.1 408 " in transport.value() and transport.disconnecting
    assert gateway.counters["requests_timed_out"] == 1


def test_an_idle_keep_alive_connection_is_not_cut_by_the_deadline(edge):
    clock, gateway, site = edge
    channel, transport = connect(site)
    channel.dataReceived(GET_TR)
    clock.advance(5)  # the deadline timer fires with nothing being read and lapses
    assert b"HTTP/1.1 408" not in transport.value() and not transport.disconnecting
    channel.dataReceived(GET_TR)
    assert transport.value().count(b"HTTP/1.1 200 ") == 2


def test_tracking_answers_carry_their_length(edge):
    clock, gateway, site = edge
    channel, transport = connect(site)
    channel.dataReceived(GET_TR)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert b"Content-Length: 0" in head and b"Transfer-Encoding" not in head and body == b""
    transport.clear()
    channel.dataReceived(b"GET /tr/v1/img/ename/x HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert b"Content-Length: 35" in head and body.startswith(b"GIF89a") and len(body) == 35
    transport.clear()
    channel.dataReceived(b"GET /tr/v1/str/ename/x HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert parse_uuid(json.loads(body))


def test_post_bodies_are_not_parsed_as_forms(edge):
    """A form content type does not make Twisted parse (or refuse) the body before the route:
    the route reads it as the JSON the API takes, or answers its own JSON 400."""
    clock, gateway, site = edge
    body = b'{"ename": "signup"}'
    for ctype in (b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=zz"):
        channel, transport = connect(site)
        channel.dataReceived(
            b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: a\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (ctype, len(body), body)
        )
        assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()
    assert [row["ename"] for _, row in gateway.intake.records[-2:]] == ["signup", "signup"]
    channel, transport = connect(site)
    channel.dataReceived(
        b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=zz"
        b"\r\nContent-Length: 5\r\n\r\n--zz\n"
    )
    head, _, answer = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"malformed JSON" in answer


# -- per-request work done once (issue 13, main-thread CPU per GET) ---------------------------


def test_rest_path_fields_are_parsed_once_per_path_and_no_request_changes_them(edge):
    """The REST path pairs of a GET are cached per path and shared by its requests: a query
    string (or anything else) of one request never shows in the next one's row."""
    from sfpltracker.web import track

    clock, gateway, site = edge
    track._path_fields.cache_clear()
    channel, transport = connect(site)
    path = b"/tr/v1/tr/ename/Page_View/app/shop"
    channel.dataReceived(b"GET %s?utm_source=News&app=web HTTP/1.1\r\nHost: a\r\n\r\n" % path)
    for _ in range(2):
        channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
    assert transport.value().count(b"HTTP/1.1 200 ") == 3
    rows = [row for _, row in gateway.intake.records]
    assert [(r["ename"], r["app"], r.get("source")) for r in rows] == [
        ("page_view", "web", "news"),  # the query wins over the path, as before
        ("page_view", "shop", None),
        ("page_view", "shop", None),
    ]
    info = track._path_fields.cache_info()
    assert (info.misses, info.hits) == (1, 2) and info.maxsize == 1024
    assert track._path_fields(path) == {"ename": "Page_View", "app": "shop"}
    long = b"/tr/v1/tr/ename/long/xid/" + b"x" * 600  # not kept: the cache stays small
    channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % long)
    assert gateway.intake.records[-1][1]["xid"] == "x" * 600
    assert track._path_fields.cache_info().currsize == 1


def test_a_batch_works_out_its_request_columns_once(edge):
    """``created_at, hhash, hostname, ja4h, ip, iphash, bhash`` are the same for every event
    of a request: made once per request, and equal to what ``event_row`` makes alone."""
    clock, gateway, site = edge
    events = gateway.events
    made = []
    request_columns = events.request_columns
    events.request_columns = lambda *a, **k: made.append(request_columns(*a, **k)) or made[-1]
    body = json.dumps([{"ename": "a"}, {"ename": "b", "ip": "1.2.3.4"}, {"ename": "c"}]).encode()
    channel, transport = connect(site)
    channel.dataReceived(
        b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: Shop.Example:80\r\nUser-Agent: Curl/8 \r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert len(made) == 1
    names = ("created_at", "hhash", "hostname", "ja4h", "ip", "iphash", "bhash")
    rows = [row for _, row in gateway.intake.records]
    assert [tuple(r[n] for n in names) for r in rows] == [made[0]] * 3
    assert made[0][2] == "shop.example" and made[0][6] and made[0][4] == "127.0.0.0"
    del events.request_columns
    req = RequestInfo(
        ip="127.0.0.1",
        host="shop.example",
        user_agent="Curl/8 ",
        now_ms=5,
        cookies={"vid": str(uuid.uuid4()), "sid": str(uuid.uuid4())},  # (no new_vid)
    )
    visitor = events.visitor(req, {})
    alone = events.event_row({"ename": "a"}, req, visitor, server=False)
    given = events.event_row(
        {"ename": "a"}, req, visitor, server=False, columns=events.request_columns(req, visitor)
    )
    assert {**alone, "eid": ""} == {**given, "eid": ""}
    assert alone["bhash"] and alone["created_at"] == 5 and alone["hostname"] == "shop.example"
    server = events.event_row({"ename": "a"}, req, visitor, server=True, with_user_agent=False)
    assert server["bhash"] == ""  # the backend's own user agent is not the visitor's


def test_an_answer_s_first_lines_are_made_once_per_second(monkeypatch):
    """Status line, ``Server`` and ``Date`` of the fast layer's answers: the same bytes for
    every answer of a second and status code, what they were written from before."""
    from twisted.web.http import datetimeToString

    from sfpltracker.edge import http

    now = [1_795_000_000.25]
    monkeypatch.setattr(http.time, "time", lambda: now[0])
    dates = http._DateCache()
    first = dates.head(200)
    assert first == (
        b"HTTP/1.1 200 OK\r\n"
        + http._SERVER
        + b"Date: "
        + datetimeToString(1_795_000_000)
        + b"\r\n"
    )
    assert dates.head(200) is first
    assert dates.head(404).startswith(b"HTTP/1.1 404 Not Found\r\nServer: ")
    now[0] += 1
    later = dates.head(200)
    assert later != first and datetimeToString(1_795_000_001) in later
    for code in range(100, 600):
        dates.head(code)
    assert len(dates._heads) <= 64


def test_ja4h_is_cached_per_request_shape_and_equals_its_parts():
    from sfpltracker.ingest import ja4h

    headers = {
        "host": "a",
        "user-agent": "x",
        "cookie": "vid=1; sid=2; bad name=3",
        "referer": "https://r/",
        "accept-language": "en-GB,en;q=0.9",
    }
    ja4h._ja4h.cache_clear()
    got = ja4h.ja4h("GET", "HTTP/1.1", headers, headers)
    assert ja4h.ja4h("GET", "HTTP/1.1", headers, headers) == got
    assert ja4h._ja4h.cache_info().hits == 1
    names = ja4h._go_names(tuple(headers))
    cookies = tuple(ja4h.cookie_names(headers["cookie"]))
    assert got == ja4h._fingerprint("GET", "HTTP/1.1", names, True, cookies, True, "en-GB,en;q=0.9")
    assert got.startswith("ge11cr02engb_") and cookies == ("vid", "sid")
    big = {**headers, "cookie": "a=" + "x" * 2000}  # not kept: the cache stays small
    assert ja4h.ja4h("GET", "HTTP/1.1", big, big) == ja4h._fingerprint(
        "GET", "HTTP/1.1", names, True, ("a",), True, "en-GB,en;q=0.9"
    )
    assert ja4h._ja4h.cache_info().currsize == 1


# -- the garbage collector ------------------------------------------------------------------


@pytest.mark.parametrize("edge", ["fast"], indirect=True)
def test_an_answered_request_is_freed_without_the_cyclic_gc(edge):
    """Each answered request left a ParsedRequest <-> FastRequest cycle (with its header lists
    and tuples): ~15 objects a request that only the cyclic GC frees, so under load a worker
    ran a gen-0 collection of ~8,000 objects about every second, pausing its reactor mid-burst.
    Freed by reference counting, they never reach a collection."""
    from sfpltracker.edge.http import FastRequest, ParsedRequest

    clock, gateway, site = edge
    channel, transport = connect(site)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            channel.dataReceived(GET_TR)
        answered = transport.value().count(b"HTTP/1.1 200 ")
        alive = sum(1 for o in gc.get_objects() if isinstance(o, (FastRequest, ParsedRequest)))
    finally:
        gc.enable()
    assert answered == 50
    assert alive == 0


def test_tune_gc_freezes_start_up_and_raises_the_first_threshold():
    code = (
        "import gc, json; from sfpltracker.tuning import tune_gc, GEN0_THRESHOLD;"
        "before = gc.get_threshold(); tune_gc(); tune_gc();"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count(), GEN0_THRESHOLD]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, frozen, gen0 = json.loads(out.stdout)
    assert after == [gen0, before[1], before[2]] and gen0 > before[0]
    assert frozen > 1000  # the modules loaded so far


def test_the_store_loads_what_its_first_insert_would_before_it_serves(gateway):
    # pyarrow imports pandas on its first array (~0.3 s of CPU holding the GIL): done before
    # the listeners open, not a few seconds into serving, where it stalled every request.
    maps = open(f"/proc/{gateway.proc.pid}/maps").read()
    assert "pandas/_libs" in maps
    assert gateway.http("GET", "/ping").status == 200


def test_short_hash_keeps_long_texts_out_of_its_cache():
    """A client's long user agents are hashed like any other but not held: 4,096 of 16 KiB
    would keep 64 MiB alive in the cache."""
    import tracemalloc

    from sfpltracker.ingest.ids import b36, fnv1a32, short_hash

    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"
    assert short_hash(ua) == b36(fnv1a32(ua))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            long_ua = f"{i:08d}" + "x" * 8_184
            assert short_hash(long_ua) == b36(fnv1a32(long_ua))
        del long_ua
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 400_000, f"{held} bytes held after hashing 200 long user agents"
