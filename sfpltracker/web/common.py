"""Helpers every route shares: reading a request, answering JSON, CORS, errors."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import NOT_DONE_YET

from ..ingest.request import RequestInfo, host_only


def header(request, name: str, default: str = "") -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else (value or default)


def request_info(request, gateway, *, now_ms: int | None = None) -> RequestInfo:
    """The ``RequestInfo`` of a Twisted request (peer, trusted forwarded headers, cookies)."""
    headers = {
        k.decode("latin-1").lower(): v[0].decode("latin-1")
        for k, v in request.requestHeaders.getAllRawHeaders()
        if v
    }
    peer = getattr(request.getClientAddress(), "host", "") or ""
    trusted = gateway.trusted_proxies
    ip = trusted.client_ip(peer, headers)
    host = headers.get("host", "")
    https = request.isSecure()
    if peer in trusted:
        host = headers.get("x-forwarded-host", host).split(",")[0]
        https = https or headers.get("x-forwarded-proto", "").lower() == "https"
    cookies = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in request.received_cookies.items()
    }
    return RequestInfo(
        ip=ip,
        host=host_only(host),
        user_agent=headers.get("user-agent", ""),
        uri=request.uri.decode("latin-1"),
        https=https,
        cookies=cookies,
        headers=headers,
        now_ms=gateway.now_ms() if now_ms is None else now_ms,
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
    origin = header(request, "origin")
    allowed = [o.strip() for o in allow_origin.split(",") if o.strip()]
    if origin and ("*" in allowed or origin in allowed):
        request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
        request.setHeader(b"access-control-allow-credentials", b"true")
        request.setHeader(b"vary", b"Origin")
    elif "*" in allowed:
        request.setHeader(b"access-control-allow-origin", b"*")
    elif allowed:
        request.setHeader(b"access-control-allow-origin", allowed[0].encode("latin-1"))


def preflight(request, allow_origin: str) -> bytes:
    apply_cors(request, allow_origin)
    request.setHeader(b"access-control-allow-methods", b"GET, POST, PUT, DELETE, OPTIONS")
    request.setHeader(b"access-control-allow-headers", b"Content-Type, Authorization, Accept, User")
    request.setHeader(b"access-control-max-age", b"86400")
    request.setResponseCode(200)
    return b""


__all__ = ["NOT_DONE_YET"]
