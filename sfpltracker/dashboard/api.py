"""``/dashboard/``: the page, its files and its JSON API, on the query listener.

Routes (docs/dashboard.md):

- ``GET /dashboard/`` the page; ``GET /dashboard/<file>`` its scripts and styles and the
  vendored charting library (read from ``StaticDirectory``: ``dashboard/`` and ``vendor/``);
- ``POST /dashboard/api/login`` (JSON ``{"uid", "secret"}`` or ``{"token"}``),
  ``POST /dashboard/api/logout`` (CSRF token required), ``GET /dashboard/api/session``;
- ``GET /dashboard/api/<figure>?from=&to=&host=&source=&medium=&campaign=&country=&device=``
  for the figures of ``FIGURES``: a session is required (else 401), answers are JSON, bad
  filters 400 with the reason, an unavailable store 503.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sfpltracker.dashboard import queries as q
from sfpltracker.dashboard.auth import COOKIE, LoginRefused, Sessions, csrf_ok, login
from sfpltracker.links.accounts import Credentials
from sfpltracker.store.errors import StoreError
from sfpltracker.store.interface import database_of
from sfpltracker.web.common import (
    error,
    finish,
    header,
    method_not_allowed,
    request_info,
    write_json,
)

if TYPE_CHECKING:
    from sfpltracker.gateway import Gateway

log = Logger()

PREFIX = b"/dashboard"

# The files the page may load: URL name -> path under StaticDirectory (nothing else is served).
ASSETS = {
    "": ("dashboard/index.html", "text/html; charset=utf-8"),
    "app.js": ("dashboard/app.js", "text/javascript; charset=utf-8"),
    "app.css": ("dashboard/app.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
}

# Scripts and styles from this origin only; uPlot sizes its elements with style attributes.
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    b"base-uri 'none'"
)

FUNNEL_WINDOW_SECONDS = 7 * 86400
GET = (b"GET", b"HEAD")
POST = (b"POST",)


class DashboardResource(Resource):
    isLeaf = True

    def __init__(self, gateway: Gateway):
        super().__init__()
        self.gateway = gateway
        self.store = gateway.store
        self.db = database_of(gateway.store)
        self.links = gateway.links
        self.sessions = Sessions(gateway.reactor)
        self.static = gateway.cfg.path(gateway.cfg.StaticDirectory)
        self.figures = {
            "overview": self.overview,
            "engagement": self.engagement,
            "pages": self.pages,
            "entry-exit": self.entry_exit,
            "referrers": self.referrers,
            "campaigns": self.campaigns,
            "countries": self.countries,
            "devices": self.devices,
            "goals": self.goals,
            "links": self.short_links,
            "revenue": self.revenue,
            "consent": self.consent,
        }

    # -- routing ---------------------------------------------------------------------------

    def render(self, request):
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-store")
        path = request.path[len(PREFIX) :]
        if path == b"":
            request.setResponseCode(301)
            request.setHeader(b"location", b"/dashboard/")
            return b""
        if path.startswith(b"/api/"):
            return self._api(request, path[5:].decode("latin-1"))
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, "GET, HEAD", "use GET")
        return self._asset(request, path[1:].decode("latin-1"))

    def _asset(self, request, name: str):
        known = ASSETS.get(name)
        if known is None:
            return error(request, 404, "no such dashboard file")
        relative, ctype = known
        try:
            data = (self.static / PurePosixPath(relative)).read_bytes()
        except OSError:
            return error(request, 404, f"{relative} is not in StaticDirectory")
        request.setHeader(b"content-type", ctype.encode())
        request.setHeader(b"content-security-policy", CSP)
        return data

    def _api(self, request, name: str):
        # The method is checked first (405 with Allow, RFC 9110), the session after it.
        allowed = POST if name in ("login", "logout") else GET
        if name not in ("login", "logout", "session") and name not in self.figures:
            return error(request, 404, "no such dashboard API")
        if request.method not in allowed:
            return method_not_allowed(request, ", ".join(m.decode() for m in allowed))
        if name == "login":
            return self._login(request)
        session = self.sessions.get(_cookie(request))
        if name == "session":
            # 200 either way: the page asks on load, and a 401 would be a console error there
            if session is None:
                return write_json(request, 200, {"signed_in": False})
            return write_json(request, 200, {"signed_in": True, "uid": session.uid,
                                             "org": session.org, "csrf": session.csrf})  # fmt: skip
        if session is None:
            return error(request, 401, "sign in first")
        if name == "logout":
            # Every state-changing request carries the session's CSRF token.
            if not csrf_ok(session, header(request, "x-csrf-token")):
                return error(request, 403, "missing or wrong CSRF token")
            self.sessions.end(_cookie(request) or "")
            request.addCookie(COOKIE, b"", **self._cookie_flags(request), max_age=b"0")
            return write_json(request, 200, {"signed_out": True})
        figure = self.figures[name]
        args = _args(request)
        try:
            filters = q.parse_filters(args, self._today())
            d = figure(filters, args)
        except q.BadFilter as e:
            return error(request, 400, str(e))
        return self._answer(request, d, filters)

    def _answer(self, request, d: defer.Deferred, filters: q.Filters):
        def done(payload: dict[str, Any]):
            finish(request, write_json(request, 200, {"filters": filters.applied(), **payload}))

        def failed(failure):
            if failure.check(StoreError) and failure.value.code:
                log.error("dashboard query failed: {why}", why=failure.getErrorMessage())
                finish(request, error(request, 400, "the store refused this query"))
                return
            log.failure("dashboard query failed", failure)
            finish(request, error(request, 503, "the store is not available", 5))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    # -- sign-in ---------------------------------------------------------------------------

    def _login(self, request):
        ctype = header(request, "content-type").split(";")[0].strip().lower()
        if ctype != "application/json":
            # A cross-site form cannot send JSON without a preflight: no login CSRF.
            return error(request, 415, "send the credentials as application/json")
        origin = header(request, "origin")
        if origin and origin.split("://", 1)[-1] != self._public_origin(request)[0]:
            return error(request, 403, "cross-origin sign-in refused")
        try:
            request.content.seek(0)
            body = json.loads(request.content.read() or b"{}")
            if not isinstance(body, dict):
                raise ValueError
            if body.get("token"):
                creds = Credentials.from_token(str(body["token"]))
            else:
                creds = Credentials(str(body.get("uid", "")), str(body.get("secret", "")))
        except ValueError:
            return error(request, 400, "expected a JSON object with uid and secret")
        ip = request_info(request, self.gateway).ip
        d = login(self.links, ip, creds, self.gateway.now_ms())

        def done(account):
            token, session = self.sessions.create(account.uid, account.org)
            request.addCookie(COOKIE, token.encode(), **self._cookie_flags(request))
            finish(
                request,
                write_json(
                    request, 200, {"uid": account.uid, "org": account.org, "csrf": session.csrf}
                ),
            )

        def failed(failure):
            if failure.check(LoginRefused):
                e = failure.value
                finish(request, error(request, e.status, e.reason, e.retry_after))
                return
            log.error("dashboard login failed: {why}", why=failure.getErrorMessage())
            finish(request, error(request, 503, "the account store is not available", 5))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    def _public_origin(self, request) -> tuple[str, bool]:
        """The host (with its port) and whether HTTPS, as the browser sees them: this
        listener's, or what a proxy in ``TrustedProxies`` forwarded (the dashboard served on
        a public host through a ``Sites`` proxy route to this listener: docs/dashboard.md)."""
        host, https = header(request, "host"), request.isSecure()
        peer = getattr(request.getClientAddress(), "host", "") or ""
        if peer in self.gateway.trusted_proxies:
            host = header(request, "x-forwarded-host").split(",")[0].strip() or host
            https = https or header(request, "x-forwarded-proto").lower() == "https"
        return host, https

    def _cookie_flags(self, request) -> dict[str, Any]:
        return {
            "path": b"/dashboard",
            "httpOnly": True,
            "secure": self._public_origin(request)[1],
            "sameSite": "strict",
        }

    def _today(self):
        return datetime.fromtimestamp(self.gateway.reactor.seconds(), UTC).date()

    # -- figures -----------------------------------------------------------------------------

    def _rows(self, query: q.Query) -> defer.Deferred:
        d = self.store.query(query.sql, "JSONEachRow", query.params)
        d.addCallback(json_rows)
        return d

    @defer.inlineCallbacks
    def overview(self, f: q.Filters, args):
        periods, series, now = yield defer.gatherResults(
            [
                self._rows(q.overview(self.db, f)),
                self._rows(q.timeseries(self.db, f)),
                self._rows(q.realtime(self.db, f)),
            ],
            consumeErrors=True,
        )
        by_period = {row["period"]: row for row in periods}
        points = {row["t"]: row for row in series}
        return {
            "current": _totals(by_period.get("current")),
            "previous": _totals(by_period.get("previous")),
            "bucket": q.bucket(f),
            "series": [
                {
                    "t": t,
                    "visitors": points.get(t, {}).get("visitors", 0),
                    "pageviews": points.get(t, {}).get("pageviews", 0),
                }  # fmt: skip
                for t in q.buckets(f)
            ],
            "realtime": {"visitors": now[0]["visitors"] if now else 0, "minutes": 5},
        }

    @defer.inlineCallbacks
    def engagement(self, f: q.Filters, args):
        """Bounce rate and visit duration, this period and the one before (with a segment
        filter: each in parts of days, added up)."""
        if f.segmented:
            # the parts queue for the store's reader threads (two run at a time)
            periods = {"current": q.day_parts(f), "previous": q.day_parts(f.previous())}
            asked = [(name, self._rows(q.engagement(self.db, part)))
                     for name, parts in periods.items() for part in parts]  # fmt: skip
            got = yield defer.gatherResults([d for _, d in asked], consumeErrors=True)
            by_period = {name: {"sessions": 0, "bounces": 0, "duration_total": 0}
                         for name in periods}  # fmt: skip
            for (name, _), rows in zip(asked, got, strict=True):
                for row in rows:
                    for k in by_period[name]:
                        by_period[name][k] += int(row[k])
        else:
            rows = yield self._rows(q.engagement(self.db, f))
            by_period = {row["period"]: row for row in rows}
        return {
            "current": _engagement(by_period.get("current")),
            "previous": _engagement(by_period.get("previous")),
        }

    @defer.inlineCallbacks
    def pages(self, f, args):
        return {"pages": (yield self._rows(q.top_pages(self.db, f)))}

    @defer.inlineCallbacks
    def entry_exit(self, f, args):
        if not f.segmented:
            rows = yield self._rows(q.entry_exit(self.db, f))
            return {
                kind: [{"url": r["url"], "sessions": r["sessions"]}
                       for r in rows if r["kind"] == kind]
                for kind in ("entry", "exit")
            }  # fmt: skip
        # In parts of days (as engagement), each url's sessions added up, then the top ones
        # (a part holds every url of its days: ~12 K rows per 7 days of country=DE of 10 M
        # events; only the top ones are ordered).
        # Rows as [kind, url, sessions] (JSONCompactEachRow): no column names to render and
        # parse on every row (~30% less of this figure's Python time).
        counts: dict[str, Counter] = {"entry": Counter(), "exit": Counter()}
        got = yield defer.gatherResults(
            [
                self.store.query(query.sql, "JSONCompactEachRow", query.params)
                for query in (q.entry_exit(self.db, p, part=True) for p in q.day_parts(f))
            ],
            consumeErrors=True,
        )
        for data in got:
            for kind, url, sessions in json_rows(data):
                counts[kind][url] += int(sessions)
        return {
            kind: [
                {"url": url, "sessions": n}
                for url, n in heapq.nsmallest(f.limit, c.items(), key=lambda kv: (-kv[1], kv[0]))
            ]
            for kind, c in counts.items()
        }

    @defer.inlineCallbacks
    def referrers(self, f, args):
        return {"referrers": (yield self._rows(q.referrers(self.db, f)))}

    @defer.inlineCallbacks
    def campaigns(self, f, args):
        return {"campaigns": (yield self._rows(q.campaigns(self.db, f)))}

    @defer.inlineCallbacks
    def countries(self, f, args):
        return {"countries": (yield self._rows(q.countries(self.db, f)))}

    @defer.inlineCallbacks
    def devices(self, f, args):
        rows = yield self._rows(q.devices(self.db, f))
        return {
            kind: [
                {k: r[k] for k in ("name", "visitors", "events")} for r in rows if r["kind"] == kind
            ]
            for kind in ("device", "browser", "os")
        }

    def goals(self, f, args):
        steps = q.parse_steps(args.get("steps", ""))
        window = args.get("window", str(FUNNEL_WINDOW_SECONDS))
        if not window.isdigit() or not 1 <= int(window) <= 90 * 86400:
            raise q.BadFilter("'window' must be 1 to 7776000 seconds")
        return self._goals(f, steps, int(window))

    @defer.inlineCallbacks
    def _goals(self, f, steps, window):
        wanted = [self._rows(q.goals(self.db, f)), self._rows(q.outcomes(self.db, f))]
        parts = q.funnel_parts(f) if steps else 0
        wanted += [
            self._rows(q.funnel(self.db, f, steps, window, part, parts)) for part in range(parts)
        ]
        got = yield defer.gatherResults(wanted, consumeErrors=True)
        answer = {"enames": got[0], "outcomes": got[1], "funnel": []}
        if steps:
            levels: dict[int, int] = {}
            for rows in got[2:]:  # the parts' visitors are disjoint: their counts add up
                for r in rows:
                    levels[int(r["level"])] = levels.get(int(r["level"]), 0) + int(r["visitors"])
            answer["funnel"] = [
                {"step": s, "visitors": sum(n for lvl, n in levels.items() if lvl > i)}
                for i, s in enumerate(steps)
            ]
            answer["window_seconds"] = window
        return answer

    @defer.inlineCallbacks
    def short_links(self, f, args):
        top, series = yield defer.gatherResults(
            [self._rows(q.links(self.db, f)), self._rows(q.link_clicks(self.db, f))],
            consumeErrors=True,
        )
        per_day = {r["t"]: r["clicks"] for r in series}
        # per day even for a range of 1-2 days: the clicks are counted per day
        return {
            "links": top,
            "clicks": [{"t": d, "clicks": per_day.get(d, 0)} for d in q.days(f)],
        }

    @defer.inlineCallbacks
    def revenue(self, f, args):
        series, totals, customers = yield defer.gatherResults(
            [
                self._rows(q.revenue_series(self.db, f)),
                self._rows(q.revenue_totals(self.db, f)),
                self._rows(q.top_customers(self.db, f)),
            ],
            consumeErrors=True,
        )
        per_day = {r["t"]: r for r in series}
        cumulative = per_day.get("before", {}).get("revenue", 0.0)
        points = []
        for d in q.days(f):  # per day even for 1-2 days: payments are summed per day
            row = per_day.get(d, {})
            cumulative += row.get("revenue", 0.0)
            points.append(
                {
                    "t": d,
                    "revenue": row.get("revenue", 0.0),
                    "payments": row.get("payments", 0),
                    "lifetime_revenue": round(cumulative, 6),
                }  # fmt: skip
            )
        total = totals[0] if totals else {"revenue": 0.0, "payments": 0, "customers": 0}
        return {"totals": total, "series": points, "top_customers": customers}

    @defer.inlineCallbacks
    def consent(self, f, args):
        rows = yield self._rows(q.consent(self.db, f))
        for r in rows:
            r["cflags"] = int(r["cflags"])  # Int64: JSON output quotes it
        return {"decisions": rows}


def _totals(row: dict | None) -> dict[str, Any]:
    row = row or {}
    return {k: row.get(k, 0) for k in ("visitors", "sessions", "pageviews", "events")}


def json_rows(data: bytes) -> list:
    """The rows of a JSONEachRow (or JSONCompactEachRow) answer, read as one JSON array: one
    parser call instead of one a row (entry/exit's parts with a segment filter are ~12 K rows
    each over 7 days of 10 M events: ~70 -> ~15 ms each). A row is one line (JSON escapes a
    newline in a string), so the line breaks between rows are the array's commas."""
    text = data.decode().strip()
    return json.loads(f"[{text.replace(chr(10), ',')}]") if text else []


def _engagement(row: dict | None) -> dict[str, Any]:
    row = row or {}
    sessions = row.get("sessions", 0)
    total = int(row.get("duration_total", 0))  # UInt64: JSON output quotes it
    return {
        "sessions": sessions,
        # percent of sessions with a single event; mean seconds from first to last event
        "bounce_rate": round(100 * row.get("bounces", 0) / sessions, 1) if sessions else 0.0,
        "visit_duration": round(total / sessions) if sessions else 0,
    }


def _cookie(request) -> str | None:
    value = request.getCookie(COOKIE)
    return value.decode("latin-1") if value else None


def _args(request) -> dict[str, str]:
    query = request.uri.partition(b"?")[2].decode("latin-1")
    parsed = parse_qs(query, keep_blank_values=True, encoding="utf-8", errors="replace")
    return {k: v[-1] for k, v in parsed.items()}
