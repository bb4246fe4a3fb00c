"""The HTTP front: one root resource that routes every request, and the Site around it.

Order (API.md section 7): ops routes, the tracking API (``/tr/v{N}/<route>``), then the
fallbacks in the order they were added (short links, proxy routes, static site), then 404.
A new API route is one ``root.api[b"name"] = resource``; a new host-level feature is a
fallback with ``maybe_render(request)`` that returns None to pass the request on.
"""

from __future__ import annotations

import re

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource

from ..links.service import ShortLinkService
from .common import error
from .links import RpiResource, ShortLinkFallback
from .ops import (
    ClearResource,
    HealthResource,
    MetricsResource,
    PingResource,
    StatusResource,
)
from .privacy import PrivacyResource
from .pub import PubResource
from .rdr import RedirectResource
from .track import LtvResource, TrackResource
from .ws import WebSocketIngestResource

log = Logger()


class GatewayRoot(Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway
        self.prefix = gateway.cfg.prefix.encode()
        self.ops: dict[bytes, Resource] = {
            b"/health": HealthResource(gateway),
            b"/ping": PingResource(gateway),
            b"/status": StatusResource(gateway),
            b"/metrics": MetricsResource(gateway),
            b"/clear": ClearResource(gateway),
        }
        self.links = ShortLinkService(gateway)
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
            b"ws": WebSocketIngestResource(gateway),
        }
        self.fallbacks: list = [ShortLinkFallback(gateway, self.links, self)]

    def render(self, request):
        try:
            return self._route(request)
        except UnsupportedMethod as e:
            if request.method == b"HEAD" and b"GET" in e.allowedMethods:
                raise  # Twisted answers HEAD with the GET answer's headers
            # Twisted would answer 501 "Huh?" in HTML (found by tests/test_fuzz.py): a method
            # the route does not serve is the client's mistake, 405 with Allow (RFC 9110).
            request.setHeader(b"allow", b", ".join(sorted(e.allowedMethods)))
            return error(request, 405, "method not allowed")

    def _route(self, request):
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


class LimitedRequest(server.Request):
    """A request that stops buffering its body past ``max_body`` bytes.

    The resource sees ``body_too_large`` and answers 400; the oversized body is never held in
    memory or on disk.
    """

    max_body = 1048576
    body_too_large = False
    _received = 0

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


class CountingChannel(http.HTTPChannel):
    """Keeps ``gateway.open_connections`` true for ``/status`` and the connection limit."""

    gateway = None

    def connectionMade(self):
        super().connectionMade()
        self.site.gateway.open_connections += 1

    def connectionLost(self, reason):
        self.site.gateway.open_connections -= 1
        super().connectionLost(reason)


_SECRET_PATH = re.compile(rb"(/rpi/redirects?/[^/]+/)[^/?]+")


class GatewaySite(server.Site):
    """A Site with the gateway's request limits and a privacy-safe access log.

    The access log never holds an IP, a query string or credentials from a path: it is
    written only with ``Debug`` on, through ``twisted.logger``.
    """

    channelClass = CountingChannel  # subclasses (web/front.py) add per-connection limits

    def __init__(self, gateway, root: Resource, **kwargs):
        cfg = gateway.cfg
        super().__init__(root, timeout=cfg.IdleTimeoutSeconds, **kwargs)
        self.gateway = gateway
        self.requestFactory = type(
            "GatewayRequest", (LimitedRequest,), {"max_body": cfg.MaxBodyBytes}
        )

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
        path = _SECRET_PATH.sub(rb"\1***", request.path)
        log.debug(
            "{method} {path} {code} {size}",
            method=request.method.decode("latin-1"),
            path=path.decode("latin-1"),
            code=request.code,
            size=request.sentLength,
        )
