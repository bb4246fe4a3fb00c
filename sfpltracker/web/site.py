"""The HTTP front: one root resource that routes every request, and the Site around it.

Order (API.md section 7): ops routes, the tracking API (``/tr/v{N}/<route>``), then the
fallbacks in the order they were added (short links, proxy routes, static site), then 404.
A new API route is one ``root.api[b"name"] = resource``; a new host-level feature is a
fallback with ``maybe_render(request)`` that returns None to pass the request on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger, globalLogPublisher
from twisted.web import http, server
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource

from sfpltracker.web.common import error
from sfpltracker.web.links import RpiResource, ShortLinkFallback
from sfpltracker.web.openapi import OpenApiResource
from sfpltracker.web.ops import (
    ClearResource,
    HealthResource,
    MetricsResource,
    PingResource,
    StatusResource,
)
from sfpltracker.web.privacy import PrivacyResource
from sfpltracker.web.pub import PubResource
from sfpltracker.web.rdr import RedirectResource
from sfpltracker.web.track import LtvResource, TrackResource
from sfpltracker.web.ws import WebSocketIngestResource

if TYPE_CHECKING:
    from sfpltracker.gateway import Gateway

log = Logger()


class GatewayRoot(Resource):
    isLeaf = True

    def __init__(self, gateway: Gateway):
        super().__init__()
        self.gateway = gateway
        self.prefix = gateway.cfg.prefix.encode()
        self.websocket = WebSocketIngestResource(gateway)
        self.ops: dict[bytes, Resource] = {
            b"/health": HealthResource(gateway),
            b"/ping": PingResource(gateway),
            b"/status": StatusResource(gateway),
            b"/metrics": MetricsResource(gateway),
            b"/clear": ClearResource(gateway),
        }
        self.links = gateway.links
        self.api: dict[bytes, Resource] = {
            b"tr": TrackResource(gateway, "tr"),
            b"str": TrackResource(gateway, "str"),
            b"img": TrackResource(gateway, "img"),
            b"ltv": LtvResource(gateway),
            b"pub": PubResource(gateway),
            b"ppi": PrivacyResource(gateway),
            b"rpi": RpiResource(gateway, self.links),
            b"rdr": RedirectResource(gateway, self.links, server=True),
            b"xrdr": RedirectResource(gateway, self.links, server=False),
            b"ws": self.websocket,
            b"openapi.json": OpenApiResource(gateway),
        }
        self.fallbacks: list = [ShortLinkFallback(gateway, self.links, self)]

    def render(self, request):
        try:
            return self.route(request)
        except UnsupportedMethod as e:
            if request.method == b"HEAD" and b"GET" in e.allowedMethods:
                raise  # Twisted answers HEAD with the GET resource, without the body
            # Twisted would answer a method outside GET/HEAD/POST (DELETE on /pub/, say) with
            # a 501 HTML page: a client's mistake is a 405 with the methods that work.
            request.setHeader(b"allow", b", ".join(e.allowedMethods))
            return error(request, 405, "method not allowed here")

    def route(self, request):
        path = request.path
        resource = self.ops.get(path)
        if resource is not None:
            return resource.render(request)
        if path.startswith(self.prefix + b"/"):
            name = path[len(self.prefix) + 1 :].split(b"/", 1)[0]
            resource = self.api.get(name)
            if resource is not None:
                return resource.render(request)
        return self.render_fallbacks(request)

    def render_fallbacks(self, request, after=None):
        """The fallbacks in order (those after ``after`` when given), then 404.

        A fallback that can only decide after a Deferred (a short link looked up in the store)
        returns NOT_DONE_YET, and on a miss continues here with ``after=itself``.
        """
        fallbacks = self.fallbacks
        if after is not None:
            fallbacks = fallbacks[fallbacks.index(after) + 1 :]
        for fallback in fallbacks:
            result = fallback.maybe_render(request)
            if result is not None:
                return result
        return error(request, 404, "not found")


class _Headless:
    """A resource answering HEAD as GET without the body (RFC 9110 9.3.2).

    Twisted drops a HEAD answer's body itself, but first logs a warning that names the request,
    whose repr holds the URI: credentials in a path, identifiers in a query string. Here the
    body is measured and dropped before Twisted sees it. A body written later (an answer after
    a Deferred) is dropped by ``http.Request.write`` without a word.
    """

    def __init__(self, resource):
        self.resource = resource

    def render(self, request):
        body = self.resource.render(request)
        if isinstance(body, bytes) and body:
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body


class LimitedRequest(server.Request):
    """A request that stops buffering its body past ``max_body`` bytes.

    The resource sees ``body_too_large`` and answers 400; the oversized body is never held in
    memory or on disk. HEAD is answered without Twisted's warning (``_Headless``).
    """

    max_body = 1048576
    body_too_large = False
    _received = 0
    # web/common.py request_info reads the headers through views (the fast layer's
    # FastRequest has plain dicts instead): said here so the lookup never misses.
    header_dict = None

    def render(self, resrc):
        super().render(_Headless(resrc) if self.method == b"HEAD" else resrc)

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


def _without_peer(event: dict) -> None:
    """Twisted's HTTP channel names the client's address (``peer``) when it times a connection
    out; no raw IP is ever logged (API.md section 8)."""
    if "peer" in event:
        event = {**event, "peer": "(address not logged)"}
    globalLogPublisher(event)


class CountingChannel(http.HTTPChannel):
    """Keeps ``gateway.open_connections`` true for ``/status`` and the connection limit."""

    gateway = None
    # A plain callable is an observer (twisted.logger); the stubs want the ILogObserver interface.
    _log = Logger(observer=_without_peer)  # type: ignore[arg-type]

    def connectionMade(self):
        super().connectionMade()
        self.site.gateway.connection_opened()

    def connectionLost(self, reason):
        self.site.gateway.connection_closed()
        super().connectionLost(reason)


# Methods the access log names as they are; any other token a client sends is "OTHER".
_METHODS = frozenset(
    m.encode() for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT")
)
_OPS = frozenset((b"/health", b"/ping", b"/status", b"/metrics", b"/clear"))


def access_route(path: bytes, prefix: bytes, routes) -> str:
    """What the access log says of a path: the route, never a value from the path.

    REST paths carry event fields (``/tr/v1/tr/email/x@example.com``), credentials
    (``/rpi/redirect/UID/SECRET``) and short-link slugs; query strings carry the same. So only
    the ops paths are logged as they are, an API path as its route (``/tr/v1/tr/…``) and any
    other path (short links, static sites, proxies, unknown paths) as ``/…``.
    """
    if path in _OPS:
        return path.decode()
    if path.startswith(prefix + b"/"):
        name, _, rest = path[len(prefix) + 1 :].partition(b"/")
        if name in routes:
            return f"{prefix.decode()}/{name.decode()}/{'…' if rest else ''}"
        return prefix.decode() + "/…"
    return "/" if path == b"/" else "/…"


class GatewaySite(server.Site):
    """A Site with the gateway's request limits and a privacy-safe access log.

    The access log (``access_route``) never holds an IP, a header, a query string or a value
    from a path: it is written only with ``Debug`` on, through ``twisted.logger``.
    """

    channelClass = CountingChannel  # subclasses (edge/front.py) add per-connection limits

    def __init__(self, gateway, root: Resource, **kwargs):
        cfg = gateway.cfg
        super().__init__(root, timeout=cfg.IdleTimeoutSeconds, **kwargs)
        self.gateway = gateway

        class GatewayRequest(LimitedRequest):
            max_body = cfg.MaxBodyBytes

        self.requestFactory = GatewayRequest
        self._prefix = cfg.prefix.encode()

    def buildProtocol(self, addr):
        channel = self.channelClass()
        channel.factory = self
        channel.requestFactory = self.requestFactory
        channel.site = self
        channel.callLater = self.reactor.callLater
        channel.timeOut = self.timeOut
        channel.totalHeadersSize = self.gateway.cfg.MaxHeaderBytes
        return channel

    def log(self, request):
        if not self.gateway.cfg.Debug:
            return
        root = getattr(self.resource, "root", self.resource)  # EdgeFront wraps GatewayRoot
        method = request.method if request.method in _METHODS else b"OTHER"
        log.debug(
            "{method} {route} {code} {size}",
            method=method.decode(),
            route=access_route(request.path, self._prefix, getattr(root, "api", ())),
            code=request.code,
            size=request.sentLength,
        )
