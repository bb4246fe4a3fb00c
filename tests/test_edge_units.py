"""Edge logic on a MemoryReactorClock: ACME scheduling, limiter, routing, HTTP helpers, the
channel's read deadline and early answers to streamed requests. No sleeps, no real network."""

from __future__ import annotations

import datetime
import hashlib
import time

import pytest
from cryptography import x509
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from sfpltracker.config import ConfigError, load_dict
from sfpltracker.edge.hosts import ProxyRoute, SiteRouter
from sfpltracker.edge.limits import DailyLimiter, client_key
from sfpltracker.edge.static_site import accepted_encodings, etag_matches, parse_range
from sfpltracker.edge.tls import acme
from sfpltracker.edge.tls.acme import AcmeManager, Http01Tokens, RenewalFailed, retry_delay
from sfpltracker.edge.tls.alpn import ACME_IDENTIFIER_OID, validation_pair
from sfpltracker.edge.tls.certs import CertStore, self_signed_pair
from sfpltracker.testing import MemoryStore

# -- ACME scheduling ---------------------------------------------------------------------------


class FakeCA:
    """Stands in for the issuer thread: each ``issue`` returns a Deferred the test fires."""

    def __init__(self, days: int = 90):
        self.days = days
        self.calls: list[tuple[str, defer.Deferred]] = []

    def issue(self, domain):
        d = defer.Deferred()
        self.calls.append((domain, d))
        return d

    def succeed(self, index=-1):
        domain, d = self.calls[index]
        pair = self_signed_pair([domain], days=self.days)
        d.callback(pair)
        return pair

    def fail(self, why="connection refused", index=-1):
        self.calls[index][1].errback(RuntimeError(why))


def make_manager(domains=("a.test",), stored=None, renew_days=30):
    clock = MemoryReactorClock()
    clock.advance(time.time())  # certificates carry real dates
    ca = FakeCA()
    installed = []
    manager = AcmeManager(
        clock,
        list(domains),
        renew_days,
        issue=ca.issue,
        load=lambda d: (stored or {}).get(d),
        install=lambda d, pair: installed.append((d, pair.serial)),
    )
    manager.load()
    manager.start()
    return clock, ca, manager, installed


def test_missing_certificate_is_requested_at_once_and_installed():
    clock, ca, manager, installed = make_manager()
    assert [c[0] for c in ca.calls] == ["a.test"]
    pair = ca.succeed()
    assert installed == [("a.test", pair.serial)]
    assert manager.issued == 1
    # Next look in 12 h (the certificate is due in 60 days); not due then: no new order.
    clock.advance(acme.CHECK_INTERVAL + 1)
    assert len(ca.calls) == 1
    clock.advance(61 * 86400)  # past the renewal point (30 days before expiry)
    assert len(ca.calls) == 2


def test_failures_retry_with_exponential_backoff_keeping_the_stored_certificate():
    stored = self_signed_pair(["a.test"], days=10)  # within ACMERenewDays: due now
    clock, ca, manager, installed = make_manager(stored={"a.test": stored})
    assert installed == [("a.test", stored.serial)]  # served from disk before anything else
    assert len(ca.calls) == 1
    expected = [2, 4, 8, 16, 32]
    for n, delay in enumerate(expected, start=1):
        ca.fail()
        assert manager.domains["a.test"].failures == n
        clock.advance(delay * 0.85)
        assert len(ca.calls) == n, f"retried before {delay} s"
        clock.advance(delay * 0.3)
        assert len(ca.calls) == n + 1, f"not retried by {delay} s"
    assert installed == [("a.test", stored.serial)]  # never replaced by a failure
    assert "connection refused" in manager.domains["a.test"].last_error
    new = ca.succeed()
    assert installed[-1] == ("a.test", new.serial)
    assert manager.domains["a.test"].failures == 0


def test_backoff_is_capped_and_jittered():
    delays = [retry_delay(n) for n in range(1, 30)]
    assert max(delays) <= acme.MAX_RETRY * 1.1
    assert min(delays) >= acme.FIRST_RETRY * 0.9
    assert retry_delay(20) >= acme.MAX_RETRY * 0.9


def test_one_order_at_a_time():
    clock, ca, manager, installed = make_manager(domains=("a.test", "b.test"))
    assert [c[0] for c in ca.calls] == ["a.test"]
    ca.succeed()
    assert [c[0] for c in ca.calls] == ["a.test", "b.test"]
    ca.succeed()
    assert [d for d, _ in installed] == ["a.test", "b.test"]


def test_renew_now_and_stop():
    clock, ca, manager, installed = make_manager()
    ca.succeed()
    results = []
    manager.renew_now("a.test").addBoth(results.append)
    ca.fail("CA refused: rate limited")
    assert isinstance(results[0].value, RenewalFailed)
    assert "rate limited" in str(results[0].value)
    manager.renew_now("nope.test").addErrback(results.append)
    assert "not in LetsEncryptDomains" in str(results[-1].value)
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_http01_tokens_answer_only_their_host():
    tokens = Http01Tokens()
    tokens.add("tok", "Shop.Test", "tok.thumb")
    assert tokens.answer("tok", "shop.test") == "tok.thumb"
    assert tokens.answer("tok", "other.test") is None
    assert tokens.answer("other", "shop.test") is None
    tokens.remove("tok")
    assert tokens.answer("tok", "shop.test") is None


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_alpn_validation_certificate_follows_rfc8737():
    pair = validation_pair("shop.test", "token.thumbprint")
    cert = pair.leaf
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["shop.test"]
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    digest = hashlib.sha256(b"token.thumbprint").digest()
    assert ext.value.value == b"\x04\x20" + digest  # DER OCTET STRING of 32 bytes


def test_cert_store_exact_then_wildcard_then_default():
    store = CertStore(lambda pair: f"ctx:{pair.names[0]}")
    store.set_default(self_signed_pair(["default.test"]))
    store.install(self_signed_pair(["*.example.test"]))
    store.install(self_signed_pair(["www.example.test"]))
    assert store.context_for(b"www.example.test") == "ctx:www.example.test"
    assert store.context_for(b"API.Example.Test.") == "ctx:*.example.test"
    assert store.context_for(b"deep.api.example.test") == "ctx:default.test"
    assert store.context_for(None) == "ctx:default.test"
    # Installing a new pair for a name replaces it (hot swap).
    newer = self_signed_pair(["www.example.test"])
    store.install(newer)
    assert store.pair_for("www.example.test").serial == newer.serial


# -- limits ------------------------------------------------------------------------------------


def test_daily_limiter_counts_per_client_and_resets_at_midnight():
    clock = MemoryReactorClock()
    clock.advance(20 * 86400 + 86000)  # 400 s before a UTC midnight
    limiter = DailyLimiter(2, clock)
    assert limiter.hit("10.0.0.1") and limiter.hit("10.0.0.1")
    assert not limiter.hit("10.0.0.1")
    assert limiter.hit("10.0.0.2")
    assert limiter.seconds_to_midnight() == 400
    # An IPv6 host's /64 is one client; an IPv4-mapped address is its IPv4 address.
    assert limiter.hit("2001:db8::1") and limiter.hit("2001:db8::ffff")
    assert not limiter.hit("2001:db8::1234")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert not limiter.hit("::ffff:10.0.0.1")
    # Nothing kept names the address.
    assert all(len(k) == 16 and b"10.0.0" not in k for k in limiter._counts)
    clock.advance(401)
    assert limiter.hit("10.0.0.1")
    assert limiter.refused == 3


def test_daily_limiter_lets_new_clients_through_when_full():
    limiter = DailyLimiter(1, MemoryReactorClock(), max_entries=2)
    assert limiter.hit("1.1.1.1") and limiter.hit("2.2.2.2")
    assert limiter.hit("3.3.3.3") and limiter.hit("3.3.3.3")  # uncounted
    assert not limiter.hit("1.1.1.1")


# -- sites -------------------------------------------------------------------------------------


def test_proxy_route_matching_and_targets():
    plain = ProxyRoute.parse("/api", "http://up:3030")
    assert plain.matches(b"/api") and plain.matches(b"/api/x")
    assert not plain.matches(b"/apix")
    assert plain.target(b"/api/x?y=1") == b"/api/x?y=1"
    mapped = ProxyRoute.parse("/api/", "https://up/v2/")
    assert mapped.matches(b"/api/x") and not mapped.matches(b"/api")
    assert mapped.target(b"/api/x?y=1") == b"/v2/x?y=1"
    assert mapped.url(b"/api/") == b"https://up:443/v2/"
    assert mapped.host_header == b"up"
    assert ProxyRoute.parse("/", "http://[::1]:81").host_header == b"[::1]:81"
    with pytest.raises(ValueError):
        ProxyRoute.parse("/x", "ftp://up")
    with pytest.raises(ValueError):
        ProxyRoute.parse("x", "http://up")


def test_site_router_picks_host_then_wildcard_and_longest_prefix():
    cfg = load_dict(
        {
            "Sites": {
                "Shop.Test": {"Proxy": {"/": "http://a", "/api/": "http://b"}},
                "*": {"Root": "/srv/www"},
            }
        }
    )
    router = SiteRouter.from_config(cfg)
    site, route = router.route_for(b"shop.test:8443", b"/api/v1")
    assert site.host == "shop.test" and route.upstream == "http://b"
    assert router.route_for(b"SHOP.test", b"/about")[1].upstream == "http://a"
    assert router.route_for(b"other.test", b"/api/v1") is None
    assert str(router.site_for(b"other.test").root) == "/srv/www"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"Sites": {"a": {"Proxy": {"/x": "nope"}}}}, "Sites.a.Proxy./x"),
        ({"Sites": {"a": {"ProxyUrlFilter": "("}}}, "Sites.a.ProxyUrlFilter"),
        ({"ACMEChallenge": "dns-01"}, "ACMEChallenge"),
        ({"LetsEncryptDomains": ["a.test"], "ProxyPortTLS": ""}, "LetsEncryptDomains"),
        ({"ProxyTimeoutSeconds": 0}, "ProxyTimeoutSeconds"),
        ({"LetsEncryptDomains": ["*.a.test"]}, "LetsEncryptDomains"),
    ],
)
def test_edge_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_dict(data)


# -- static helpers ----------------------------------------------------------------------------


def test_parse_range():
    assert parse_range(b"bytes=0-9", 100) == (0, 9)
    assert parse_range(b"bytes=90-", 100) == (90, 99)
    assert parse_range(b"bytes=-10", 100) == (90, 99)
    assert parse_range(b"bytes=-200", 100) == (0, 99)
    assert parse_range(b"bytes=50-1000", 100) == (50, 99)
    assert parse_range(b"bytes=100-", 100) is False
    assert parse_range(b"bytes=-0", 100) is False
    assert parse_range(b"bytes=9-1", 100) is False
    assert parse_range(b"bytes=0-1,5-6", 100) is None
    assert parse_range(b"items=0-1", 100) is None


def test_accept_encoding_and_etags():
    assert accepted_encodings(b"gzip, deflate, br") == {b"gzip", b"deflate", b"br"}
    assert accepted_encodings(b"br;q=0, gzip;q=0.8") == {b"gzip"}
    assert accepted_encodings(None) == set()
    assert etag_matches(b'"a", "b"', b'"b"')
    assert etag_matches(b'W/"b"', b'"b"')
    assert etag_matches(b"*", b'"b"')
    assert not etag_matches(b'"a"', b'"b"')


# -- the channel: read deadline, connection cap, early answers to streamed requests -------------


@pytest.fixture
def edge_site(tmp_path):
    from sfpltracker.edge.assembly import Edge
    from sfpltracker.gateway import Gateway
    from sfpltracker.web.site import GatewayRoot

    def build(force_https=False, **overrides):
        cfg = load_dict(
            {
                "DataDirectory": str(tmp_path / "data"),
                "ProxyPortTLS": "",
                "ReadTimeoutSeconds": 2,
                "MaxConnections": 5,
                "Sites": {"*": {"Proxy": {"/up/": "http://127.0.0.1:9"}}},
                **overrides,
            }
        )
        clock = MemoryReactorClock()
        gateway = Gateway(cfg, clock, store=MemoryStore())
        root = GatewayRoot(gateway)
        edge = Edge(gateway, root, clock)
        root.fallbacks.extend(edge.fallbacks())
        site = edge.site(force_https=force_https)
        return clock, gateway, site

    return build


def connect(site):
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    return channel, transport


def test_trickling_request_gets_408_at_the_read_deadline(edge_site):
    clock, gateway, site = edge_site()
    channel, transport = connect(site)
    channel.dataReceived(b"GET /ping HTTP/1.1\r\nHost: a\r\n")
    for _ in range(3):
        clock.advance(0.6)
        channel.dataReceived(b"X")  # keeps the idle timeout away, not the deadline
    assert transport.value() == b""
    clock.advance(0.3)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.disconnecting
    assert gateway.counters["requests_timed_out"] == 1


def test_requests_in_time_are_not_cut(edge_site):
    clock, gateway, site = edge_site()
    channel, transport = connect(site)
    for _ in range(3):
        channel.dataReceived(b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n")
        clock.advance(1.5)  # between requests: no deadline running
    assert transport.value().count(b"HTTP/1.1 200 ") == 3
    assert not transport.disconnecting


def test_force_https_trusts_only_trusted_proxies(edge_site):
    clock, gateway, site = edge_site(force_https=True, TrustedProxies=["10.0.0.0/8"])
    for peer, status in (("127.0.0.1", b"301"), ("10.1.2.3", b"200")):
        channel = site.buildProtocol(IPv4Address("TCP", peer, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /ping HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 " + status), transport.value()


def test_connections_over_the_cap_get_503(edge_site):
    clock, gateway, site = edge_site()
    gateway.open_connections = 5
    channel, transport = connect(site)
    channel.dataReceived(b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 5" in transport.value()
    assert transport.disconnecting


def test_early_answer_to_a_streamed_body_closes_the_connection(edge_site):
    clock, gateway, site = edge_site(force_https=True)
    channel, transport = connect(site)
    channel.dataReceived(
        b"POST /up/upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100000\r\n\r\n"
        + b"x" * 5000
    )
    # Answered (301) before the body arrived, without reading the rest of it.
    out = transport.value()
    assert out.startswith(b"HTTP/1.1 301 ")
    assert b"Location: https://shop.test/up/upload" in out
    assert b"Connection: close" in out
    assert transport.disconnecting
    channel.dataReceived(b"y" * 95000)  # the rest still trickling in: dropped, no error
    channel.connectionLost(None)


def streamed_request(channel):
    """The twisted.web request a connection is handling: EdgeChannel's own, or the one
    FastHTTPProtocol's adapter made of the parsed request being answered."""
    if hasattr(channel, "requests"):
        return channel.requests[0]
    return channel._active.request


@pytest.mark.parametrize("layer", ["fast", "twisted"])
def test_streamed_body_goes_to_the_proxy_not_into_a_buffer(edge_site, layer):
    clock, gateway, site = edge_site(HTTPServer=layer)
    channel, transport = connect(site)
    channel.dataReceived(
        b"PUT /up/file HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 30000\r\n\r\n"
    )
    request = streamed_request(channel)
    assert request.streaming and request.body_sink is not None
    assert transport.producerState == "paused"  # until the upstream takes the body
    channel.dataReceived(b"z" * 20000)
    assert request.content.getvalue() == b""  # nothing collected in the request
    assert request.body_sink.pending_bytes == 20000
    # Ingestion routes keep their buffered, limited bodies.
    channel2, _ = connect(site)
    channel2.dataReceived(b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    if layer == "twisted":
        assert not channel2.requests[0].streaming
    else:  # parsed, waiting for its body: not handed to any route yet
        assert not channel2._queue[0].streaming and channel2._active is None


def test_a_large_static_file_is_written_only_as_the_transport_asks(edge_site, tmp_path):
    # The file's producer writes a piece each time the transport wants more (a real socket:
    # when its buffer drains), never the whole file at once; a request pipelined behind it is
    # answered after the file, and the protocol reads again once the file is out.
    root = tmp_path / "site"
    root.mkdir()
    big = bytes(range(256)) * 4096  # 1 MiB: over static_site.SMALL_FILE, so streamed
    (root / "big.bin").write_bytes(big)
    clock, gateway, site = edge_site(Sites={"*": {"Root": str(root)}})
    channel, transport = connect(site)
    channel.dataReceived(
        b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /ping HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % len(big) in head
    assert body == b""  # nothing of the file until the transport asks for it
    producer = transport.producer
    assert producer is not channel and not transport.streaming  # the file's pull producer
    pieces = 0
    while transport.producer is producer:
        before = len(transport.value())
        producer.resumeProducing()
        assert len(transport.value()) - before <= 256 * 1024
        pieces += 1
    assert pieces > 4
    body, _, after = transport.value().partition(b"\r\n\r\n")[2].partition(b"HTTP/1.1 ")
    assert body == big  # whole, and the pipelined answer after it
    assert after.startswith(b"200 ") and after.endswith(b"pong")
    assert transport.producer is channel  # the protocol is the transport's producer again


def test_stored_certificate_dates_drive_due_time():
    stored = self_signed_pair(["a.test"], days=45)
    clock, ca, manager, installed = make_manager(stored={"a.test": stored})
    assert ca.calls == []  # 45 days left, renewing at 30: not yet
    due = manager.due_in(manager.domains["a.test"])
    assert abs(due - 15 * 86400) < 120
    expiry = stored.not_after - datetime.timedelta(days=30)
    assert expiry.tzinfo is not None


def test_file_cache_keeps_answers_a_second_and_bounds_content(tmp_path):
    from sfpltracker.edge.static_site import FileCache

    root = tmp_path / "www"
    root.mkdir()
    (root / "a.txt").write_bytes(b"one")
    clock = MemoryReactorClock()
    cache = FileCache(clock, seconds=1.0, size=2, content_budget=5)
    found = cache.find(root.resolve(), "/a.txt")
    assert cache.content(found.variants[b""]) == b"one"
    assert cache.content_bytes == 3
    (root / "a.txt").write_bytes(b"two!")
    (root / "b.txt").write_bytes(b"bee")
    assert cache.find(root.resolve(), "/a.txt") is found  # within the second: kept
    assert cache.find(root.resolve(), "/missing.txt").target is None
    clock.advance(1.01)
    fresh = cache.find(root.resolve(), "/a.txt")
    assert fresh is not found and cache.content(fresh.variants[b""]) == b"two!"
    assert fresh.variants[b""].etag != found.variants[b""].etag
    # Over the content budget: read each time, not kept.
    other = cache.find(root.resolve(), "/b.txt")
    assert cache.content(other.variants[b""]) == b"bee"
    assert other.variants[b""].content is None
    assert len(cache._entries) <= 2 and cache.content_bytes <= 5
