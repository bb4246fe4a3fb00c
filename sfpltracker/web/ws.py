"""WebSocket ingestion: ``/tr/v{N}/ws`` on every listener (API.md section 3).

Autobahn's Twisted WebSocket server takes over the connection of a normal ``twisted.web``
request, so the upgrade passes through the same site, listeners and TLS as every other route,
and what ingestion needs to know of the client (IP after ``TrustedProxies``, user agent, host,
cookies) is captured once from that upgrade request (``web.common.request_info``).

Each message is ingested exactly as an HTTP POST to ``/tr/`` is: a client event, same fields,
enrichment and privacy policy (``EventModel.records()``), handed to ``gateway.intake.accept()``. The
upgrade URL's query string is part of every event, as in the original (``?app=shop`` tags the
whole connection); ``ack`` is the only key taken out. The visitor is decided once, at the
upgrade, as for one HTTP request (cookie, else the URL's ``vid``, else new), and its ``vid``/
``sid`` cookies go on the 101 answer when the cookie policy allows them.

* text frame: a JSON object, or an array of objects (``MaxBatchEvents``);
* binary frame: the original's format, a 4-byte little-endian uncompressed size, then a raw
  LZ4 block (``lz4.block.compress(data)``). The declared size is checked against
  ``MaxMessageBytes`` before anything is allocated for it;
* with ``?ack=1`` each message is answered ``{"ok": [eids]}`` once the intake accepted it, or
  ``{"error": reason}``; without it nothing is ever sent (the original's fire-and-forget).

A bad message is refused on its own and never closes the connection; a client that sends more
than ``MAX_BAD_MESSAGES`` of them is closed with 1008 (policy violation). Limits: ``AllowOrigin``
/ ``Domains`` (origin), ``MaxConnections`` (open WebSockets), ``IdleTimeoutSeconds`` (no message),
``MaxMessageBytes`` (wire and decompressed size; a larger wire message is closed with 1009 by
Autobahn, as RFC 6455 says). permessage-deflate is accepted when the client offers it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import lz4.block
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import error as net_error
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.resource import Resource

from sfpltracker.ingest.messaging import count_events
from sfpltracker.ingest.parse import BadInput, json_events, query_pairs
from sfpltracker.ingest.request import host_only
from sfpltracker.pipeline.intake import Refused
from sfpltracker.web.common import (
    NOT_DONE_YET,
    error,
    header,
    method_not_allowed,
    request_info,
)
from sfpltracker.web.ops import note_acknowledged
from sfpltracker.web.track import visitor_cookies

if TYPE_CHECKING:
    from sfpltracker.gateway import Gateway
    from sfpltracker.ingest.request import RequestInfo

log = Logger()

# More bad messages than this on one connection close it with 1008 (policy violation).
MAX_BAD_MESSAGES = 20
# Messages of one connection waiting for the intake; beyond it the socket stops being read.
MAX_IN_FLIGHT = 256

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011

_TRUE = ("1", "true", "yes", "on")


def decode_message(payload: bytes, binary: bool, max_bytes: int, max_events: int) -> list[Any]:
    """The items of one message (objects or anything else, checked later), or ``BadInput``.

    Binary: the size prefix is read and checked first, so a 12-byte frame declaring 2 GB costs
    nothing; ``lz4.block.decompress`` then allocates exactly the declared (checked) size and
    fails unless the block decompresses to exactly that many bytes.
    """
    if binary:
        if len(payload) < 4:
            raise BadInput("binary frame shorter than its 4-byte size prefix")
        declared = int.from_bytes(payload[:4], "little")
        if declared > max_bytes:
            raise BadInput(f"declared size {declared} exceeds MaxMessageBytes ({max_bytes})")
        if declared == 0:
            raise BadInput("empty message")
        try:
            payload = lz4.block.decompress(payload)
        except (lz4.block.LZ4BlockError, ValueError, MemoryError):
            raise BadInput("invalid LZ4 block") from None
    items = json_events(payload, max_events)
    if not items:
        raise BadInput("empty message")
    return items


def origin_allowed(origin: str, host: str, allow_origin: str, domains: list[str]) -> bool:
    """Whether a browser page from ``origin`` may open the socket.

    No Origin header (a server or an app, not a browser page) is allowed, as on HTTP. Otherwise
    the origin must be listed in ``AllowOrigin`` (``*`` allows any, like the CORS header), be the
    gateway's own host, or be one of ``Domains`` or a subdomain of one.
    """
    if not origin:
        return True
    allowed = [o.strip().rstrip("/") for o in allow_origin.split(",") if o.strip()]
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    origin_host = host_only(urlsplit(origin).netloc) if "://" in origin else ""
    if not origin_host:
        return False  # "null" (sandboxed frames, file://) and malformed origins
    if origin_host == host:
        return True
    for domain in domains:
        domain = domain.strip().lower().lstrip(".")
        if domain and (origin_host == domain or origin_host.endswith("." + domain)):
            return True
    return False


@dataclasses.dataclass
class WsStats:
    """Counters for ``/metrics`` (read at scrape time)."""

    opened: int = 0
    refused_upgrades: int = 0
    messages: int = 0
    bad_messages: int = 0
    abuse_closes: int = 0
    idle_closes: int = 0


# Frames one message may come in: track.js sends each message in one frame; a client that
# fragments a MaxMessageBytes message into 1 KiB frames still fits.
MAX_FRAGMENTS = 1024


class IngestProtocol(WebSocketServerProtocol):
    """One client connection. ``upgrade``, ``base``, ``ack``, ``visitor``, ``set_cookies`` and
    ``channel`` are set by ``WebSocketIngestResource`` from the upgrade request before the
    connection is handed over.
    """

    resource: WebSocketIngestResource
    upgrade: RequestInfo | None = None  # of the upgrade request (now_ms is set per socket read)
    base: dict[str, str] = {}  # the upgrade URL's query pairs, part of every event
    ack = False
    channel = None  # the HTTP channel whose transport we took over
    # The connection's visitor, decided at the upgrade: the vid cookie, else the vid in the
    # upgrade URL, else a new one; ``set_cookies`` gives it to the browser on the 101 answer
    # (none when the cookie policy forbids cookies) so the next page load sends it back.
    visitor = None
    set_cookies: tuple[str, ...] = ()

    _idle_call = None
    _bad = 0
    _in_flight = 0
    _paused = False
    _closing = False
    _fragments = 0

    # -- life cycle -------------------------------------------------------------------------

    def onMessageBegin(self, isBinary):  # noqa: N802, N803 - Autobahn's interface
        super().onMessageBegin(isBinary)
        self._fragments = 0

    def onMessageFrameBegin(self, length):  # noqa: N802 - Autobahn's interface
        """Refuse a message split into more than ``MAX_FRAGMENTS`` frames (1009, close).

        Autobahn keeps every frame of a message as its own bytes object until the message
        ends: a message within ``MaxMessageBytes`` sent one byte per frame held ~50 bytes of
        memory per byte sent (~46 MB per connection for a 900 kB message).
        """
        super().onMessageFrameBegin(length)
        self._fragments += 1
        if self._fragments > MAX_FRAGMENTS and not self.failedByMe:
            self._fail_connection(
                self.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG,
                f"message in more than {MAX_FRAGMENTS} frames",
            )

    def onConnect(self, request):
        if self.set_cookies:
            return None, {"Set-Cookie": self.set_cookies}
        return None

    def onOpen(self):
        self.resource.stats.opened += 1
        self.resource.open.add(self)
        self._touch()

    def connectionLost(self, reason):
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self.resource.open.discard(self)
        try:
            super().connectionLost(reason)
        finally:
            # The HTTP channel never sees the close (its transport is ours now): tell it, so it
            # drops the upgrade request and the open-connection count stays true.
            if self.channel is not None:
                self.channel.connectionLost(reason)
                self.channel = None

    def _touch(self) -> None:
        timeout = self.resource.idle_timeout
        if timeout <= 0:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(timeout)
        else:
            self._idle_call = self.factory.reactor.callLater(timeout, self._idle)

    def _idle(self) -> None:
        self._idle_call = None
        self.resource.stats.idle_closes += 1
        self.close(CLOSE_NORMAL, "idle timeout")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code`` (Autobahn's ``sendClose`` refuses the
        protocol-level codes 1001 and 1008 that a server needs here)."""
        if not self._closing:
            self._closing = True
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)

    # -- messages ---------------------------------------------------------------------------
    #
    # The messages that arrive in one read of the socket are accepted together: one
    # ``intake.accept()`` (one spool write, one batcher entry) instead of one per message, which
    # is most of the per-message cost of the pipeline. Each message still gets its own answer.

    _batch: list | None = None  # [(records, eids, problems, events, read_ns)] of the read
    _req: RequestInfo | None = (
        None  # the upgrade's RequestInfo stamped with the time of the current read
    )

    _read_ns = 0  # when the current read was taken up: the events' total_latency_ns starts here

    def dataReceived(self, data: bytes) -> None:
        self._batch, self._req = [], None
        self._read_ns = time.monotonic_ns()
        try:
            super().dataReceived(data)
        except Exception:
            # A message we failed to handle (our bug, whatever the input): the client gets a
            # close frame saying so (RFC 6455 1011) instead of a dropped connection.
            log.failure("WebSocket message failed")
            self.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            batch, self._batch = self._batch, None
            if batch:
                self._submit(batch)

    def onMessage(self, payload: bytes, isBinary: bool):
        if self._closing:
            return
        res = self.resource
        res.stats.messages += 1
        self._touch()
        gw = res.gateway
        try:
            items = decode_message(payload, isBinary, res.max_bytes, res.max_events)
        except BadInput as e:
            self._refuse(str(e))
            return
        if self._req is None:
            assert self.upgrade is not None  # set by WebSocketIngestResource before any message
            self._req = dataclasses.replace(self.upgrade, now_ms=gw.now_ms())
        got = gw.events.records(items, self._req, self.base, visitor=self.visitor)
        gw.count("events_rejected", len(got.problems))
        if got.problems and not got.records:
            self._refuse("; ".join(got.problems[:5]))
            return
        # The ack names the events the gateway took: stored, or dropped as bots (their own eid)
        eids = [eid for eid in got.eids if eid is not None]
        if self._batch is None:  # not from a socket read (a caller feeding messages itself)
            self._read_ns = time.monotonic_ns()
        message = (got.records, eids, got.problems, got.accepted, self._read_ns)
        if self._batch is None:
            self._submit([message])
        else:
            self._batch.append(message)

    def _submit(self, batch: list) -> None:
        gw = self.resource.gateway
        records = [r for message in batch for r in message[0]]
        d = gw.intake.accept(records)
        self._in_flight += len(batch)
        if self._in_flight >= MAX_IN_FLIGHT and not self._paused:
            self._paused = True
            assert self.transport is not None  # connected: a message just arrived on it
            self.transport.pauseProducing()

        def accepted(_):
            gw.count("events_accepted", count_events(records))
            for _records, eids, problems, events, started in batch:
                note_acknowledged(gw, events, started)
                if problems:
                    self._reply({"ok": eids, "error": "; ".join(problems[:5])})
                else:
                    self._reply_ok(eids)

        def refused(failure):
            gw.count("requests_refused")
            if failure.check(Refused):
                reason, retry = failure.value.reason, failure.value.retry_after
            else:
                log.failure("intake failed", failure)
                reason, retry = "events cannot be accepted now", 5
            for _records, eids, *_rest in batch:
                self._reply({"error": reason, "retry_after": retry, "eids": eids})

        def settled(_):
            self._in_flight -= len(batch)
            if self._paused and self._in_flight <= MAX_IN_FLIGHT // 2:
                self._paused = False
                if self.transport is not None and self.state == self.STATE_OPEN:
                    self.transport.resumeProducing()

        d.addCallbacks(accepted, refused).addBoth(settled)

    def _refuse(self, reason: str) -> None:
        self.resource.stats.bad_messages += 1
        self._bad += 1
        self._reply({"error": reason})
        if self._bad > MAX_BAD_MESSAGES:
            self.resource.stats.abuse_closes += 1
            self.close(CLOSE_POLICY, "too many bad messages")

    def _can_reply(self) -> bool:
        return self.ack and self.state == self.STATE_OPEN and not self._closing

    def _reply(self, answer: dict) -> None:
        if self._can_reply():
            self.sendMessage(json.dumps(answer, separators=(",", ":")).encode(), isBinary=False)

    def _reply_ok(self, eids: list[str]) -> None:
        # eids are canonical UUID text (parse_uuid / uuid7): no escaping needed
        if self._can_reply():
            text = '{"ok":[' + ",".join(['"' + eid + '"' for eid in eids]) + "]}"
            self.sendMessage(text.encode(), isBinary=False)


def _accept_deflate(offers):
    """permessage-deflate: accept the client's first offer (browsers offer it by default)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class WebSocketIngestResource(Resource):
    """``/tr/v{N}/ws``: checks the upgrade, then hands the connection to ``IngestProtocol``.

    Refusals happen here, as plain HTTP answers with a JSON reason, before anything is
    upgraded: 403 for a foreign origin, 503 + ``Retry-After`` at ``MaxConnections`` open
    sockets, 426 for a request that is not a WebSocket upgrade.
    """

    isLeaf = True

    def __init__(self, gateway: Gateway):
        super().__init__()
        cfg = gateway.cfg
        self.gateway = gateway
        self.max_bytes = cfg.MaxMessageBytes
        self.max_events = cfg.MaxBatchEvents
        self.idle_timeout = cfg.IdleTimeoutSeconds
        self.max_connections = cfg.MaxConnections
        self.stats = WsStats()
        self.open: set[IngestProtocol] = set()
        self.factory = WebSocketServerFactory(server="sfpltracker", reactor=gateway.reactor)
        owner = self

        class GatewayIngestProtocol(IngestProtocol):
            resource = owner

        self.factory.protocol = GatewayIngestProtocol
        self.factory.setProtocolOptions(
            maxFramePayloadSize=cfg.MaxMessageBytes,
            maxMessagePayloadSize=cfg.MaxMessageBytes,
            perMessageCompressionAccept=_accept_deflate,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            failByDrop=False,
        )
        gateway.reactor.addSystemEventTrigger("before", "shutdown", self.close_all)

    def render(self, request):
        cfg = self.gateway.cfg
        if request.method not in (b"GET", b"HEAD"):
            # RFC 6455 4.1: an opening handshake is a GET; any other method is the wrong one
            return method_not_allowed(request, "GET")
        if b"websocket" not in (request.getHeader(b"upgrade") or b"").lower():
            request.setHeader(b"upgrade", b"websocket")
            return error(request, 426, "this route expects a WebSocket upgrade")
        if request.channel is None or request.channel.transport is None:
            return error(request, 426, "WebSocket needs HTTP/1.1")
        req = request_info(request, self.gateway)
        if not origin_allowed(header(request, "origin"), req.host, cfg.AllowOrigin, cfg.Domains):
            self.stats.refused_upgrades += 1
            return error(request, 403, "origin not allowed")
        if self.factory.countConnections >= self.max_connections:
            self.stats.refused_upgrades += 1
            return error(request, 503, "too many WebSocket connections", retry_after=5)

        query = request.uri.decode("latin-1").partition("?")[2]
        ack = any(k == "ack" and v.lower() in _TRUE for k, v in parse_qsl(query))
        base = query_pairs(query, cfg.IgnoreQueryParamsKey)
        base.pop("ack", None)

        protocol = self.factory.buildProtocol(request.transport.getPeer())
        protocol.upgrade = req
        protocol.base = base
        protocol.ack = ack
        # One visitor per connection, as one per HTTP request: every event of the socket
        # carries its vid (unless an event names its own, as on /tr/), and the browser keeps it.
        protocol.visitor = self.gateway.events.visitor(req, base)
        if protocol.visitor.cookies_allowed:
            protocol.set_cookies = tuple(
                c.decode() for c in visitor_cookies(protocol.visitor, req.https, cfg)
            )
        protocol.channel = request.channel
        self._hand_over(request, protocol)
        return NOT_DONE_YET

    @staticmethod
    def _hand_over(request, protocol) -> None:
        """Give the request's connection to ``protocol`` and replay the upgrade request to it.

        What ``autobahn.twisted.resource.WebSocketResource.render`` does, kept here because the
        protocol needs the upgrade's ``RequestInfo`` before it starts.
        """
        transport, request.channel.transport = request.channel.transport, None
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol  # TLS
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        # twisted.web pauses the transport while a request is served; nothing follows ours.
        if hasattr(transport, "_networkProducer"):
            transport._networkProducer.resumeProducing()
        elif hasattr(transport, "resumeProducing"):
            transport.resumeProducing()
        data = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
        for name, values in request.requestHeaders.getAllRawHeaders():
            data += name + b": " + b",".join(values) + b"\r\n"
        protocol.dataReceived(data + b"\r\n")

    def close_all(self) -> None:
        """Shutdown: tell every client to go elsewhere (1001) instead of dropping the TCP."""
        for protocol in list(self.open):
            try:
                protocol.close(CLOSE_GOING_AWAY, "server shutting down")
            except net_error.ConnectionLost:
                pass

    def metrics(self):
        st = self.stats
        yield GaugeMetricFamily(
            "sfpl_ws_connections_open", "Open WebSocket connections", len(self.open)
        )
        yield CounterMetricFamily("sfpl_ws_connections", "WebSocket connections opened", st.opened)
        yield CounterMetricFamily(
            "sfpl_ws_upgrades_refused",
            "WebSocket upgrades refused (origin, connection limit)",
            st.refused_upgrades,
        )
        yield CounterMetricFamily("sfpl_ws_messages", "WebSocket messages received", st.messages)
        yield CounterMetricFamily(
            "sfpl_ws_bad_messages", "WebSocket messages refused as malformed", st.bad_messages
        )
        yield CounterMetricFamily(
            "sfpl_ws_abuse_closes", "WebSockets closed for too many bad messages", st.abuse_closes
        )
        yield CounterMetricFamily(
            "sfpl_ws_idle_closes", "WebSockets closed after IdleTimeoutSeconds", st.idle_closes
        )
