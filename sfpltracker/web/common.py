"""Helpers every route shares: reading a request, answering JSON, CORS, errors."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from twisted.web.server import NOT_DONE_YET

from sfpltracker.ingest.request import RequestInfo, host_only
from sfpltracker.privacy.ip import canonical_ip


def header(request, name: str, default: str = "") -> str:
    # asked by bytes: Twisted decodes a str-named header as UTF-8 and raises on any other byte
    value = request.getHeader(name.encode("latin-1"))
    return value.decode("latin-1") if isinstance(value, bytes) else (value or default)


class RequestHeaders(Mapping[str, str]):
    """``RequestInfo.headers`` of a Twisted request, read on demand instead of copied.

    Lower-cased names, each header's first value, as text: what a dict of every header held,
    but ingestion reads two or three of the dozen headers a browser sends (``sec-gpc``,
    ``referer``, ...), so decoding them all on every event was wasted work.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw):
        self._raw = raw  # twisted.web.http_headers.Headers

    def get(self, name: str, default=None):
        try:
            values = self._raw.getRawHeaders(name.encode("latin-1"))
        except UnicodeEncodeError:  # no header has such a name
            return default
        return values[0].decode("latin-1") if values else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        for name, values in self._raw.getAllRawHeaders():
            if values:
                yield name.decode("latin-1").lower()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:  # ``if req.headers``: without counting them all
        return any(values for _, values in self._raw.getAllRawHeaders())

    def __repr__(self) -> str:
        return f"RequestHeaders({dict(self)!r})"


class RequestCookies(Mapping[str, str]):
    """``RequestInfo.cookies`` of a Twisted request, decoded (latin-1) on lookup.

    A site's visitors send every cookie of its domain (analytics, consent, sessions: often a
    dozen or more); ingestion reads ``vid``, ``sid`` and ``CookieConsent``.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[bytes, bytes]):
        self._raw = raw  # Request.received_cookies

    def get(self, name: str, default=None):
        try:
            value = self._raw.get(name.encode("latin-1"))
        except UnicodeEncodeError:  # no cookie has such a name
            return default
        return value.decode("latin-1") if value is not None else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name in self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"RequestCookies({dict(self)!r})"


def request_info(request, gateway, *, now_ms: int | None = None) -> RequestInfo:
    """The ``RequestInfo`` of a Twisted request (peer, trusted forwarded headers, cookies).

    The fast layer's ``FastRequest`` hands over plain dicts of its headers and cookies
    (``header_dict``/``cookie_dict``: the same names and values the views give, read with
    a dict lookup); a ``twisted.web`` request is read through the views."""
    header_dict = getattr(request, "header_dict", None)
    if header_dict is not None:
        headers: Mapping[str, str] = header_dict()
        cookies: Mapping[str, str] = request.cookie_dict()
    else:
        headers = RequestHeaders(request.requestHeaders)
        cookies = RequestCookies(request.received_cookies)
    peer = getattr(request.getClientAddress(), "host", "") or ""
    trusted = gateway.trusted_proxies
    # Without trusted proxies the client is the peer (what ``client_ip`` finds, in one call).
    ip = trusted.client_ip(peer, headers) if trusted.networks else canonical_ip(peer) or peer
    host = headers.get("host", "")
    https = request.isSecure()
    if trusted.networks and peer in trusted:
        host = headers.get("x-forwarded-host", host).split(",")[0]
        https = https or headers.get("x-forwarded-proto", "").lower() == "https"
    # Positional, in the fields' order: making a class instance with keyword arguments costs
    # a dict and a second parse of it (~4,500 instructions for these ten, on every request).
    return RequestInfo(
        ip,
        host_only(host),
        headers.get("user-agent", ""),  # user_agent
        request.uri.decode("latin-1"),  # uri
        https,
        cookies,
        headers,
        gateway.now_ms() if now_ms is None else now_ms,
        request.method.decode("latin-1"),
        request.clientproto.decode("latin-1"),  # version
    )


def read_body(request) -> bytes:
    request.content.seek(0)
    return request.content.read()


def body_too_large(request) -> bool:
    return bool(getattr(request, "body_too_large", False))


def write_json(request, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def error(request, status: int, reason: str, retry_after: int | None = None) -> bytes:
    if retry_after is not None:
        request.setHeader(b"retry-after", str(retry_after).encode())
    return write_json(request, status, {"error": reason})


def method_not_allowed(request, allowed: str, reason: str = "method not allowed here") -> bytes:
    """405 with the ``Allow`` header RFC 9110 (15.5.6) requires: the methods that work here
    (``allowed``, e.g. ``"GET, HEAD, OPTIONS"``), so a client can correct itself."""
    request.setHeader(b"allow", allowed.encode("latin-1"))
    return error(request, 405, reason)


def finish(request, body: bytes) -> None:
    """Finish a deferred response unless the client has gone away meanwhile."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.write(body)
    request.finish()


def apply_cors(request, allow_origin: str) -> None:
    """``Access-Control-Allow-Origin`` from ``AllowOrigin``.

    Cookies only travel on credentialed requests, and browsers refuse ``*`` with credentials, so
    a request that names its Origin gets that origin echoed (when allowed) with credentials.
    ``AllowOrigin`` may be ``*`` or a comma-separated list of origins.
    """
    origin = request.getHeader(b"origin")  # (as ``header()`` reads it, inlined: every call)
    if isinstance(origin, bytes):
        origin = origin.decode("latin-1")
    allowed = _allowed_origins(allow_origin)
    if origin and ("*" in allowed or origin in allowed):
        request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
        request.setHeader(b"access-control-allow-credentials", b"true")
        request.setHeader(b"vary", b"Origin")
    elif "*" in allowed:
        request.setHeader(b"access-control-allow-origin", b"*")
    elif allowed:
        request.setHeader(b"access-control-allow-origin", allowed[0].encode("latin-1"))


@functools.lru_cache(maxsize=16)
def _allowed_origins(allow_origin: str) -> tuple[str, ...]:
    """``AllowOrigin`` split once, not on every request (one value per config, so tiny)."""
    return tuple(o.strip() for o in allow_origin.split(",") if o.strip())


def preflight(request, allow_origin: str) -> bytes:
    apply_cors(request, allow_origin)
    request.setHeader(b"access-control-allow-methods", b"GET, POST, PUT, DELETE, OPTIONS")
    request.setHeader(b"access-control-allow-headers", b"Content-Type, Authorization, Accept, User")
    request.setHeader(b"access-control-max-age", b"86400")
    request.setResponseCode(200)
    return b""


__all__ = ["NOT_DONE_YET"]
