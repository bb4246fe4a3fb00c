"""Reverse proxy: a site's proxy routes, streamed both ways, WebSockets passed through.

Requests go upstream through the lean client of edge/upstream.py (``Relay`` is its client
side). Request bodies come from ``StreamingRequest`` chunk by chunk and go upstream as they
arrive (``StreamedBody``: the client is paused while the upstream cannot take more); response
bodies go to the client as they arrive (the upstream is paused while the client cannot take
more). So neither direction is ever held whole in memory.

Upstream requests carry ``X-Forwarded-For`` (the client, appended to what a trusted proxy
sent), ``X-Forwarded-Proto`` and ``X-Forwarded-Host``, and ``Host`` is the upstream's, as the
original tracker did. Hop-by-hop headers are not forwarded. Failures answer with a small JSON
body: 502 when the upstream cannot be reached or breaks off, 504 when it does not answer within
``ProxyTimeoutSeconds`` (between body chunks too, after which the connection is cut).

A WebSocket upgrade (``Upgrade: websocket``) becomes a byte tunnel: the upgrade request goes
upstream over a fresh connection, and from then on the client and upstream connections are
spliced, with back-pressure in both directions.
"""

from __future__ import annotations

from twisted.internet import defer, endpoints, error, protocol
from twisted.logger import Logger
from twisted.web.client import (  # bound once: attribute access on the module is slow
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from sfpltracker.edge.limits import DailyLimiter
from sfpltracker.edge.upstream import Fetch, UpstreamPool
from sfpltracker.ingest.parse import query_pairs
from sfpltracker.web.common import (
    NOT_DONE_YET,
    body_too_large,
    finish,
    header,
    preflight,
    read_body,
)
from sfpltracker.web.common import error as json_error

log = Logger()

HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"content-length",
        b"host",
    ]
)


def _connection_tokens(request) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in request.requestHeaders.getRawHeaders(b"connection") or []:
        tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def is_websocket_upgrade(request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.lower() == b"websocket" and b"upgrade" in _connection_tokens(request)


def upstream_headers(request, route, trusted) -> list[tuple[bytes, list[bytes]]]:
    """The client's end-to-end headers plus Host and the X-Forwarded-* trio."""
    dropped = HOP_BY_HOP | _connection_tokens(request)
    out = [
        (name, values)
        for name, values in request.requestHeaders.getAllRawHeaders()
        if name.lower() not in dropped
        and name.lower() not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
    ]
    peer = (getattr(request.getClientAddress(), "host", "") or "").encode()
    from_proxy = peer.decode() in trusted
    xff = request.getHeader(b"x-forwarded-for") if from_proxy else None
    proto = request.getHeader(b"x-forwarded-proto") if from_proxy else None
    fwd_host = request.getHeader(b"x-forwarded-host") if from_proxy else None
    out += [
        (b"Host", [route.host_header]),
        (b"X-Forwarded-For", [xff + b", " + peer if xff else peer]),
        (b"X-Forwarded-Proto", [proto or (b"https" if request.isSecure() else b"http")]),
        (b"X-Forwarded-Host", [fwd_host or request.getHeader(b"host") or b""]),
    ]
    return out


@implementer(IBodyProducer)
class BytesBody:
    """A body already in memory (a buffered request within ``MaxBodyBytes``)."""

    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):  # noqa: N802 - Twisted's interface
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):  # noqa: N802
        pass

    def resumeProducing(self):  # noqa: N802
        pass

    def stopProducing(self):  # noqa: N802
        pass


@implementer(IBodyProducer)
class StreamedBody:
    """The client's body as it arrives, written upstream with back-pressure.

    Until the upstream connection is ready (``startProducing``) the client is paused; what
    was already read meanwhile waits in ``pending``. ``peak_pending`` is the most bytes this
    object ever held, for the metric and the tests.
    """

    def __init__(self, request, stats: dict):
        self.request = request
        self.stats = stats
        length = request.declared_length
        self.length = length if length is not None else UNKNOWN_LENGTH
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.consumer = None
        self.ended = False
        self.done: defer.Deferred = defer.Deferred()
        self.sent = 0
        request.pause_reading()
        request.attach_body(self)  # what the client sent while the route was deciding first

    def data(self, chunk: bytes) -> None:
        if self.consumer is None:
            self.pending.append(chunk)
            self.pending_bytes += len(chunk)
            if self.pending_bytes > self.stats["peak_pending"]:
                self.stats["peak_pending"] = self.pending_bytes
            return
        self.sent += len(chunk)
        self.stats["streamed_bytes"] += len(chunk)
        self.consumer.write(chunk)

    def end(self) -> None:
        self.ended = True
        if self.consumer is not None and not self.done.called:
            self.done.callback(None)

    def startProducing(self, consumer):  # noqa: N802
        self.consumer = consumer
        for chunk in self.pending:
            self.sent += len(chunk)
            self.stats["streamed_bytes"] += len(chunk)
            consumer.write(chunk)
        self.pending, self.pending_bytes = [], 0
        # Undo the pause of __init__ also when the body has ended already: the client's
        # next (pipelined) request is read then (it stayed paused: the connection hung).
        self.request.resume_reading()
        if self.ended:
            self.done.callback(None)
        return self.done

    def pauseProducing(self):  # noqa: N802
        self.request.pause_reading()

    def resumeProducing(self):  # noqa: N802
        if not self.ended:
            self.request.resume_reading()

    def stopProducing(self):  # noqa: N802
        # The upstream stopped taking the body (it answered early or went away).
        self.consumer = None
        self.request.body_sink = None
        self.request.resume_reading()  # let the rest drain (and be dropped)
        if not self.done.called:
            self.done.errback(defer.CancelledError())


def _nothing() -> None:
    pass


class Relay:
    """The client's side of a ``Fetch``: the answer's head, body and end, or the error."""

    __slots__ = ("proxy", "request", "site", "route", "fetch", "gone", "flush")

    def __init__(self, proxy: ProxyFallback, request, site, route):
        self.proxy = proxy
        self.request = request
        self.site = site
        self.route = route
        self.fetch: Fetch | None = None
        self.gone = False
        # The fast layer holds an answer's head to send it with the body's first bytes.
        self.flush = getattr(request, "flush_head", _nothing)

    def client_gone(self, _) -> None:
        self.gone = True
        if self.fetch is not None:
            self.fetch.cancel()

    def answer(self, code: int, phrase: bytes, headers, length, conn) -> bool:
        request = self.request
        if self.gone or request._disconnected:
            return False
        request.setResponseCode(code, phrase)
        grouped: dict[bytes, tuple[bytes, list[bytes]]] = {}
        # Headers the upstream names in its own Connection header are hop-by-hop too (RFC 9110 7.6.1).
        dropped = HOP_BY_HOP
        for name, value in headers:
            if name.lower() == b"connection":
                dropped = dropped | {t.strip().lower() for t in value.split(b",")}
        for name, value in headers:
            lname = name.lower()
            if lname in dropped:
                continue
            seen = grouped.get(lname)
            if seen is None:
                grouped[lname] = (name, [value])
            else:
                seen[1].append(value)
        set_raw = request.responseHeaders.setRawHeaders
        for name, values in grouped.values():
            set_raw(name, values)
        if length is not None and request.method != b"HEAD" and code not in (204, 304):
            request.setHeader(b"content-length", b"%d" % length)
        proxy = self.proxy
        if proxy.track is not None and self.site.track_proxied(request.path.decode("latin-1")):
            proxy._track(request, code)
        # The client's full write buffer pauses the upstream socket (back-pressure).
        request.registerProducer(conn, True)
        return True

    def body(self, data: bytes) -> None:
        if not self.request._disconnected:
            self.request.write(data)

    def done(self) -> None:
        request = self.request
        if not request._disconnected:
            request.unregisterProducer()
            finish(request, b"")

    def cut(self) -> None:
        request = self.request
        if not request._disconnected:
            request.unregisterProducer()
            # The answer is cut short; closing without finishing tells the client.
            request.channel.transport.loseConnection()

    def failed(self, failure, timed_out: bool) -> None:
        if self.gone or self.request._disconnected:
            return
        self.proxy._fail(self.request, self.route, failure, timed_out)


class ProxyFallback:
    """The proxy routes of ``Sites``; ``maybe_render`` returns None for other paths."""

    def __init__(
        self, gateway, router, reactor, connect_timeout: float, read_timeout: float, track=None
    ):
        self.gateway = gateway
        self.router = router
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.track = track
        # The lean client (edge/upstream.py): kept-alive connections, at most 64 idle a host.
        self.upstreams = UpstreamPool(reactor, connect_timeout, max_idle=64)
        self.errors = {"502": 0, "504": 0}
        # Sites' DailyLimit: one in-memory counter per site (keyed hashes of IPs, edge/limits.py).
        self.limiters = {
            name: DailyLimiter(site.daily_limit, reactor)
            for name, site in router.sites.items()
            if site.daily_limit > 0
        }
        self.stats = {"peak_pending": 0, "streamed_bytes": 0}

    def wants_stream(self, host, path: bytes) -> bool:
        return self.router.route_for(host, path) is not None

    def maybe_render(self, request):
        found = self.router.route_for(request.getHeader(b"host"), request.path)
        if found is None:
            return None
        site, route = found
        if request.method == b"CONNECT":  # a tunnel to elsewhere: no reverse proxy forwards it
            request.setHeader(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
            return json_error(request, 405, "CONNECT is not forwarded")
        if site.answer_options and request.method == b"OPTIONS":
            return preflight(request, self.gateway.cfg.AllowOrigin)
        limiter = self.limiters.get(site.host)
        if limiter is not None and not limiter.hit(self._client_ip(request)):
            self.gateway.count("requests_rate_limited")
            return json_error(
                request,
                429,
                "daily request limit reached (DailyLimit)",
                retry_after=limiter.seconds_to_midnight(),
            )
        if is_websocket_upgrade(request):
            return self._tunnel(request, route)
        return self._forward(request, site, route)

    def _client_ip(self, request) -> str:
        peer = getattr(request.getClientAddress(), "host", "") or ""
        headers = {name: header(request, name) for name in ("x-forwarded-for", "x-real-ip")}
        return self.gateway.trusted_proxies.client_ip(peer, headers)

    # -- HTTP --------------------------------------------------------------------------------

    def _forward(self, request, site, route):
        request.defaultContentType = None  # the upstream's Content-Type or none at all
        if getattr(request, "streaming", False):
            body = StreamedBody(request, self.stats)
            return self._fetch(request, site, route, body, request.declared_length)
        if body_too_large(request):
            return json_error(request, 413, "request body larger than MaxBodyBytes")
        data = read_body(request)
        if not data and request.method not in (b"POST", b"PUT", b"PATCH"):
            return self._fetch(request, site, route)
        return self._fetch(request, site, route, BytesBody(data), len(data))

    def _fail(self, request, route, failure, timed_out: bool) -> None:
        """Answer a request whose upstream did not answer (502/504, or 400)."""
        if timed_out:
            self.errors["504"] += 1
            log.info(
                "proxy: {upstream} did not answer within {t:g} s",
                upstream=route.upstream,
                t=self.read_timeout,
            )
            finish(request, json_error(request, 504, "upstream did not answer in time"))
            return
        if failure.check(RequestGenerationFailed):  # this request cannot be written upstream
            finish(request, json_error(request, 400, "request cannot be forwarded"))
            return
        self.errors["502"] += 1
        why = _failure_reason(failure)
        log.info("proxy: {upstream} failed: {why}", upstream=route.upstream, why=why)
        finish(request, json_error(request, 502, f"upstream unavailable: {why}"))

    def _fetch(self, request, site, route, body=None, length: int | None = None):
        """The request upstream, through the lean client (edge/upstream.py); ``body`` (an
        ``IBodyProducer``) of ``length`` bytes, or sent chunked when the length is None."""
        out = [request.method, b" ", route.target(request.uri), b" HTTP/1.1\r\n"]
        for name, values in upstream_headers(request, route, self.gateway.trusted_proxies):
            for value in values:
                out += (name, b": ", value, b"\r\n")
        chunked = body is not None and length is None
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            out.append(b"Content-Length: %d\r\n" % length)
        out.append(b"\r\n")
        relay = Relay(self, request, site, route)
        request.notifyFinish().addErrback(relay.client_gone)
        relay.fetch = Fetch(
            self.upstreams,
            route,
            request.method,
            b"".join(out),
            relay,
            self.read_timeout,
            body,
            chunked,
        )
        return NOT_DONE_YET

    def close(self) -> None:
        """Close the idle upstream connections (the service is stopping)."""
        self.upstreams.close()

    def _track(self, request, status: int) -> None:
        """The original's ProxyUrlFilter rule: a server event for the proxied request."""
        query = request.uri.decode("latin-1").partition("?")[2]
        fields = {"ename": "proxy", "etyp": "request"}
        fields.update(query_pairs(query, self.gateway.cfg.IgnoreQueryParamsKey))
        fields["status"] = str(status)
        self.track(request, fields)

    # -- WebSocket ---------------------------------------------------------------------------

    def _tunnel(self, request, route):
        head = [f"{request.method.decode()} {route.target(request.uri).decode('latin-1')} HTTP/1.1"]
        for name, values in upstream_headers(request, route, self.gateway.trusted_proxies):
            for value in values:
                head.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        head += ["Connection: Upgrade", f"Upgrade: {request.getHeader(b'upgrade').decode()}"]
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")

        endpoint = endpoints.HostnameEndpoint(
            self.reactor, route.host, route.port, timeout=self.connect_timeout
        )
        if route.scheme == "https":
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = endpoints.wrapClientTLS(optionsForClientTLS(route.host), endpoint)
        d = endpoint.connect(protocol.Factory.forProtocol(UpstreamSide))

        def connected(upstream):
            if request._disconnected:
                upstream.transport.loseConnection()
                return
            upstream.transport.write(head_bytes)
            splice(request, upstream)
            log.debug("proxy: WebSocket tunnel to {upstream}", upstream=route.upstream)

        def failed(failure):
            if not request._disconnected:
                self.errors["502"] += 1
                why = _failure_reason(failure)
                finish(request, json_error(request, 502, f"upstream unavailable: {why}"))

        d.addCallbacks(connected, failed)
        return NOT_DONE_YET


class UpstreamSide(protocol.Protocol):
    """The upstream half of a tunnel: bytes go straight to the client."""

    client_transport = None
    pending = b""

    def dataReceived(self, data):  # noqa: N802
        if self.client_transport is None:
            self.pending += data
        else:
            self.client_transport.write(data)

    def connectionLost(self, reason):  # noqa: N802
        if self.client_transport is not None:
            self.client_transport.loseConnection()


def splice(request, upstream: UpstreamSide) -> None:
    """Turn the client's HTTP connection into a byte pipe to ``upstream``."""
    channel = request.channel
    client_transport = channel.transport
    upstream_transport = upstream.transport
    assert upstream_transport is not None  # connected: it has just answered the upgrade
    # Bytes the client already sent after the upgrade request (buffered by the channel).
    early = b"".join(channel._dataBuffer)
    channel._dataBuffer = []
    channel.setTimeout(None)
    channel_lost = channel.connectionLost

    def client_lost(reason):
        upstream_transport.loseConnection()
        channel_lost(reason)

    # The same replacement Twisted's own websocket support makes on the channel.
    channel.dataReceived = upstream_transport.write
    channel.connectionLost = client_lost
    # Back-pressure: each side pauses the other when its write buffer fills.
    client_transport.unregisterProducer()
    client_transport.registerProducer(upstream_transport, True)
    upstream_transport.registerProducer(client_transport, True)
    client_transport.resumeProducing()  # the channel may have paused it while buffering
    upstream.client_transport = client_transport
    if upstream.pending:
        client_transport.write(upstream.pending)
        upstream.pending = b""
    if early:
        # zope declares ITransport.write(data) without self: mypy (no zope plugin) miscounts
        upstream_transport.write(early)  # type: ignore[call-arg]


def _failure_reason(failure) -> str:
    value = failure.value
    if isinstance(value, ResponseNeverReceived | RequestTransmissionFailed):
        inner = value.reasons[0].value if value.reasons else None
        return f"connection closed ({type(inner).__name__})" if inner else "connection closed"
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, error.TimeoutError | error.ConnectingCancelledError):
        return "connect timed out"
    if isinstance(value, error.DNSLookupError):
        return "host not found"
    return type(value).__name__
