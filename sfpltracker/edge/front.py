"""The edge in front of ``GatewayRoot``: connection cap, ACME http-01, HTTPS redirect, HSTS,
the per-IP daily limit, and the read deadline every listener enforces.

``EdgeFront`` is the resource each listener's site serves; it answers what belongs to the
front door and hands everything else to the gateway root (ops routes, the API, fallbacks).
``EdgeSite`` is ``GatewaySite`` with streamed proxy bodies (``StreamingRequest``), the
connection cap decided when a connection opens, and ``EdgeChannel``'s read deadline.
"""

from __future__ import annotations

import json
import re

from twisted.logger import Logger
from twisted.web.http import _ChunkedTransferDecoder
from twisted.web.resource import Resource

from sfpltracker.edge.streaming import StreamingRequest
from sfpltracker.ingest.request import host_only
from sfpltracker.web.common import apply_cors, error, header
from sfpltracker.web.site import CountingChannel, GatewaySite

log = Logger()

ACME_CHALLENGE = b"/.well-known/acme-challenge/"

# API routes that ingest events: the ones RateLimitPerDay counts.
INGEST_ROUTES = frozenset([b"tr", b"str", b"img", b"ltv", b"ws", b"rdr", b"xrdr"])

HSTS_VALUE = b"max-age=31536000"

# A Host header (RFC 9110 7.2): a registered name, IPv4 address or [IPv6 literal], then an
# optional port. Sites, short links, ACME and the HTTPS redirect all key on it, so anything
# else (spaces, slashes, "@", another header's worth of text) is refused before any of them.
_HOST = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
# What the start of a request line may hold before its CRLF (RFC 9112 3: printable ASCII).
_REQUEST_LINE_START = re.compile(rb"[\x20-\x7e]*\r?")
MAX_HOST_BYTES = 262  # a 253-byte DNS name, ":" and a port, with room for brackets
# An absolute-form request target (RFC 9112 3.2.2): the scheme and the authority before the path.
_ABSOLUTE_FORM = re.compile(rb"(?i)https?://([^/?#]*)")


def host_problem(request) -> str | None:
    """Why the request's Host header cannot be used, or None when it can.

    Absent is fine in HTTP/1.0 only: RFC 9112 3.2 makes it a 400 in HTTP/1.1.
    """
    values = request.requestHeaders.getRawHeaders(b"host")
    if values is None:
        return "missing Host header" if request.clientproto == b"HTTP/1.1" else None
    if len(values) > 1:  # RFC 9112 3.2: which one would a proxy in front have used?
        return "more than one Host header"
    if len(values[0]) > MAX_HOST_BYTES or not _HOST.fullmatch(values[0]):
        return "malformed Host header"
    return None


def absolute_form(uri: bytes) -> tuple[bytes, bytes] | None:
    """``(authority, origin-form target)`` of an absolute-form target (``http://host/path?q``),
    None for any other target; ``ValueError`` when its authority cannot be used."""
    m = _ABSOLUTE_FORM.match(uri)
    if m is None:
        return None
    authority = m.group(1)
    # Userinfo ("user@host") is not allowed in http(s) targets (RFC 9110 4.2.4).
    if not authority or len(authority) > MAX_HOST_BYTES or not _HOST.fullmatch(authority):
        raise ValueError("malformed request target")
    rest = uri[m.end() :]
    if not rest.startswith(b"/"):  # "http://host" or "http://host?q": the path is "/"
        rest = b"/" + rest
    return authority, rest


def take_absolute_form(request) -> str | None:
    """Turn an absolute-form target (``GET http://host/path``) into origin form, in place.

    RFC 9112 3.2.2: a server MUST accept it and use its authority, not the Host header.
    Twisted keeps the whole target in ``request.path``; every route (sites, short links,
    ACME, the API) reads ``path``/``uri`` and the Host header, so those are rewritten here
    before any of them runs. Returns why the target cannot be used, or None.
    """
    try:
        target = absolute_form(request.uri)
    except ValueError as e:
        return str(e)
    if target is None:
        return None
    authority, rest = target
    request.uri = rest
    request.path = rest.split(b"?", 1)[0]
    request.requestHeaders.setRawHeaders(b"host", [authority])
    return None


def _bare_line_end_in_chunked(decoder: _ChunkedTransferDecoder) -> bool:
    """Whether what Twisted's chunked decoder holds, unparsed, has a bare LF or CR where a
    chunk-size line, the CRLF after a chunk or a trailer line is being read.

    It keeps bytes only while waiting for a CRLF (a chunk's data is handed on at once), so a
    LF there is a bare one; a CR is fine only as the last byte (its LF may be next). Trailer
    lines it took are split on CRLF alone, so one holding a LF or CR hid a line end.
    """
    state, rest = decoder.state, decoder._buffer
    if state == "TRAILER" and any(b"\n" in t or b"\r" in t for t in decoder._trailerHeaders):
        return True  # a trailer line taken up to the next CRLF, a bare LF or CR inside it
    if state in ("CHUNK_LENGTH", "TRAILER"):
        return b"\n" in rest or b"\r" in rest[:-1]
    if state == "CRLF":
        return bool(rest) and rest[:1] != b"\r"
    return False


class EdgeChannel(CountingChannel):
    """An HTTP channel that gives each request ``read_timeout`` seconds to arrive.

    The idle timeout (``IdleTimeoutSeconds``) only notices silence; a client trickling a
    byte at a time would never trip it. The deadline starts at a request's first byte and
    ends when its headers are in (streamed bodies, which the idle timeout then guards) or
    when its body is in; past it the client gets 408 and the connection is closed.

    It also answers, instead of closing or waiting in silence, the requests Twisted's parser
    cannot take: a request line over ``MaxHeaderBytes`` (414), a head over it (400), a
    malformed line (400), lines ending in a bare LF or CR and a request line that is not text
    (a TLS handshake) at once (400); each then closes.

    One timer per connection, not one per request: a keep-alive connection carries many
    requests a second, and scheduling and cancelling a reactor call for each was a visible
    part of every tracking call. A request only notes its deadline; when the timer fires it
    answers 408 if the request being read is past its deadline, re-arms for the deadline of
    a request that started since, or lapses when nothing is being read.
    """

    read_timeout = 0.0
    over_limit = False
    seconds = None  # the reactor's clock (set by EdgeSite.buildProtocol)
    _between_requests = True
    _reading_until: float | None = None  # the deadline of the request being read
    _timer = None
    _timer_at = 0.0  # the deadline the timer was set for

    def dataReceived(self, data):  # noqa: N802 - Twisted's interface
        if self._between_requests and self.read_timeout:
            self._between_requests = False
            until = self._reading_until = self.seconds() + self.read_timeout
            if self._timer is None:
                self._arm(until, self.read_timeout)
        super().dataReceived(data)
        if self._buffer and self.line_mode and not self._busyReceiving and not self.paused:
            self._check_partial_line(self._buffer)

    def _check_partial_line(self, rest: bytes) -> None:
        """Refuse now what can never become a request line or header line.

        Twisted splits the head of a request on CRLF only, so a request whose lines end in a
        bare LF would wait for a CRLF that never comes (and get a 408 much later). In line
        mode, what is left unsplit is the start of the next line: a LF or CR in it means a bare
        line ending. (Not while re-entered: the buffer may then hold bodies not parsed yet.)
        """
        transport = self.transport
        if transport is None or transport.disconnecting:  # closing, or a WebSocket now
            return
        if b"\n" in rest or b"\r" in rest[:-1]:
            # Refused rather than accepted leniently (RFC 9112 2.2 allows either): a proxy in
            # front that read the bare LF differently could otherwise smuggle a header past it.
            self.refuse(400, "Bad Request", "request lines must end in CRLF")
        elif self._receivedHeaderSize == 0 and not _REQUEST_LINE_START.fullmatch(rest):
            # Binary bytes where a request line starts (a TLS handshake on the HTTP port, say)
            # will never end in CRLF either.
            self.refuse(400, "Bad Request", "not an HTTP/1.1 request")

    def rawDataReceived(self, data):  # noqa: N802 - Twisted's interface
        super().rawDataReceived(data)
        decoder, transport = self._transferDecoder, self.transport
        if transport is None or transport.disconnecting:  # refused already, or closing
            return
        if isinstance(decoder, _ChunkedTransferDecoder) and _bare_line_end_in_chunked(decoder):
            # As in the head: Twisted's chunked decoder looks for CRLF only and would wait
            # for the read deadline (408) on a bare LF; a proxy in front may read it as a line
            # end and see another body (a request smuggled past it).
            self.refuse(400, "Bad Request", "chunked body lines must end in CRLF")

    def lineLengthExceeded(self, line):  # noqa: N802
        """A request line or head over ``MaxHeaderBytes`` (Twisted would just close)."""
        if self._receivedHeaderSize == 0:  # nothing of this request yet: its request line
            return self.refuse(414, "URI Too Long", "request line longer than MaxHeaderBytes")
        # 400 as documented (RFC 6585's 431 would say the same; clients treat both alike).
        return self.refuse(400, "Bad Request", "request headers larger than MaxHeaderBytes")

    def _respondToBadRequestAndDisconnect(self):  # noqa: N802 - Twisted's (private) hook
        """Twisted's answer to a head over ``MaxHeaderBytes`` or a malformed request line,
        header or chunked body (a bare LF inside a line is one), with a reason."""
        if self._receivedHeaderSize > self.totalHeadersSize:  # Twisted counted the line in
            self.refuse(400, "Bad Request", "request headers larger than MaxHeaderBytes")
        else:
            self.refuse(400, "Bad Request", "malformed request")

    def refuse(self, status: int, phrase: str, reason: str):
        """Answer a request that cannot be parsed, then close (nothing after it is read)."""
        self._reading_until = None
        self.persistent = False
        assert self.transport is not None  # a request is being read: connected
        if self.requests and self.requests[-1].startedWriting:
            # A proxied request whose body is streamed is answered while the body arrives:
            # an answer is under way, so no other can be written; the client sees a cut.
            self.transport.abortConnection()
            return
        body = json.dumps({"error": reason}, separators=(",", ":")).encode() + b"\n"
        # zope declares ITransport.write(data) without self: mypy (no zope plugin) miscounts
        self.transport.write(  # type: ignore[call-arg]
            b"HTTP/1.1 %d %s\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, phrase.encode(), len(body), body)
        )
        self.loseConnection()  # LineReceiver stops reading once the transport is closing

    def allHeadersReceived(self):  # noqa: N802
        super().allHeadersReceived()
        if self.requests and getattr(self.requests[-1], "streaming", False):
            self._end_deadline()

    def allContentReceived(self):  # noqa: N802
        self._end_deadline()
        super().allContentReceived()

    def requestDone(self, request):  # noqa: N802
        super().requestDone(request)
        self._between_requests = True

    def pauseProducing(self):  # noqa: N802 - the client does not read what was written
        # Twisted stops reading from the socket then, but goes on parsing and answering
        # every pipelined request already read (~2,000 small ones in 64 KiB): a client that
        # never reads made each connection hold ~30 MB of answers. LineReceiver parses
        # nothing more while ``paused``; resumeProducing parses the rest.
        super().pauseProducing()
        self.paused = True

    def resumeProducing(self):  # noqa: N802 - the transport sent what it held
        super().resumeProducing()
        if self.paused:
            self.paused = False
            transport = self.transport
            if self._buffer and transport is not None and not transport.disconnecting:
                self.dataReceived(b"")

    def connectionLost(self, reason):  # noqa: N802
        self._end_deadline()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        super().connectionLost(reason)

    def _arm(self, until: float, delay: float) -> None:
        self._timer_at = until
        self._timer = self.callLater(max(0.0, delay), self._deadline_passed)

    def _end_deadline(self):
        self._reading_until = None  # the timer stays: it lapses or re-arms when it fires

    def _deadline_passed(self):
        self._timer = None
        until = self._reading_until
        if until is None:
            return  # nothing being read: the next request arms a new timer
        if until <= self._timer_at:
            self._too_slow()
        else:  # a later request is being read: wait for its own deadline
            self._arm(until, until - self.seconds())

    def _too_slow(self):
        self.site.gateway.count("requests_timed_out")
        self.refuse(408, "Request Timeout", "request not received within ReadTimeoutSeconds")

    # Twisted asks the transport again for every request (an interface adaptation for
    # isSecure, a getsockname() system call for getHost); neither changes during a connection.
    _is_secure: bool | None = None
    _host = None

    def isSecure(self):  # noqa: N802
        if self._is_secure is None:
            self._is_secure = super().isSecure()
        return self._is_secure

    def getHost(self):  # noqa: N802
        if self._host is None:
            self._host = super().getHost()
        return self._host


class EdgeSite(GatewaySite):
    channelClass = EdgeChannel

    def __init__(self, gateway, resource, edge=None, **kwargs):
        # No route reads form fields from a POST body (the API takes JSON, /ppi/ reads only
        # the query string, proxies pass the body on as it is), so Twisted need not parse
        # every POST's Content-Type with the email package (~1/6 of a 20-event POST's time)
        # nor a multipart body before the route sees it.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(gateway, resource, **kwargs)
        self.edge = edge
        self.requestFactory = type(
            "EdgeRequest", (StreamingRequest,), {"max_body": gateway.cfg.MaxBodyBytes}
        )

    def buildProtocol(self, addr):  # noqa: N802
        channel = super().buildProtocol(addr)
        cfg = self.gateway.cfg
        channel.read_timeout = cfg.ReadTimeoutSeconds
        # One line may be as long as the whole head may be (Twisted's default, 16 KiB, would
        # close the connection without an answer for a longer one).
        channel.MAX_LENGTH = cfg.MaxHeaderBytes
        channel.seconds = self.reactor.seconds
        # Decided once, as the connection opens (this one is not counted yet).
        channel.over_limit = self.gateway.open_connections >= cfg.MaxConnections
        return channel

    def wants_stream(self, request, method: bytes, uri: bytes) -> bool:
        """Should this request's body go to a proxy as it arrives? (``StreamingRequest``)"""
        if self.edge is None:
            return False
        host = request.getHeader(b"host")
        try:
            target = absolute_form(uri)
        except ValueError:
            return False  # answered 400 when it renders
        if target is not None:  # routed by its authority and path, as EdgeFront.render does
            host, uri = target
        return self.edge.wants_stream(host, uri.split(b"?", 1)[0])


class EdgeFront(Resource):
    isLeaf = True

    def __init__(
        self,
        gateway,
        root,
        *,
        http01=None,
        limiter=None,
        force_https: bool = False,
        https_port: int | None = None,
        hsts: bool = False,
    ):
        super().__init__()
        self.gateway = gateway
        self.root = root
        self.http01 = http01
        self.limiter = limiter
        self.force_https = force_https
        self.https_port = https_port
        self.hsts = hsts
        self.ingest_prefix = gateway.cfg.prefix.encode() + b"/"

    def render(self, request):
        gw = self.gateway
        if getattr(request.channel, "over_limit", False):
            gw.count("connections_refused")
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
            return error(request, 503, "too many connections (MaxConnections)", retry_after=5)
        bad_host = host_problem(request)
        if bad_host is not None:
            return error(request, 400, bad_host)
        if request.path[:1] != b"/":
            bad_target = take_absolute_form(request)
            if bad_target is not None:
                return error(request, 400, bad_target)
        path = request.path
        if path.startswith(ACME_CHALLENGE):
            answer = self._acme_answer(request, path)
            if answer is not None:
                return answer
        secure = self._secure(request)
        if self.force_https and not secure:
            return self._redirect(request)
        if self.hsts and secure:
            request.setHeader(b"strict-transport-security", HSTS_VALUE)
        if self.limiter is not None and self._is_ingestion(request):
            limited = self.rate_limited(request)
            if limited is not None:
                return limited
        return self.root.render(request)

    def rate_limited(self, request) -> bytes | None:
        """Count an ingestion request against its client's RateLimitPerDay: the 429 answer
        when it is over, else None (the fast layer, edge/http.py, asks this too)."""
        gw = self.gateway
        assert self.limiter is not None
        ip = gw.trusted_proxies.client_ip(
            getattr(request.getClientAddress(), "host", "") or "",
            {
                "x-forwarded-for": header(request, "x-forwarded-for"),
                "x-real-ip": header(request, "x-real-ip"),
            },
        )
        if self.limiter.hit(ip):
            return None
        gw.count("requests_rate_limited")
        apply_cors(request, gw.cfg.AllowOrigin)
        return error(
            request,
            429,
            "daily request limit reached (RateLimitPerDay)",
            retry_after=self.limiter.seconds_to_midnight(),
        )

    def _secure(self, request) -> bool:
        """HTTPS here, or at a trusted proxy in front (no redirect loop behind one)."""
        if request.isSecure():
            return True
        proto = request.getHeader(b"x-forwarded-proto")
        if not proto or proto.lower() != b"https":
            return False  # the common case: no need to look at the peer
        peer = getattr(request.getClientAddress(), "host", "") or ""
        return peer in self.gateway.trusted_proxies

    def _is_ingestion(self, request) -> bool:
        if request.method in (b"OPTIONS", b"HEAD"):
            return False
        path = request.path
        if not path.startswith(self.ingest_prefix):
            return False
        return path[len(self.ingest_prefix) :].split(b"/", 1)[0] in INGEST_ROUTES

    def _acme_answer(self, request, path: bytes):
        token = path[len(ACME_CHALLENGE) :].decode("latin-1")
        answer = None
        if self.http01 is not None and token and "/" not in token:
            answer = self.http01.answer(token, host_only(header(request, "host")))
        if answer is None:
            # Never redirected (a CA must reach it over HTTP); unknown tokens are just 404.
            return error(request, 404, "no such ACME challenge") if self.force_https else None
        log.info("ACME http-01: answered the challenge for {host}", host=header(request, "host"))
        request.setHeader(b"content-type", b"text/plain")
        return answer.encode("ascii")

    def _redirect(self, request):
        host = host_only(header(request, "host")) or request.getHost().host
        if ":" in host:
            host = f"[{host}]"
        port = "" if self.https_port in (None, 443) else f":{self.https_port}"
        request.setResponseCode(301)
        request.setHeader(b"location", f"https://{host}{port}".encode() + request.uri)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"moved to https\n"
