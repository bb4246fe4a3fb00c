"""The query listener: the ClickHouse HTTP interface, read-only, over the configured store.
(It runs no admin command: those are on the admin socket, ``web/admin.py``.)

chDB lets only one process open a data directory, so the running gateway is the read path:
``python -m sfpltracker query``, clickhouse-connect, Grafana and curl send their SELECTs here.
The query comes in the ``query`` parameter and/or the body, as with ClickHouse; ``FORMAT`` /
``default_format`` pick the output format; ``database`` the default database.

What runs is decided by ClickHouse's own parser, not by reading the SQL text:
``store.user_query`` parses the query with chDB (``parseQueryToJSON``) on a store thread,
checks the parse against an allow-list (``store/query_guard.py``: one read statement, tables of
the tracker's database and a few system tables only, no table function, no function reaching
files, the network or the process, no ``INTO OUTFILE``, no ``SETTINGS``; the ``database``
parameter names the tracker's database) and runs ClickHouse's formatting of the checked parse
on a ``readonly = 1`` connection. A refused query is answered 403 with the reason
(``Code: 164 ... (READONLY)``), a syntax error 400 with ClickHouse's message. A query runs
with ``QueryTimeoutSeconds`` (``max_execution_time``) and ``QueryMaxResultBytes``
(``max_result_bytes``) as its limits: past them ClickHouse stops it and the answer is 400 with
its reason (``TIMEOUT_EXCEEDED``, ``TOO_MANY_ROWS_OR_BYTES``), never a held reader thread.

The listener has the limits of the public ones (``EdgeSite`` and ``EdgeFront``): a request
must arrive within ``ReadTimeoutSeconds`` (else 408 and the connection is closed), its headers
within ``MaxHeaderBytes``, an idle connection is closed after ``IdleTimeoutSeconds``, a
connection beyond ``MaxConnections`` (all listeners together) gets 503; and a body larger than
``QUERY_MAX_BODY_BYTES`` is answered 413 without being kept.
"""

from __future__ import annotations

import base64
import hmac
import json
import uuid
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from sfpltracker.dashboard.api import DashboardResource
from sfpltracker.edge.front import EdgeFront, EdgeSite
from sfpltracker.store.errors import StoreError
from sfpltracker.store.query_guard import QueryRefused, check_format
from sfpltracker.web.common import body_too_large, header
from sfpltracker.web.site import LimitedRequest

if TYPE_CHECKING:
    from sfpltracker.gateway import Gateway

log = Logger()

# ClickHouse itself parses at most max_query_size (256 KiB by default) of a query, so no real
# query needs more; fixed rather than MaxBodyBytes, which is tuned for tracking calls.
QUERY_MAX_BODY_BYTES = 1048576

CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
    "CSVWithNames": "text/csv; charset=UTF-8",
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
}

ADMIN_ELSEWHERE = "admin commands are served on DataDirectory/admin/admin.sock only"

# ClickHouse error codes answered as client errors rather than 500 (the query is the input).
NOT_FOUND_CODES = {60, 81, 390}  # unknown table, database, table function


class QueryResource(Resource):
    isLeaf = True

    def __init__(self, gateway: Gateway):
        super().__init__()
        self.gateway = gateway
        self.store = gateway.store
        self.user = gateway.cfg.QueryUser
        self.password = gateway.cfg.QueryPassword
        # A client query cannot hold a reader thread or the process's memory indefinitely;
        # ClickHouse stops it (TIMEOUT_EXCEEDED, TOO_MANY_ROWS_OR_BYTES: answered 400).
        self.limits = {
            "max_execution_time": _seconds(gateway.cfg.QueryTimeoutSeconds),
            "timeout_overflow_mode": "throw",
            "max_result_bytes": gateway.cfg.QueryMaxResultBytes,
            "result_overflow_mode": "throw",
        }

    def render_GET(self, request):
        return self._handle(request, b"")

    def render_POST(self, request):
        if request.path.startswith(b"/admin/"):
            # Admin commands are served on the admin socket only (web/admin.py): nothing
            # sent over TCP, and nothing a query could read, runs one.
            return _json(request, 404, {"error": ADMIN_ELSEWHERE})
        if body_too_large(request):
            reason = f"request body larger than {QUERY_MAX_BODY_BYTES} bytes"
            return _exception(request, 413, 0, reason, "BODY_TOO_LARGE")
        request.content.seek(0)
        return self._handle(request, request.content.read())

    def _authorized(self, request, args: dict) -> bool:
        if not self.user and not self.password:
            return True
        user = args.get("user", [""])[0] or header(request, "x-clickhouse-user")
        password = args.get("password", [""])[0] or header(request, "x-clickhouse-key")
        auth = header(request, "authorization")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
        return hmac.compare_digest(user.encode(), self.user.encode()) and hmac.compare_digest(
            password.encode(), self.password.encode()
        )

    def _handle(self, request, body: bytes):
        # Parsed as text: parse_qs over bytes re-encodes each unquoted value as ASCII and
        # raised on ``%C2%80`` (found by tests/test_fuzz.py).
        query = request.uri.partition(b"?")[2].decode("latin-1")
        args = parse_qs(query, keep_blank_values=True, encoding="utf-8", errors="replace")
        query_id = args.get("query_id", [""])[0] or str(uuid.uuid4())
        request.setHeader(b"x-clickhouse-query-id", query_id.encode())
        request.setHeader(b"x-clickhouse-timezone", b"UTC")
        request.setHeader(b"x-clickhouse-server-display-name", b"sfpltracker")
        if not self._authorized(request, args):
            return _exception(request, 401, 516, "Authentication failed", "AUTHENTICATION_FAILED")
        sql = args.get("query", [""])[0]
        text = body.decode("utf-8", "replace")
        sql = f"{sql}\n{text}" if sql and text else (sql or text)
        if not sql.strip():
            request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
            return b"Ok.\n"
        try:
            fmt = check_format(args.get("default_format", ["TabSeparated"])[0])
        except QueryRefused as e:
            return _exception(request, 400, 73, str(e), "UNKNOWN_FORMAT")
        # Parsed, checked and run on a store thread (query_guard): never on the reactor.
        d = self.store.user_query(
            sql, fmt, database=args.get("database", [""])[0] or None, limits=self.limits
        )

        def done(result: tuple[str, bytes]):
            fmt, data = result
            request.setHeader(b"x-clickhouse-format", fmt.encode())
            request.setHeader(
                b"content-type",
                CONTENT_TYPES.get(fmt, "text/tab-separated-values; charset=UTF-8").encode(),
            )
            _finish(request, data)

        def failed(failure):
            err = failure.value
            if isinstance(err, QueryRefused):
                body = _exception(request, 403, 164, str(err), "READONLY")
            elif isinstance(err, StoreError) and err.code:
                status = 404 if err.code in NOT_FOUND_CODES else 400
                body = _exception(request, status, err.code, str(err), None, raw=True)
            else:
                log.failure("query failed", failure)
                body = _exception(request, 503, 0, "the store is not available", None)
            _finish(request, body)

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


def _seconds(value: float) -> int | float:
    """30, not 30.0: older servers read the setting as a whole number of seconds."""
    return int(value) if float(value).is_integer() else value


def _exception(request, status, code, message, name, raw=False) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
    request.setHeader(b"x-clickhouse-exception-code", str(code).encode())
    if raw:
        return (message.rstrip() + "\n").encode()
    return f"Code: {code}. DB::Exception: {message}. ({name or 'UNKNOWN'})\n".encode()


def _json(request, status: int, payload) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload).encode() + b"\n"


def _finish(request, data: bytes) -> None:
    if request._disconnected or request.finished:
        return
    request.write(data)
    request.finish()


class QueryRoot(Resource):
    """``/dashboard`` (sfpltracker/dashboard/) or else the query interface."""

    isLeaf = True

    def __init__(self, query: QueryResource, gateway: Gateway):
        super().__init__()
        self.query = query
        self.dashboard = DashboardResource(gateway)

    def render(self, request):
        path = request.path
        if path == b"/dashboard" or path.startswith(b"/dashboard/"):
            return self.dashboard.render(request)
        return self.query.render(request)


class QuerySite(EdgeSite):
    """The edge's connection limits around ``QueryResource``, with the query body cap.

    ``EdgeFront`` without ACME, HTTPS redirect or daily limit only adds the connection cap.
    """

    def __init__(self, gateway: Gateway):
        front = EdgeFront(gateway, QueryRoot(QueryResource(gateway), gateway))
        super().__init__(gateway, front, reactor=gateway.reactor)

        class QueryRequest(LimitedRequest):
            max_body = QUERY_MAX_BODY_BYTES

        self.requestFactory = QueryRequest

    def log(self, request):
        pass  # queries may hold personal data; never log them


def query_site(gateway: Gateway) -> server.Site:
    return QuerySite(gateway)
