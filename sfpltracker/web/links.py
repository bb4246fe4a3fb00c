"""Short links over HTTP: the admin API (``/tr/v1/rpi/...``) and serving ``/<slug>`` hits.

Admin API (JSON; CORS as every API route):

* ``POST /tr/v1/rpi/redirect/{uid}/{secret}`` or ``POST /tr/v1/rpi/redirect`` with
  ``Authorization: Bearer {uid}.{secret}`` / Basic ``uid:secret``: create or update a link.
  Optional fields left out of an update keep their values.
* ``GET /tr/v1/rpi/redirects/{uid}/{secret}/{host}`` or ``GET /tr/v1/rpi/redirects/{host}`` with
  the header: the caller's organisation's links on ``host``, with their click counts.
* ``DELETE`` either ``redirect`` form with ``?urlfrom=``: remove a link (kept in the history).

401 for missing or wrong credentials, 403 for another organisation's link, 400 with the reason
for bad input, 503 when the store cannot be reached; 429 with ``Retry-After`` after
``LoginFailureLimit`` failed logins from one client IP or on one uid (``links/throttle.py``),
answered before the password is checked. Credentials never reach a log: the access
log masks the secret path segment and nothing here logs a request.

Serving (``ShortLinkFallback``, the first fallback of the site): host + path found in the link
cache -> the link's status and ``Location``, a click event through the intake; anything else is
passed on to the next fallback (proxy, static site) or ends as the site's 404.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource

from sfpltracker.ingest import bounds
from sfpltracker.ingest.ids import uuid4
from sfpltracker.ingest.parse import query_pairs
from sfpltracker.ingest.request import host_only
from sfpltracker.links.accounts import AuthFailed, Credentials
from sfpltracker.links.model import (
    PERMANENT,
    Link,
    LinkInvalid,
    link_key,
    normalize_path,
    parse_from,
    parse_link_input,
    possible_key,
    public_view,
    resolve_tracked,
)
from sfpltracker.links.throttle import Throttled
from sfpltracker.store.errors import StoreError
from sfpltracker.web.common import (
    NOT_DONE_YET,
    apply_cors,
    body_too_large,
    error,
    finish,
    header,
    method_not_allowed,
    preflight,
    read_body,
    request_info,
    write_json,
)
from sfpltracker.web.rdr import answer_after_intake
from sfpltracker.web.track import set_visitor_cookies

log = Logger()

PERMANENT_MAX_AGE = 86400  # a permanent redirect is cached by browsers at most a day

# ClickHouse errors about a bound parameter's value (the request's data, not the store):
# CANNOT_PARSE_TEXT, CANNOT_PARSE_ESCAPE_SEQUENCE, CANNOT_PARSE_QUOTED_STRING,
# CANNOT_PARSE_INPUT_ASSERTION_FAILED, CANNOT_PARSE_NUMBER, CANNOT_PARSE_UUID, BAD_QUERY_PARAMETER.
BAD_VALUE_CODES = frozenset({6, 25, 26, 27, 72, 376, 457})


class Refusal(Exception):
    """An answer other than 200: ``status`` and the JSON reason."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def header_credentials(request) -> Credentials | None:
    """Credentials from ``Authorization: Bearer {uid}.{secret}`` or Basic ``uid:secret``."""
    auth = header(request, "authorization").strip()
    scheme, _, value = auth.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return Credentials.from_token(value)
    if scheme == "basic":
        try:
            uid, sep, secret = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credentials(uid, secret) if sep else None
    return None


class RpiResource(Resource):
    """``/tr/v1/rpi/redirect[/{uid}/{secret}]`` and ``/tr/v1/rpi/redirects[/{uid}/{secret}]/{host}``."""

    isLeaf = True

    def __init__(self, gateway, links):
        super().__init__()
        self.gateway = gateway
        self.cfg = gateway.cfg
        self.links = links
        self.depth = self.cfg.prefix.count("/") + 1  # segments before the action

    def render(self, request):
        if request.method == b"OPTIONS":
            return preflight(request, self.cfg.AllowOrigin)
        apply_cors(request, self.cfg.AllowOrigin)
        segments = request.path.decode("latin-1").split("/")[self.depth + 1 :]
        while segments and segments[-1] == "":
            segments.pop()
        segments = [unquote(s) for s in segments]
        action, rest = (segments[0], segments[1:]) if segments else ("", [])
        method = request.method
        if action == "redirect" and len(rest) in (0, 2):
            creds = Credentials(*rest) if rest else header_credentials(request)
            if method == b"POST":
                return self._run(request, self._save(request, creds))
            if method == b"DELETE":
                return self._run(request, self._delete(request, creds))
            return method_not_allowed(
                request, "POST, DELETE, OPTIONS", "use POST to save a link, DELETE to remove one"
            )
        if action == "redirects" and len(rest) in (1, 3):
            creds = Credentials(rest[0], rest[1]) if len(rest) == 3 else header_credentials(request)
            if method in (b"GET", b"HEAD"):
                return self._run(request, self._list(request, creds, rest[-1]))
            return method_not_allowed(request, "GET, HEAD, OPTIONS", "use GET to list links")
        return error(request, 404, "unknown rpi route")

    def _run(self, request, d: defer.Deferred):
        def done(payload):
            finish(request, write_json(request, 200, payload))

        def failed(failure):
            if failure.check(Refusal):
                refusal = failure.value
                if refusal.status == 401:
                    self.links.count("auth_failures")
                    request.setHeader(b"www-authenticate", b'Bearer realm="sfpltracker"')
                elif refusal.status == 429:
                    self.links.count("auth_throttled")
                finish(request, error(request, refusal.status, refusal.reason, refusal.retry_after))
                return
            if failure.check(StoreError) and failure.value.code in BAD_VALUE_CODES:
                # The store answered and refused a value of this request: not an outage.
                finish(request, error(request, 400, "Bad request (a value the store cannot read)"))
                return
            log.error("short-link API failed: {why}", why=failure.getErrorMessage())
            finish(request, error(request, 503, "the link store is not available", 5))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    @defer.inlineCallbacks
    def _account(self, request, creds):
        ip = request_info(request, self.gateway).ip
        try:
            account = yield self.links.authenticate(creds, ip, self.gateway.now_ms())
        except Throttled as e:
            raise Refusal(429, e.reason, e.retry_after) from None
        except AuthFailed as e:
            raise Refusal(401, str(e)) from None
        return account

    @defer.inlineCallbacks
    def _save(self, request, creds):
        account = yield self._account(request, creds)
        now = self.gateway.now_ms()
        if body_too_large(request):
            raise Refusal(400, f"request body larger than MaxBodyBytes ({self.cfg.MaxBodyBytes})")
        raw = read_body(request)
        if not raw.strip():
            raise Refusal(400, "Bad request (body)")
        try:
            body = bounds.loads(raw)  # NotJSON is a ValueError
            given = parse_link_input(body, self.cfg.Domains, now, self.cfg.IgnoreQueryParamsKey)
        except (ValueError, RecursionError) as e:
            reason = str(e) if isinstance(e, LinkInvalid) else "Bad request (data)"
            raise Refusal(400, reason) from None
        if given.oid is not None and given.oid != account.oid:
            raise Refusal(403, "oid is not the organisation of these credentials")
        found = yield self.links.repo.get(given.key, include_deleted=True)
        current = found[0] if found is not None and not found[1] else None
        if current is not None and current.oid != account.oid:
            raise Refusal(403, "this short link belongs to another organisation")
        location, fields = resolve_tracked(given.urlto, self.cfg.IgnoreQueryParamsKey)

        def keep(name: str, attribute: str, value):
            """An optional field left out of an update keeps its current value."""
            return value if name in given.given or current is None else getattr(current, attribute)

        link = Link(
            id=current.id if current is not None else uuid4(),
            host=given.host,
            path=given.path,
            urlto=given.urlto,
            location=location,
            status=keep("status", "status", given.status),
            expires_ms=keep("expires", "expires_ms", given.expires_ms),
            forward_query=keep("forward_query", "forward_query", given.forward_query),
            oid=account.oid,
            org=given.org if given.org is not None else (current.org if current else account.org),
            fields=fields,
            created_at=current.created_at if current is not None else now,
            updated_at=now,
        )
        link = (yield self.links.repo.with_org_hosts([link]))[0]
        action = "update" if current is not None else "create"
        yield self.links.repo.write(link, action, given.urlfrom, account.uid, now, given.searchto)
        self.links.cache.apply(link.key, link)
        self.links.count("changes")
        return {
            "ok": True,
            "urlfrom": link.key,
            "created": current is None,
            "link": public_view(link),
        }

    @defer.inlineCallbacks
    def _delete(self, request, creds):
        account = yield self._account(request, creds)
        query = request.uri.decode("latin-1").partition("?")[2]
        urlfrom = next((v for k, v in parse_qsl(query) if k.lower() == "urlfrom"), "")
        if not urlfrom.strip():
            raise Refusal(400, "Bad request (urlfrom)")
        try:
            full, host, path = parse_from(urlfrom)
        except LinkInvalid as e:
            raise Refusal(400, str(e)) from None
        key = link_key(host, path)
        found = yield self.links.repo.get(key, include_deleted=True)
        if found is None or found[1]:
            raise Refusal(404, "no such short link")
        current = found[0]
        if current.oid != account.oid:
            raise Refusal(403, "this short link belongs to another organisation")
        now = self.gateway.now_ms()
        yield self.links.repo.write(current, "delete", full, account.uid, now)
        self.links.cache.apply(key, None)
        self.links.count("changes")
        return {"ok": True, "urlfrom": key, "deleted": True}

    @defer.inlineCallbacks
    def _list(self, request, creds, host: str):
        account = yield self._account(request, creds)
        host = host_only(host)
        if not host or not possible_key(host):
            raise Refusal(400, "Bad request (host)")
        links = yield self.links.repo.list(host, account.oid)
        try:
            clicks = yield self.links.repo.clicks(links)
        except Exception as e:  # noqa: BLE001 - the links matter more than their counts
            log.warn("click counts unavailable: {why}", why=str(e))
            clicks = None
        results = [public_view(link, None if clicks is None else clicks.get(link.id, 0))
                   for link in links]  # fmt: skip
        return {"results": results}


class ShortLinkFallback:
    """Serves ``/<slug>`` on hosts that have links; passes everything else on (returns None)."""

    def __init__(self, gateway, links, root):
        self.gateway = gateway
        self.cfg = gateway.cfg
        self.links = links
        self.cache = links.cache
        self.root = root
        self.trusted = gateway.trusted_proxies

    def _host(self, request) -> str:
        host = request.getHeader(b"host") or b""
        if self.trusted.networks:
            peer = getattr(request.getClientAddress(), "host", "")
            forwarded = request.getHeader(b"x-forwarded-host")
            if forwarded and peer in self.trusted:
                host = forwarded.split(b",")[0]
        return host_only(host.decode("latin-1"))

    def maybe_render(self, request):
        host = self._host(request)
        if not self.cache.may_have(host):
            return None
        found = self.cache.lookup(link_key(host, normalize_path(request.path)))
        if isinstance(found, defer.Deferred):
            found.addCallback(self._decided_later, request)
            return NOT_DONE_YET
        return self._answer(request, found)

    def _decided_later(self, link, request) -> None:
        body = self._answer(request, link)
        if body is None:
            body = self.root.render_fallbacks(request, after=self)
        if body is not NOT_DONE_YET:
            request.setHeader(b"content-length", b"%d" % len(body))
            finish(request, body)

    def _answer(self, request, link: Link | None):
        now = self.gateway.now_ms()
        if link is None or not link.live(now):
            self.links.count("misses")
            return None
        self.links.count("hits")
        location = link.location
        query = request.uri.partition(b"?")[2]
        if link.forward_query and query:
            location = _with_query(location, query.decode("latin-1"))
        request.setResponseCode(link.status)
        request.setHeader(b"location", location.encode("latin-1", "replace"))
        request.setHeader(b"cache-control", _cache_control(link, now))
        if request.method == b"HEAD":  # unfurlers and prefetchers: no click
            return b""
        return self._track(request, link, location, query.decode("latin-1"))

    def _track(self, request, link: Link, location: str, query: str):
        gw = self.gateway
        req = request_info(request, gw)
        raw = query_pairs(query, self.cfg.IgnoreQueryParamsKey) if query else {}
        raw.update(link.fields)
        raw.update(
            ename="short_rdr",
            etyp="redirect",
            url=f"{'https' if req.https else 'http'}://{req.host}{req.uri}",
            relation="redirect",
            rid=link.id,
            to=location,
        )
        referrer = req.headers.get("referer")
        if referrer:
            raw["last"] = referrer
        # Beyond the input bounds the click is refused: the visitor still goes on, untracked.
        got = gw.events.records([raw], req)

        def answer() -> bytes:
            if got.visitor.cookies_allowed:
                set_visitor_cookies(request, got.visitor, req.https, self.cfg)
            return b""

        return answer_after_intake(
            request, gw, got.records, answer, lambda: self.links.count("untracked")
        )


def _with_query(location: str, query: str) -> str:
    """``location`` with the visitor's query string appended (before any fragment)."""
    base, hash_, fragment = location.partition("#")
    joined = f"{base}{'&' if '?' in base else '?'}{query}"
    return f"{joined}{hash_}{fragment}"


def _cache_control(link: Link, now_ms: int) -> bytes:
    """Temporary redirects are never cached (every click is seen, a change applies at once);
    permanent ones may be cached by the browser for a day, never beyond the link's expiry."""
    if link.status not in PERMANENT:
        return b"no-store"
    max_age = PERMANENT_MAX_AGE
    if link.expires_ms:
        max_age = max(0, min(max_age, (link.expires_ms - now_ms) // 1000))
    return b"private, max-age=%d" % max_age
