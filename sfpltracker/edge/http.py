"""A lean HTTP/1.1 server protocol on Twisted's reactor, parsing with httptools (llhttp).

``twisted.web``'s ``HTTPChannel`` parses in pure Python and builds a ``Request`` with two
``Headers`` objects, ``parse_qs`` of every query and a ``Date`` string per answer: it was the
ceiling of every route (docs/performance.md). This protocol parses with llhttp (the parser
of Node.js) and answers most requests with ``FastRequest``, a small object with the part of
``Request`` the resources use, so the same resource code builds the same rows and answers:
``/ping``, ``/health``, GET and POST ``/tr/v1/tr|str|img|ltv``, ``/tr/v1/rdr|xrdr``, and
every GET/HEAD outside the API: the fallback chain itself (short links, hits and misses,
static files streamed by ``twisted.web.static``'s producers, proxied requests, 404), and
proxied requests with a body (streamed to the proxy as it arrives, ``FastRequest.body_sink``).
The rest (the admin API, ``/ppi/``, ``/pub/``, ``/status``, ``/metrics``, OPTIONS, the
WebSocket upgrade) goes to the ``EdgeSite``'s resource tree through
``AdapterChannel``, which makes a real ``twisted.web`` request of the parsed one: those routes
behave as behind ``EdgeChannel``.

What the protocol itself holds to (tests/test_fast_http.py):

- keep-alive for HTTP/1.1, close after an HTTP/1.0 answer or ``Connection: close``;
  pipelined requests answered one at a time, in order; ``Expect: 100-continue`` answered when
  the request's turn comes; chunked request bodies;
- limits: the request line and head within ``MaxHeaderBytes`` (414 / 400), a body declared
  over ``MaxBodyBytes`` refused with 413 before it is read (proxied paths stream instead),
  ``ReadTimeoutSeconds`` from a request's first byte to its end (408), ``IdleTimeoutSeconds``
  between requests (silent close), ``MaxConnections`` (``EdgeFront``'s 503);
- request smuggling refused with 400 and the connection closed (llhttp in its strict mode,
  plus a ``Transfer-Encoding`` other than exactly ``chunked``): CL + TE, duplicate CLs, bad
  chunk sizes, bare LF, obs-fold, NUL/CR in values, space before the colon.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import deque
from typing import Any

import httptools
from twisted.internet import defer, tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.server import version as _twisted_web_version

from sfpltracker.edge.front import ACME_CHALLENGE, HSTS_VALUE, host_problem
from sfpltracker.edge.streaming import EARLY_BODY_BYTES, keep_early

log = Logger()

# More parsed requests than this waiting behind the one being answered: stop reading.
MAX_PIPELINED = 16
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY = frozenset((204, 304))
_TEXT = re.compile(rb"[\x20-\x7e]*")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What twisted.web's Request names itself: the answers of both layers carry the same.
_SERVER = b"Server: %s\r\n" % _twisted_web_version


_TCP = (tcp.Server, tcp.Client)


def write_now(transport, data: bytes) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued before it.

    Twisted's TCP ``write`` only queues: the reactor registers the socket for writing
    (``epoll_ctl``), sends on its next turn, then unregisters it — two extra system calls and
    a loop turn per answer, a tenth of what a small answer costs. When the queue is empty the
    bytes can go now (order is kept); what the socket does not take is queued as before. TLS
    transports and anything unusual take the ordinary path.
    """
    if type(transport) in _TCP and _idle(transport):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # the ordinary path finds and reports the error
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _idle(transport) -> bool:
    """Nothing queued or pending on this TCP transport (Twisted's FileDescriptor buffers:
    private names, so a Twisted without them takes the ordinary path)."""
    try:
        return bool(
            transport.connected
            and not transport.disconnecting
            # A pull producer (a static file) is asked for more only when a queued write drains.
            and (transport.producer is None or transport.streamingProducer)
            and not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset
        )
    except AttributeError:
        return False


class _Refuse(Exception):
    """Raised in a parser callback: answer ``status`` with ``reason``, then close."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Stop(Exception):
    """Raised in a parser callback: the request just parsed is the connection's last."""


class _Refusal:
    """A refusal waiting its turn in the queue (answers before it are sent first)."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason


class ParsedRequest:
    __slots__ = (
        "method",
        "url",
        "version",
        "raw_headers",
        "headers",
        "keep_alive",
        "chunks",
        "size",
        "complete",
        "content_length",
        "chunked",
        "expect_continue",
        "continued",
        "streaming",
        "request",
        "upgrade",
        "fast",
    )
    # Set from the parser when the head is complete (on_headers_complete).
    method: bytes
    version: bytes
    keep_alive: bool

    def __init__(self):
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: dict[bytes, list[bytes]] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.continued = False
        self.streaming = False
        # Of a streamed or adapted body, once started (a FastRequest: a proxied body).
        self.request: Request | FastRequest | None = None
        self.upgrade = False
        self.fast: FastRequest | None = None  # answering it without twisted.web

    def header(self, name: bytes) -> bytes | None:
        """The last value, as ``twisted.web``'s ``Request.getHeader``."""
        values = self.headers.get(name)
        return values[-1] if values else None


class _HeaderView:
    """The part of ``twisted.web.http_headers.Headers`` the routes read (lower-case names)."""

    __slots__ = ("_h", "_raw")

    def __init__(self, parsed: ParsedRequest):
        self._h = parsed.headers
        self._raw = parsed.raw_headers

    def getRawHeaders(self, name, default=None):  # noqa: N802 - Twisted's interface
        if isinstance(name, str):
            name = name.encode("latin-1")
        return self._h.get(name.lower(), default)

    def hasHeader(self, name) -> bool:  # noqa: N802
        return self.getRawHeaders(name) is not None

    def getAllRawHeaders(self):  # noqa: N802
        return iter(self._h.items())


class _DateCache:
    """The ``Date`` header's value, formatted once per second instead of per answer; and
    per status code, an answer's first lines (status, ``Server``, ``Date``) of that second."""

    def __init__(self):
        self._second = -1
        self._value = b""
        self._heads: dict[int, bytes] = {}

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = datetimeToString(now)
            self._heads = {}
        return self._value

    def head(self, code: int) -> bytes:
        """``HTTP/1.1 <code> <reason>``, ``Server`` and ``Date`` lines, as ``_head`` writes
        them for an answer whose route set none of them (nearly every one)."""
        date = self()
        line = self._heads.get(code)
        if line is None:
            line = _status_line(code, None) + _SERVER + b"Date: " + date + b"\r\n"
            if len(self._heads) < 64:
                self._heads[code] = line
        return line


_date = _DateCache()


# Names Twisted writes with other capitals than Header-Case (its header name encoder's list).
_SPECIAL_CASE = {
    b"Content-Md5": b"Content-MD5",
    b"Dnt": b"DNT",
    b"Etag": b"ETag",
    b"P3p": b"P3P",
    b"Te": b"TE",
    b"Www-Authenticate": b"WWW-Authenticate",
    b"X-Xss-Protection": b"X-XSS-Protection",
}


_CANONICAL: dict[bytes, bytes] = {}


def _canonical(name: bytes) -> bytes:
    """``content-type`` -> ``Content-Type`` (as Twisted writes names), cached per name."""
    out = _CANONICAL.get(name)
    if out is None:
        out = b"-".join(p[:1].upper() + p[1:] for p in name.lower().split(b"-"))
        out = _SPECIAL_CASE.get(out, out)
        if len(_CANONICAL) < 256:
            _CANONICAL[name] = out
    return out


# A status line per code, made once (the answer's first line, without its reason override).
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(code: int, message: bytes | None) -> bytes:
    if not message:
        line = _STATUS_LINES.get(code)
        if line is None:
            line = b"HTTP/1.1 %d %s\r\n" % (code, RESPONSES.get(code, b"Unknown Status"))
            if len(_STATUS_LINES) < 64:
                _STATUS_LINES[code] = line
        return line
    return b"HTTP/1.1 %d %s\r\n" % (code, message)


def _json_error(reason: str) -> bytes:
    return json.dumps({"error": reason}, separators=(",", ":")).encode() + b"\n"


class FastRequest:
    """What ``/ping``, ``/health``, ``TrackResource.render_GET`` and the short-link fallback
    use of a ``twisted.web`` request, without building one (its ``Headers``, ``parse_qs`` of
    the query, its ``Date`` formatting, the resource traversal)."""

    __slots__ = (
        "protocol",
        "parsed",
        "method",
        "uri",
        "path",
        "clientproto",
        "code",
        "code_message",
        "headers_out",
        "cookies",
        "finished",
        "_disconnected",
        "_body",
        "_cookies_in",
        "_streamed",
        "_chunked",
        "_waiting",
        "_content",
        "sentLength",
        "defaultContentType",
        "_head_out",
        "body_sink",
        "_early_body",
        "_body_ended",
    )

    def __init__(self, protocol, parsed: ParsedRequest):
        self.protocol = protocol
        self.parsed = parsed
        self.method = parsed.method
        self.uri = parsed.url
        self.path = parsed.url.split(b"?", 1)[0]
        self.clientproto = parsed.version
        self.code = 200
        self.code_message = None
        self.headers_out: dict[bytes, bytes] = {}
        self.cookies: list[bytes] = []
        self.finished = False
        self._disconnected = False
        self._body: list[bytes] = []
        self._cookies_in: dict[bytes, bytes] | None = None
        self._streamed = False  # a producer writes the body after the head (files, proxy)
        self._chunked = False  # ... of a length not known in advance (a proxied answer)
        self._waiting: list[defer.Deferred] | None = None  # notifyFinish()
        self._content: io.BytesIO | None = None
        # twisted.web's default for an answer that sets none (its bodiless redirects have it)
        self.defaultContentType = b"text/html"
        self.sentLength = 0
        self._head_out = b""  # a streamed answer's head, sent with the first body bytes
        self.body_sink = None  # a proxied body's consumer (edge/proxy.py StreamedBody)
        self._early_body: list[bytes] | None = None  # body read before body_sink was set
        self._body_ended = False  # requestReceived() came (the streamed body has ended)

    # -- reading -----------------------------------------------------------------------------

    def getHeader(self, name):  # noqa: N802 - Twisted's interface
        # The routes ask with lower-case bytes (several times a request): one lookup then.
        values = self.parsed.headers.get(name)
        if values is not None:
            return values[-1]
        if type(name) is bytes and name.islower():
            return None
        if isinstance(name, str):
            name = name.encode("latin-1")
        return self.parsed.header(name.lower())

    @property
    def requestHeaders(self) -> _HeaderView:  # noqa: N802 - Twisted's name
        return _HeaderView(self.parsed)

    def getClientAddress(self):  # noqa: N802
        return self.protocol.peer

    @property
    def channel(self):
        """What the proxy's body relay closes when an upstream answer breaks off."""
        return self.protocol

    def isSecure(self) -> bool:  # noqa: N802
        return self.protocol.secure

    @property
    def content(self) -> io.BytesIO:
        """The request's body (complete: the layer answers a request once it is read)."""
        if self._content is None:
            self._content = io.BytesIO(b"".join(self.parsed.chunks))
        return self._content

    @property
    def responseHeaders(self) -> _ResponseHeaders:  # noqa: N802 - Twisted's interface
        return _ResponseHeaders(self)

    @property
    def received_cookies(self) -> dict[bytes, bytes]:
        """Parsed on first use, as ``Request.parseCookies`` does."""
        if self._cookies_in is None:
            cookies: dict[bytes, bytes] = {}
            for text in self.parsed.headers.get(b"cookie", ()):
                for cookie in text.split(b";"):
                    k, sep, v = cookie.lstrip().partition(b"=")
                    if sep:
                        cookies[k] = v
            self._cookies_in = cookies
        return self._cookies_in

    def header_dict(self) -> dict[str, str]:
        """``RequestInfo.headers`` (web/common.py ``request_info``): lower-cased names, each
        header's first value, as text: what the ``RequestHeaders`` view reads of a
        ``twisted.web`` request, as a dict (ingestion reads a handful of them per request)."""
        return {k.decode("latin-1"): v[0].decode("latin-1") for k, v in self.parsed.headers.items()}

    def cookie_dict(self) -> dict[str, str]:
        """``RequestInfo.cookies``: ``received_cookies`` as text (as ``RequestCookies`` reads)."""
        cookies = self.received_cookies
        if not cookies:
            return {}
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in cookies.items()}

    # -- answering ---------------------------------------------------------------------------

    def setResponseCode(self, code: int, message=None):  # noqa: N802
        self.code = code
        self.code_message = message

    def setHeader(self, name, value):  # noqa: N802
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        self.headers_out[name.lower()] = value

    def set_headers(self, headers: dict[bytes, bytes]) -> None:
        """``setHeader`` of each (lower-case names, bytes values), in one step."""
        self.headers_out.update(headers)

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._streamed:
            if not self._disconnected:
                self.sentLength += len(data)
                head, self._head_out = self._head_out, b""
                if self._chunked:
                    data = b"%s%x\r\n%s\r\n" % (head, len(data), data)
                elif head:
                    data = head + data
                write_now(self.protocol.transport, data)
        else:
            self._body.append(data)

    def registerProducer(self, producer, streaming) -> None:  # noqa: N802
        """A static file's producer (twisted.web.static's): the head goes out now, with the
        Content-Length the route set, and the producer writes the body as the transport
        drains (it takes the protocol's place as the transport's producer meanwhile)."""
        self._streamed = True
        self.protocol.stream_head(self)
        if not streaming:
            # A file's pull producer: the head goes now, as its own write (the transport
            # asks the producer for the body).
            self.flush_head()
        if not self._disconnected:
            self.protocol.lend_transport(producer, streaming)

    def flush_head(self) -> None:
        """Send a streamed answer's head now (its body may be long in coming)."""
        if self._head_out and not self._disconnected:
            head, self._head_out = self._head_out, b""
            write_now(self.protocol.transport, head)

    def unregisterProducer(self) -> None:  # noqa: N802
        if not self._disconnected:
            self.flush_head()
            self.protocol.take_back_transport()

    def finish(self) -> None:
        if self.finished or self._disconnected:
            return
        self.finished = True
        if self._early_body is not None:
            self.drop_early_body()
        if self._streamed:
            tail = self._head_out + (b"0\r\n\r\n" if self._chunked else b"")
            self._head_out = b""
            if tail:
                write_now(self.protocol.transport, tail)
            self.protocol.stream_done(self)
        else:
            body = self._body
            self.protocol.fast_answered(self, body[0] if len(body) == 1 else b"".join(body))
        waiting, self._waiting = self._waiting, None
        for d in waiting or ():
            d.callback(None)

    def notifyFinish(self) -> defer.Deferred:  # noqa: N802
        """Fires when the answer is written, fails when the client goes first (the proxy
        cancels its upstream request then)."""
        d: defer.Deferred = defer.Deferred()
        if self._waiting is None:
            self._waiting = []
        self._waiting.append(d)
        return d

    # -- a proxied request's body, as it arrives (what edge/streaming.py's StreamingRequest
    # offers the proxy's StreamedBody): the protocol calls the two twisted.web names ----------

    @property
    def streaming(self) -> bool:
        return self.parsed.streaming

    @property
    def declared_length(self) -> int | None:
        return self.parsed.content_length  # None: chunked

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self.finished:
            self._early_body = None  # answered already: the body is not wanted
        elif self.body_sink is not None:
            self.body_sink.data(data)
        else:
            # The route has not decided yet (a short link looked up in the store, then the
            # proxy): kept for attach_body(), the client paused past EARLY_BODY_BYTES.
            self._early_body = keep_early(self._early_body, data, self.pause_reading)

    def attach_body(self, sink) -> None:
        """``sink`` takes the body from here on, after what was read before it came."""
        self.body_sink = sink
        early, self._early_body = self._early_body, None
        for chunk in early or ():
            sink.data(chunk)
        if self._body_ended:
            sink.end()

    def drop_early_body(self) -> None:
        """Answered without taking the body: what was kept goes, the client is read again."""
        if self._early_body is not None:
            self._early_body = None
            self.resume_reading()

    def requestReceived(self, command, path, version) -> None:  # noqa: N802
        """The streamed body has ended."""
        self._body_ended = True
        if self.body_sink is not None:
            self.body_sink.end()

    def pause_reading(self) -> None:
        if not self._disconnected:
            self.protocol.transport.pauseProducing()

    def resume_reading(self) -> None:
        if not self._disconnected:
            self.protocol.transport.resumeProducing()

    def connectionLost(self, reason) -> None:  # noqa: N802
        self._disconnected = True
        waiting, self._waiting = self._waiting, None
        for d in waiting or ():
            d.errback(reason)


class _ResponseHeaders:
    """The part of ``Request.responseHeaders`` the routes use, over ``FastRequest.headers_out``
    (one value a name; ``Set-Cookie`` values go to ``FastRequest.cookies``)."""

    __slots__ = ("_r",)

    def __init__(self, request: FastRequest):
        self._r = request

    @staticmethod
    def _name(name) -> bytes:
        return (name.encode("latin-1") if isinstance(name, str) else name).lower()

    def setRawHeaders(self, name, values) -> None:  # noqa: N802
        name = self._name(name)
        values = [v.encode("latin-1") if isinstance(v, str) else v for v in values]
        if name == b"set-cookie":
            self._r.cookies[:] = values
        elif values:
            self._r.headers_out[name] = b", ".join(values)

    def addRawHeader(self, name, value) -> None:  # noqa: N802
        name = self._name(name)
        if isinstance(value, str):
            value = value.encode("latin-1")
        if name == b"set-cookie":
            self._r.cookies.append(value)
            return
        old = self._r.headers_out.get(name)
        self._r.headers_out[name] = value if old is None else old + b", " + value

    def getRawHeaders(self, name, default=None):  # noqa: N802
        name = self._name(name)
        if name == b"set-cookie":
            return list(self._r.cookies) or default
        value = self._r.headers_out.get(name)
        return default if value is None else [value]

    def hasHeader(self, name) -> bool:  # noqa: N802
        return self.getRawHeaders(name) is not None

    def removeHeader(self, name) -> None:  # noqa: N802
        name = self._name(name)
        if name == b"set-cookie":
            self._r.cookies.clear()
        else:
            self._r.headers_out.pop(name, None)


class AdapterChannel:
    """What a ``twisted.web`` request needs of its channel, over ``FastHTTPProtocol``: the
    parsed request is handed to the ``EdgeSite`` resource tree as ``HTTPChannel`` would."""

    def __init__(self, protocol, parsed: ParsedRequest):
        self.protocol = protocol
        self.parsed = parsed
        self.transport = protocol.transport
        self.site = self.factory = protocol.factory.site
        self.over_limit = protocol.over_limit
        self.persistent = parsed.keep_alive
        self._command = parsed.method
        self._path = parsed.url
        self._version = parsed.version

    def getPeer(self):  # noqa: N802
        return self.protocol.peer

    def getHost(self):  # noqa: N802
        return self.protocol.host

    def isSecure(self) -> bool:  # noqa: N802
        return self.protocol.secure

    def writeHeaders(self, version, code, reason, headers):  # noqa: N802
        out = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                out.extend((name, b": ", value, b"\r\n"))
        out.append(b"\r\n")
        self.write(b"".join(out))

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def writeSequence(self, data) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.writeSequence(data)

    def registerProducer(self, producer, streaming):  # noqa: N802
        if self.transport is not None:
            self.protocol.lend_transport(producer, streaming)

    def unregisterProducer(self):  # noqa: N802
        if self.transport is not None:
            self.protocol.take_back_transport()

    def requestDone(self, request):  # noqa: N802
        self.protocol.adapter_done(self)

    def loseConnection(self):  # noqa: N802
        self.protocol.close()

    def _respondToBadRequestAndDisconnect(self):  # noqa: N802 - Twisted's (private) hook
        self.protocol.write_refusal(400, "malformed request")
        self.protocol.close()

    def connectionLost(self, reason):  # noqa: N802
        # A WebSocket that took the transport over tells us when it closes.
        self.protocol.connectionLost(reason)

    def dataReceived(self, data):  # noqa: N802 - replaced by the proxy's WebSocket tunnel
        pass

    # What edge/proxy.py's ``splice`` takes over from an HTTPChannel for a WebSocket tunnel:
    # the bytes read after the upgrade request, the time-out, then dataReceived/connectionLost.
    @property
    def _dataBuffer(self):  # noqa: N802
        held = self.protocol._held
        return [held] if held else []

    @_dataBuffer.setter
    def _dataBuffer(self, value):  # noqa: N802
        self.protocol._held = b"".join(value)

    def setTimeout(self, timeout):  # noqa: N802
        if timeout is None:
            self.protocol.tunnel(self)


class FastHTTPProtocol(Protocol):
    factory: FastHTTPFactory
    # Twisted types it ITransport | None, zope interface methods that mypy (without the zope
    # plugin) reads without self; it is set before connectionMade, and nothing here writes
    # once the connection is lost (``_lost``).
    transport: Any
    over_limit = False
    peer = None
    host = None
    secure = False

    def __init__(self):
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque = deque()
        self._cur: ParsedRequest | None = None  # the request being parsed
        self._active = None  # the request being answered
        self._head_bytes = 0  # request line + headers of the request being parsed
        self._closing = False
        self._reading = True  # False once the last request has been read
        self._lost = False
        self._paused = False
        self._holding = False  # a queued proxied body past EARLY_BODY_BYTES: _paused until its turn
        self._dispatching = False
        self._upgraded = False
        self._held: bytes | None = None  # bytes after an upgrade request, until it is answered
        self._reading_until: float | None = None
        self._last = 0.0
        self._timer = None
        self._tunnel: AdapterChannel | None = None  # a proxied WebSocket: bytes go through

    # -- connection --------------------------------------------------------------------------

    def connectionMade(self):  # noqa: N802
        f = self.factory
        f.gateway.connection_opened()
        t = self.transport
        self.peer = t.getPeer()
        self.host = t.getHost()
        self.secure = ISSLTransport(t, None) is not None
        self._last = f.seconds()
        self._arm(f.read_timeout or f.idle_timeout)
        # Answers the client does not read fill the transport's buffer: it then pauses us,
        # and we stop reading requests (a pipelining client cannot grow our memory).
        t.registerProducer(self, True)

    # -- the transport's producer: stop reading while the client does not read our answers --

    _write_paused = False

    def pauseProducing(self):  # noqa: N802
        if not self._write_paused:
            self._write_paused = True
            if not self._paused:
                self.transport.pauseProducing()

    def resumeProducing(self):  # noqa: N802
        if self._write_paused:
            self._write_paused = False
            if not self._paused and not self._lost:
                self.transport.resumeProducing()

    def stopProducing(self):  # noqa: N802
        pass  # the connection is going; connectionLost follows

    def connectionLost(self, reason=None):  # noqa: N802
        if self._tunnel is not None:
            tunnel, self._tunnel = self._tunnel, None
            tunnel.connectionLost(reason)  # the proxy's tunnel closes its upstream side
            return
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self.factory.gateway.connection_closed()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        active, self._active = self._active, None
        if isinstance(active, ParsedRequest):
            if active.fast is not None:
                active.fast.connectionLost(reason or Failure(ConnectionError("lost")))
            elif active.request is not None:
                active.request.connectionLost(reason or Failure(ConnectionError("lost")))
        self._queue.clear()

    def close(self) -> None:
        """Read nothing more; close once what was written has been sent."""
        self._closing = True
        if self.transport is not None and not self._lost:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes):  # noqa: N802
        if self._tunnel is not None:
            self._tunnel.dataReceived(data)
            return
        if not self._reading or self._closing:
            return
        if self._held is not None:
            self._held += data
            return
        f = self.factory
        self._last = now = f.seconds()
        if self._cur is None and self._reading_until is None and f.read_timeout:
            self._reading_until = now + f.read_timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            # llhttp stops after an upgrade request: what follows waits for its answer.
            self._held = data[int(e.args[0]) :]
        except httptools.HttpParserCallbackError as e:
            refusal = e.__context__
            if isinstance(refusal, _Stop):
                pass  # the rest is not read
            elif isinstance(refusal, _Refuse):
                self._refuse_later(refusal.status, refusal.reason)
            else:  # a bug of ours in a callback: never a silent hang
                log.failure("HTTP parser callback failed", Failure(refusal))
                self._refuse_later(400, "malformed request")
        except httptools.HttpParserError as e:
            self._parse_error(str(e), data)
        self._dispatch()

    def _parse_error(self, message: str, data: bytes) -> None:
        """Refuse what llhttp refused, with the reasons ``EdgeChannel`` gives."""
        if self._cur is None or not self._cur.url:  # at the request line's start
            method = data.lstrip(b"\r\n").split(b" ", 1)[0]
            if not _TEXT.fullmatch(method):  # a TLS handshake on the HTTP port, say
                self._refuse_later(400, "not an HTTP/1.1 request")
                return
            if "method" in message.lower() and _TOKEN.fullmatch(method):
                # A method no route takes (RFC 9110 allows any token): as GatewayRoot answers.
                self._refuse_later(405, "method not allowed here")
                return
        if "CR" in message or "LF" in message:
            self._refuse_later(400, "request lines must end in CRLF")
        else:
            self._refuse_later(400, "malformed request")

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self):
        self._cur = ParsedRequest()
        self._head_bytes = 0
        if self._reading_until is None and self.factory.read_timeout:
            self._reading_until = self.factory.seconds() + self.factory.read_timeout

    # The parser calls on_message_begin first: in the callbacks below ``_cur`` is set.

    def on_url(self, url: bytes):
        cur = self._cur
        assert cur is not None
        cur.url += url
        if len(cur.url) + 16 > self.factory.max_header_bytes:
            raise _Refuse(414, "request line longer than MaxHeaderBytes")

    def on_header(self, name: bytes, value: bytes):
        cur = self._cur
        assert cur is not None
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes + len(cur.url) + 16 > self.factory.max_header_bytes:
            raise _Refuse(400, "request headers larger than MaxHeaderBytes")
        lname = name.lower()
        if lname == b"transfer-encoding" and value.strip().lower() != b"chunked":
            # llhttp takes "identity, chunked"; a proxy in front may read it otherwise.
            raise _Refuse(400, "Transfer-Encoding other than chunked")
        cur.raw_headers.append((name, value))
        values = cur.headers.get(lname)
        if values is None:
            cur.headers[lname] = [value]
        else:
            values.append(value)

    def on_headers_complete(self):
        cur = self._cur
        assert cur is not None
        p = self._parser
        f = self.factory
        cur.method = p.get_method()
        version = p.get_http_version()
        cur.version = b"HTTP/1.1" if version == "1.1" else b"HTTP/1.0"
        # HTTP/1.0 answers close the connection, as behind twisted.web.
        cur.keep_alive = version == "1.1" and p.should_keep_alive()
        cur.upgrade = p.should_upgrade()
        headers = cur.headers
        cl = headers.get(b"content-length")  # (ParsedRequest.header(), inlined: per request)
        cur.content_length = int(cl[-1]) if cl else None
        cur.chunked = b"transfer-encoding" in headers
        has_body = cur.chunked or bool(cur.content_length)
        if has_body and f.site.wants_stream(_HostView(cur), cur.method, cur.url):
            cur.streaming = True  # a proxied body: streamed as it arrives, no MaxBodyBytes
        elif (cur.content_length or 0) > f.max_body_bytes:
            raise _Refuse(413, f"request body larger than MaxBodyBytes ({f.max_body_bytes})")
        expect = headers.get(b"expect")
        cur.expect_continue = (
            expect is not None
            and expect[-1].lower() == b"100-continue"
            and cur.version == b"HTTP/1.1"
        )
        self._queue.append(cur)
        if cur.streaming or cur.expect_continue:
            self._dispatch()

    def on_body(self, body: bytes):
        cur = self._cur
        assert cur is not None
        cur.size += len(body)
        if cur.request is not None:  # streaming to a proxy already
            cur.request.handleContentChunk(body)
            return
        if not cur.streaming and cur.size > self.factory.max_body_bytes:
            raise _Refuse(
                413, f"request body larger than MaxBodyBytes ({self.factory.max_body_bytes})"
            )
        cur.chunks.append(body)
        if cur.streaming and cur.size >= EARLY_BODY_BYTES and not self._holding:
            # A proxied body waiting its turn behind an earlier request (pipelined): held up
            # to EARLY_BODY_BYTES, then the client is not read until its turn (_dispatch);
            # the read deadline is ours to wait out, not the client's (the idle timeout
            # guards the body once it is streamed).
            self._reading_until = None
            self._holding = True
            if not self._paused:
                self._paused = True
                if not self._write_paused:
                    self.transport.pauseProducing()

    def on_message_complete(self):
        cur, self._cur = self._cur, None
        assert cur is not None
        self._reading_until = None
        cur.complete = True
        if cur.request is not None:  # a streamed body has ended
            cur.request.requestReceived(cur.method, cur.url, cur.version)
        if not cur.keep_alive:
            self._reading = False
            raise _Stop()
        if len(self._queue) > MAX_PIPELINED and not self._paused:
            self._paused = True
            if not self._write_paused:
                self.transport.pauseProducing()

    # -- answering in order ------------------------------------------------------------------

    def _refuse_later(self, status: int, reason: str) -> None:
        """Queue a refusal behind the requests parsed before it; read nothing more."""
        cur, self._cur = self._cur, None
        if cur is not None:
            if cur is self._active:  # a body being streamed to a proxy went wrong: give up
                self._closing = True
                self.transport.abortConnection()
                return
            if cur in self._queue:
                self._queue.remove(cur)
        self._reading_until = None
        self._queue.append(_Refusal(status, reason))
        self._reading = False  # dataReceived ignores the rest

    def _dispatch(self) -> None:
        if self._dispatching or self._lost:
            return
        self._dispatching = True
        try:
            while self._active is None and self._queue and not self._lost:
                item = self._queue[0]
                if isinstance(item, _Refusal):
                    self._queue.clear()
                    self.write_refusal(item.status, item.reason)
                    self.close()
                    return
                if not item.complete:
                    if item.expect_continue and not item.continued:
                        item.continued = True
                        self.transport.write(_CONTINUE)
                    if item.streaming and item.request is None:
                        # Its turn: the proxy reads the client again when its upstream is
                        # ready (edge/proxy.py StreamedBody), or the answer does.
                        self._holding = self._paused = False
                        self._queue.popleft()
                        self._active = item
                        self._reading_until = None  # the idle timeout guards the body
                        self._respond(item)
                    return
                self._queue.popleft()
                self._active = item
                self._respond(item)
            if (
                self._paused
                and not self._holding
                and len(self._queue) <= MAX_PIPELINED // 2
                and not self._closing
            ):
                self._paused = False
                if not self._write_paused:
                    self.transport.resumeProducing()
        finally:
            self._dispatching = False

    def _done(self, keep_alive: bool) -> None:
        if self._active is not None:
            # Answered: break the ParsedRequest <-> FastRequest cycle, so reference counting
            # frees both and their header lists now. Left to the cyclic GC, each request's
            # ~15 objects made a worker run a gen-0 collection of ~8,000 about every second,
            # a pause of its reactor in the middle of a burst (docs/performance.md).
            self._active.fast = None
        self._active = None
        if not keep_alive or self._closing:
            self.close()
            return
        self._last = self.factory.seconds()
        self._arm_idle()
        if self._held is not None and not self._upgraded:
            # An upgrade request answered without upgrading: read on with a fresh parser.
            data, self._held = self._held, None
            self._parser = httptools.HttpRequestParser(self)
            if data:
                self.dataReceived(data)
        self._dispatch()

    def _respond(self, parsed: ParsedRequest) -> None:
        request = FastRequest(self, parsed)
        route = self.factory.fast_route(self, request)
        if route is None:
            self._adapt(parsed)
            return
        parsed.fast = request
        counters = self.factory.gateway.counters  # (gw.count(), inlined: per request)
        counters["http_fast_answers"] = counters.get("http_fast_answers", 0) + 1
        try:
            body = route(request)
        except Exception:
            log.failure("fast route failed")
            request.setResponseCode(500)
            request.headers_out = {b"content-type": b"application/json"}
            body = _json_error("internal error")
        if parsed.streaming:  # a proxied body: what came of it so far, then the rest
            parsed.request = request
            for chunk in parsed.chunks:
                request.handleContentChunk(chunk)
            parsed.chunks = []
            if parsed.complete:
                request.requestReceived(parsed.method, parsed.url, parsed.version)
        if body is not NOT_DONE_YET:
            request.finished = True
            if request._early_body is not None:
                request.drop_early_body()
            self.fast_answered(request, body)

    def _head(self, request: FastRequest, length: int | None) -> list[bytes]:
        """The status line and headers of a ``FastRequest``'s answer (``length``: of the body
        about to follow, unless the route set its Content-Length)."""
        code = request.code
        headers = request.headers_out
        if request.code_message is None and b"server" not in headers and b"date" not in headers:
            out = [_date.head(code)]  # the same three lines, made once per second
        else:
            out = [_status_line(code, request.code_message)]
            if b"server" not in headers:  # a proxied answer keeps its upstream's
                out.append(_SERVER)
            if b"date" not in headers:
                out.append(b"Date: %s\r\n" % _date())
        if (
            b"content-type" not in headers
            and request.defaultContentType is not None
            and code not in _NO_BODY
            and headers.get(b"content-length") != b"0"
        ):
            # As twisted.web's Request.write decides it (an explicit length 0 has none).
            out.append(b"Content-Type: %s\r\n" % request.defaultContentType)
        if code not in _NO_BODY and length is not None and b"content-length" not in headers:
            out.append(b"Content-Length: %d\r\n" % length)
        if self.factory.hsts and self.secure:
            headers[b"strict-transport-security"] = HSTS_VALUE
        canonical = _CANONICAL.get
        for name, value in headers.items():
            out += (canonical(name) or _canonical(name), b": ", value, b"\r\n")
        for cookie in request.cookies:
            out += (b"Set-Cookie: ", cookie, b"\r\n")
        parsed = request.parsed
        if parsed.streaming and not parsed.complete:
            # Answered before its body ended: the rest is not read (as StreamingRequest).
            parsed.keep_alive = False
        if not parsed.keep_alive:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        return out

    def fast_answered(self, request: FastRequest, body: bytes) -> None:
        """Write a ``FastRequest``'s answer in one piece."""
        if self._lost or self._active is not request.parsed:
            return
        parsed = request.parsed
        out = self._head(request, len(body))
        if parsed.method != b"HEAD" and request.code not in _NO_BODY:
            out.append(body)
        request.sentLength = len(body)
        write_now(self.transport, b"".join(out))
        if self.factory.debug:
            self.factory.site.log(request)
        self._done(parsed.keep_alive)

    def stream_head(self, request: FastRequest) -> None:
        """The head of an answer whose body a producer writes (``FastRequest.registerProducer``)."""
        if self._lost or self._active is not request.parsed:
            request._disconnected = True
            return
        parsed = request.parsed
        headers = request.headers_out
        if (
            b"content-length" not in headers
            and parsed.method != b"HEAD"
            and request.code not in _NO_BODY
        ):
            if parsed.version == b"HTTP/1.1":  # as twisted.web frames it
                request._chunked = True
                headers[b"transfer-encoding"] = b"chunked"
            else:
                parsed.keep_alive = False  # the body ends with the connection
        # Held until the first body bytes (one send for both) or flush_head().
        request._head_out = b"".join(self._head(request, None))

    def stream_done(self, request: FastRequest) -> None:
        if self._lost or self._active is not request.parsed:
            return
        if self.factory.debug:
            self.factory.site.log(request)
        self._done(request.parsed.keep_alive)

    def lend_transport(self, producer, streaming) -> None:
        """A static file's producer takes the protocol's place on the transport while it runs."""
        self.transport.unregisterProducer()
        self.transport.registerProducer(producer, streaming)

    def take_back_transport(self) -> None:
        if self._lost:
            return
        self.transport.unregisterProducer()
        if not self._upgraded:
            self.transport.registerProducer(self, True)
            # A pause of ours may have no resume coming (the file's producer got it).
            self.resumeProducing()

    def _adapt(self, parsed: ParsedRequest) -> None:
        """Hand ``parsed`` to the ``EdgeSite``'s resource tree as a ``twisted.web`` request."""
        channel = AdapterChannel(self, parsed)
        site = channel.site
        request = site.requestFactory(channel)
        headers = Headers()
        for name, value in parsed.raw_headers:
            headers.addRawHeader(name, value)
        request.requestHeaders = headers
        if not parsed.keep_alive and parsed.version == b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        request.parseCookies()
        parsed.request = request
        if parsed.streaming:
            length = parsed.content_length
            request.gotLength(length)  # StreamingRequest renders now; the body follows
            for chunk in parsed.chunks:
                request.handleContentChunk(chunk)
            parsed.chunks = []
            if parsed.complete:
                request.requestReceived(parsed.method, parsed.url, parsed.version)
        else:
            request.gotLength(parsed.size)
            for chunk in parsed.chunks:
                request.handleContentChunk(chunk)
            parsed.chunks = []
            request.requestReceived(parsed.method, parsed.url, parsed.version)
        if channel.transport is None and not self._upgraded:
            # A WebSocket took the connection over: it is no longer HTTP.
            self._upgraded = True
            self.transport.unregisterProducer()
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None

    def tunnel(self, channel: AdapterChannel) -> None:
        """The connection is a byte pipe now (edge/proxy.py ``splice``): no HTTP, no timer."""
        self._tunnel = channel
        self._upgraded = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def adapter_done(self, channel: AdapterChannel) -> None:
        if self._active is not channel.parsed:
            return
        parsed = channel.parsed
        if parsed.streaming and not parsed.complete:
            # Answered before its body ended (StreamingRequest closes): read nothing more.
            self._closing = True
        self._done(channel.persistent and parsed.keep_alive)

    def write_refusal(self, status: int, reason: str) -> None:
        body = _json_error(reason)
        allow = b"Allow: GET, HEAD, POST, PUT, OPTIONS\r\n" if status == 405 else b""
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nDate: %s\r\nConnection: close\r\n%s"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, RESPONSES.get(status, b"Error"), _date(), allow, len(body), body)
        )

    # -- time-outs: one timer per connection -------------------------------------------------

    def _arm(self, delay: float) -> None:
        if delay > 0:
            self._timer = self.factory.call_later(delay, self._tick)

    def _arm_idle(self) -> None:
        """Wake at the idle deadline of a connection that just answered, when the timer would
        wake later (it may be set for the read deadline, ReadTimeoutSeconds away)."""
        idle = self.factory.idle_timeout
        timer = self._timer
        if not idle or self._lost:
            return
        if timer is not None and timer.active():
            if timer.getTime() <= self._last + idle:
                return
            timer.cancel()
        self._arm(idle)

    def _tick(self) -> None:
        """Answer 408 to a request past its read deadline, close an idle connection, or
        sleep until one of them could next happen."""
        self._timer = None
        if self._lost or self._upgraded:
            return
        f = self.factory
        now = f.seconds()
        until = self._reading_until
        if until is not None:
            if now >= until:
                f.gateway.count("requests_timed_out")
                self._refuse_later(408, "request not received within ReadTimeoutSeconds")
                self._dispatch()
                return
            self._arm(until - now)
            return
        idle = f.idle_timeout
        active = self._active
        # An answer being prepared is not idleness (as behind twisted.web); a client that
        # stops sending a streamed upload is.
        uploading = isinstance(active, ParsedRequest) and active.streaming and not active.complete
        busy = bool(self._queue) or (active is not None and not uploading)
        if idle and not busy and now - self._last >= idle:
            # As twisted.web's channel logs it (web/site.py keeps the address out of it).
            log.info("Timing out client: {peer}", peer="(address not logged)")
            self.close()
            return
        wake = [f.read_timeout] if f.read_timeout else []
        if idle:
            wake.append(idle if busy else self._last + idle - now)
        self._arm(max(0.01, min(wake)))


class _HostView:
    """``request.getHeader`` over a parsed head, for ``EdgeSite.wants_stream``."""

    __slots__ = ("_p",)

    def __init__(self, parsed: ParsedRequest):
        self._p = parsed

    def getHeader(self, name):  # noqa: N802
        if isinstance(name, str):
            name = name.encode("latin-1")
        return self._p.header(name.lower())


class FastHTTPFactory(Factory):
    """A listener's factory: ``FastHTTPProtocol`` in front of an ``EdgeSite``."""

    # FastHTTPProtocol.factory is this class; Twisted's stubs want ``factory: Factory | None``.
    protocol = FastHTTPProtocol  # type: ignore[assignment]

    def __init__(self, site):
        self.site = site
        self.gateway = gw = site.gateway
        cfg = gw.cfg
        self.front = front = site.resource  # EdgeFront
        self.root = root = front.root  # GatewayRoot
        reactor = site.reactor
        self.seconds = reactor.seconds
        self.call_later = reactor.callLater
        self.read_timeout = cfg.ReadTimeoutSeconds
        self.idle_timeout = cfg.IdleTimeoutSeconds
        self.max_header_bytes = cfg.MaxHeaderBytes
        self.max_body_bytes = cfg.MaxBodyBytes
        self.max_connections = cfg.MaxConnections
        self.debug = cfg.Debug
        self.hsts = front.hsts
        # The routes answered without twisted.web: what EdgeFront and GatewayRoot would
        # route there (the rest of EdgeFront's rules are checked per request below).
        self.ops = {p: root.ops[p].render_GET for p in (b"/ping", b"/health")}
        self.other_ops = frozenset(root.ops) - frozenset(self.ops)  # /status, /metrics, ...
        self.prefix = root.prefix + b"/"
        # (method, API route name) -> the resource's method (ingestion routes all: with
        # RateLimitPerDay, EdgeFront's count and 429 first).
        self.api: dict[tuple[bytes, bytes], Any] = {}
        limit = self._rate_limited
        for name in (b"tr", b"str", b"img", b"ltv"):
            self.api[b"GET", name] = limit(root.api[name].render_GET)
            self.api[b"POST", name] = limit(root.api[name].render_POST)
        for name in (b"rdr", b"xrdr"):
            self.api[b"GET", name] = self.api[b"POST", name] = limit(root.api[name].render_GET)
        # Paths outside the API: the fallback chain (short links, proxy routes, static
        # sites, 404), and a proxied request's streamed body. A WebSocket upgrade is handed to
        # twisted.web.
        self.fallbacks = root.render_fallbacks
        # Host values host_problem() found well-formed (a site's requests carry a few):
        # checked once each instead of by regular expression on every request.
        self._good_hosts: set[bytes] = set()

    def buildProtocol(self, addr):  # noqa: N802
        p = self.protocol()
        p.factory = self
        # Decided once, as the connection opens: over the cap, EdgeFront answers 503.
        p.over_limit = self.gateway.open_connections >= self.max_connections
        return p

    def fast_route(self, protocol, request: FastRequest):
        """The resource method answering ``request`` without twisted.web, or None."""
        parsed = request.parsed
        if protocol.over_limit or parsed.upgrade:
            return None
        if self.front.force_https and not protocol.secure:
            return self._insecure(request)
        path = request.path
        method = request.method
        route = self.ops.get(path)
        if route is not None:
            if method not in (b"GET", b"HEAD"):
                return None
        elif path.startswith(self.prefix):
            name_end = path.find(b"/", len(self.prefix))
            name = path[len(self.prefix) : None if name_end < 0 else name_end]
            route = self.api.get((method, name))
            if route is None:
                return None  # another API route or method: twisted.web
        elif (method not in (b"GET", b"HEAD") and not parsed.streaming) or path[:1] != b"/":
            return None  # absolute-form targets: EdgeFront rewrites them
        elif path in self.other_ops or path.startswith(ACME_CHALLENGE):
            return None
        else:
            route = self.fallbacks  # a proxy route's requests too (edge/proxy.py)
        hosts = parsed.headers.get(b"host")
        if hosts is None or len(hosts) != 1 or hosts[0] not in self._good_hosts:
            if host_problem(request) is not None:
                return None  # EdgeFront answers it (a missing Host too)
            if hosts is not None and len(self._good_hosts) < 256:
                self._good_hosts.add(hosts[0])  # one Host header, well-formed: not again
        return route

    def _rate_limited(self, route):
        """``route``, counted against RateLimitPerDay first when it is set (EdgeFront's)."""
        if self.front.limiter is None:
            return route
        rate_limited = self.front.rate_limited

        def limited(request):
            answer = rate_limited(request)
            return route(request) if answer is None else answer

        return limited

    def _insecure(self, request: FastRequest):
        """ForceHTTPS on a plain listener: EdgeFront's 301 to https; what it would not
        redirect (ACME challenges, behind a TLS proxy it trusts) and odd targets or hosts
        go to it through twisted.web."""
        path = request.path
        if (
            path[:1] != b"/"
            or path.startswith(ACME_CHALLENGE)
            or request.parsed.header(b"host") is None
            or host_problem(request) is not None
            or self.front._secure(request)
        ):
            return None
        return self.front._redirect


def fast_factory(site) -> FastHTTPFactory:
    return FastHTTPFactory(site)
