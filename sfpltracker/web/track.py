"""Event ingestion over HTTP: ``/tr/`` (client), ``/str/`` (server), ``/img/`` (pixel), ``/ltv/``.

Every route answers only once the intake has accepted the events (2xx), refuses with 503 and
``Retry-After`` when it cannot, and answers malformed input with 400 and a JSON reason. In a
batch, one bad item is refused alone; the others are stored. What the input becomes is the
event model's (``EventModel.records()``, ``payment_records()``); this module reads the request
and answers.
"""

from __future__ import annotations

import base64
import functools
import time
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource

from sfpltracker.ingest import payments
from sfpltracker.ingest.parse import (
    BadInput,
    RefusedItem,
    json_events,
    path_pairs,
    query_pairs,
)
from sfpltracker.pipeline.intake import Refused
from sfpltracker.web.common import (
    NOT_DONE_YET,
    apply_cors,
    body_too_large,
    error,
    finish,
    method_not_allowed,
    preflight,
    read_body,
    request_info,
    write_json,
)
from sfpltracker.web.ops import note_acknowledged

log = Logger()

# What a GET /ltv/ must carry one of to be a payment (else a prefetch or a stray link).
PAYMENT_FIELDS = frozenset(
    (
        *payments.COMMON_UUIDS,
        *payments.ITEM_UUIDS,
        *payments.ITEM_STRINGS,
        *payments.ITEM_NUMBERS,
        *payments.ITEM_TIMES,
        *("org", "amt", "duration", "payments"),
    )
)

GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=")


def _rest_of_path(request, depth: int) -> str:
    """The path after ``/tr/v1/<route>/`` (``depth`` segments), still percent-encoded."""
    path = request.path.decode("latin-1")
    parts = path.split("/", depth + 1)
    return parts[depth + 1] if len(parts) > depth + 1 else ""


class IngestResource(Resource):
    """Shared request handling: CORS, body limits, answering after the intake."""

    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway
        self.cfg = gateway.cfg

    def render_OPTIONS(self, request):
        return preflight(request, self.cfg.AllowOrigin)

    def render_HEAD(self, request):
        # Link checkers and prefetchers send HEAD; it must not count as an event.
        apply_cors(request, self.cfg.AllowOrigin)
        return b""

    def render_DELETE(self, request):
        return method_not_allowed(request, "GET, HEAD, POST, PUT, OPTIONS")

    def _body_items(self, request) -> list[Any]:
        if body_too_large(request):
            raise BadInput(f"request body larger than MaxBodyBytes ({self.cfg.MaxBodyBytes})")
        return json_events(read_body(request), self.cfg.MaxBatchEvents)

    def _submit(self, request, records, on_accepted):
        """Hand ``records`` to the intake; answer with ``on_accepted()`` or a 503."""
        d = self.gateway.intake.accept(records)
        if d.called and not d.paused and d.result is None:
            # Acknowledged already (the memory intake, a JetStream ack that came first): the
            # answer is the render's return value, without the Deferred's callback loop nor a
            # write() + finish() of its own (the layer writes it, Content-Length included).
            body = on_accepted()
            request.setHeader(b"content-length", b"%d" % len(body))
            return body

        def accepted(_):
            body = on_accepted()
            # Known in full: a Content-Length (as Twisted sets for a synchronous answer) costs
            # less than the chunked framing it would otherwise use for every tracking call.
            request.setHeader(b"content-length", b"%d" % len(body))
            finish(request, body)

        def refused(failure):
            if failure.check(Refused):
                self.gateway.count("requests_refused")
                reason = failure.value.reason
                finish(request, error(request, 503, reason, retry_after=failure.value.retry_after))
            else:
                log.failure("intake failed", failure)
                finish(request, error(request, 503, "events cannot be accepted now", 5))

        d.addCallbacks(accepted, refused)
        return NOT_DONE_YET


class TrackResource(IngestResource):
    """``/tr/v1/{tr,str,img}/...``: GET query + REST path pairs, POST an object or an array."""

    def __init__(self, gateway, kind: str):
        super().__init__(gateway)
        self.kind = kind
        # not ``server``: Twisted's Resource.server, which putChild() overwrites
        self.server_side = kind == "str"
        self.client = kind in ("tr", "img")

    def render_GET(self, request):
        started = time.monotonic_ns()
        apply_cors(request, self.cfg.AllowOrigin)
        path = request.path
        # Shared between requests with the same path: read only. (A long path is not kept.)
        fields = _path_fields(path) if len(path) <= 512 else _path_fields.__wrapped__(path)
        if b"?" in request.uri:  # (most tracking calls have none)
            query = request.uri.decode("latin-1").partition("?")[2]
            fields = {**fields, **query_pairs(query, self.cfg.IgnoreQueryParamsKey)}
        return self._ingest(request, [{}], fields, started)

    def render_POST(self, request):
        started = time.monotonic_ns()
        apply_cors(request, self.cfg.AllowOrigin)
        try:
            items = self._body_items(request)
        except BadInput as e:
            return error(request, 400, str(e))
        if not items:
            return error(request, 400, "no event in the request body")
        return self._ingest(request, items, path_pairs(_rest_of_path(request, 3)), started)

    render_PUT = render_POST

    def _ingest(self, request, items: list[Any], base: dict[str, str], started: int):
        gw = self.gateway
        req = request_info(request, gw)
        got = gw.events.records(
            items, req, base, server=self.server_side, with_user_agent=not self.server_side
        )
        problems = got.problems
        if problems:
            gw.count("events_rejected", len(problems))
            if not got.records:
                return error(request, 400, "; ".join(problems[:5]))

        def answer() -> bytes:
            accepted = got.accepted
            gw.count("events_accepted", accepted)
            note_acknowledged(gw, accepted, started)
            visitor = got.visitor
            if self.client and visitor.cookies_allowed:
                request.cookies.extend(visitor_cookies(visitor, req.https, self.cfg))
            if problems:
                request.setHeader(b"x-rejected-events", str(len(problems)).encode())
            if self.kind == "img":
                request.setHeader(b"content-type", b"image/gif")
                request.setHeader(b"cache-control", b"no-store, max-age=0")
                return GIF
            if self.kind == "str":
                eids = got.eids
                return write_json(request, 200, eids if len(items) > 1 else eids[0])
            return b""

        return self._submit(request, got.records, answer)


@functools.lru_cache(maxsize=1024)
def _path_fields(path: bytes) -> dict[str, str]:
    """The REST path pairs of a ``/tr/v1/<route>/...`` path. Cached: a site's pages send the
    same few paths over and over. The dict is shared by every request with that path, so it
    is never modified (``EventModel.records`` copies its ``base``)."""
    parts = path.decode("latin-1").split("/", 4)
    return path_pairs(parts[4] if len(parts) > 4 else "")


def _query_and_path(request, cfg) -> dict[str, str]:
    """A GET's fields: the REST path pairs after the route, then the query (which wins)."""
    fields = path_pairs(_rest_of_path(request, 3))
    if b"?" in request.uri:  # (most tracking calls have none)
        query = request.uri.decode("latin-1").partition("?")[2]
        fields.update(query_pairs(query, cfg.IgnoreQueryParamsKey))
    return fields


def set_visitor_cookies(request, visitor, https: bool, cfg) -> None:
    """The ``vid`` and ``sid`` cookies of a client event (short links and ``/xrdr/`` too).

    Written as ``Request.addCookie`` writes them, without its per-call validation: the values
    are UUIDs we made, and this runs on every click and page view.
    """
    request.cookies.extend(visitor_cookies(visitor, https, cfg))


def visitor_cookies(visitor, https: bool, cfg) -> tuple[bytes, bytes]:
    """The ``Set-Cookie`` values of ``vid`` and ``sid`` (also on a WebSocket upgrade)."""
    vid_tail, sid_tail = _cookie_tails(cfg.VisitorCookieDays, cfg.SessionMinutes, https)
    return b"vid=" + visitor.vid.encode() + vid_tail, b"sid=" + visitor.sid.encode() + sid_tail


@functools.lru_cache(maxsize=8)
def _cookie_tails(days: int, minutes: int, https: bool) -> tuple[bytes, bytes]:
    """What follows the ids in the ``vid``/``sid`` cookies: the same for every answer of a
    config, so built once (per scheme) instead of formatted on every tracking call."""
    secure = b"; Secure" if https else b""
    return (
        b"; Path=/; Max-Age=%d%s; SameSite=lax" % (days * 86400, secure),
        b"; Path=/; Max-Age=%d%s; SameSite=lax" % (minutes * 60, secure),
    )


class LtvResource(IngestResource):
    """``/tr/v1/ltv/``: a payment or a ``payments`` batch -> ``payments`` rows.

    POST (or PUT) a JSON object; GET takes one payment from the query string and path pairs
    (``/tr/v1/ltv/uid/<uuid>?revenue=9.5&currency=EUR``), as the original ingested it.
    """

    def render_GET(self, request):
        apply_cors(request, self.cfg.AllowOrigin)
        fields = _query_and_path(request, self.cfg)
        if PAYMENT_FIELDS.isdisjoint(fields):
            return error(request, 400, "no payment field in the query (?revenue=...&uid=...)")
        return self._payments(request, fields)

    def render_POST(self, request):
        apply_cors(request, self.cfg.AllowOrigin)
        try:
            items = self._body_items(request)
            if len(items) != 1 or not isinstance(items[0], dict):
                problem = (
                    items[0] if len(items) == 1 and isinstance(items[0], RefusedItem) else None
                )
                raise BadInput(
                    problem or 'expected one JSON object (use "payments": [...] for a batch)'
                )
        except BadInput as e:
            return error(request, 400, str(e))
        return self._payments(request, items[0])

    render_PUT = render_POST

    def _payments(self, request, body: dict[str, Any]):
        try:
            records = self.gateway.events.payment_records(body, request_info(request, self.gateway))
        except BadInput as e:
            return error(request, 400, str(e))

        ids = [row["id"] for table, row in records if table == "payments"]  # not the capi ones

        def answer() -> bytes:
            self.gateway.count("payments_accepted", len(ids))
            return write_json(request, 200, {"ok": True, "ids": ids})

        return self._submit(request, records, answer)
