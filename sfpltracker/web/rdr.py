"""``/tr/v1/rdr/`` (server event) and ``/tr/v1/xrdr/`` (client event, sets the visitor cookies):
record the click, then 302 to ``url``.

Only destinations allowed by ``RedirectPolicy`` are followed (hosts in ``Domains`` or matching
``RedirectAllowHosts``, or a path on this host); anything else is a 400, so the tracker cannot be
used as an open redirect. Without ``url`` the visitor goes to ``DefaultRedirect``.

A redirect is answered once the intake took the click; when the intake refuses it (store or
spool unavailable) the visitor is still redirected and the loss is counted: stranding a visitor
on an error page to protect a statistic would be the worse outcome.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from twisted.logger import Logger
from twisted.web.resource import Resource

from sfpltracker.ingest.messaging import count_events
from sfpltracker.ingest.parse import path_pairs, query_pairs
from sfpltracker.links.model import LinkInvalid, ascii_url
from sfpltracker.web.common import NOT_DONE_YET, apply_cors, error, finish, preflight, request_info
from sfpltracker.web.track import _rest_of_path, set_visitor_cookies

log = Logger()


def answer_after_intake(request, gateway, records: list, answer, on_refused=None):
    """Hand ``records`` to the intake, then answer with ``answer()`` whatever the outcome.

    Returns the body when the intake decided at once (the in-memory intake does), else
    ``NOT_DONE_YET`` and finishes the request later.
    """
    if not records:
        return answer()
    decided: list[bytes] = []
    waiting = False

    def done(outcome):
        if outcome is not None:  # a Failure: the click is lost, the visitor still goes on
            if on_refused is not None:
                on_refused()
            log.info("redirect not tracked: {why}", why=outcome.getErrorMessage())
        else:
            gateway.count("events_accepted", count_events(records))
        body = answer()
        if waiting:
            finish(request, body)
        else:
            decided.append(body)

    d = gateway.intake.accept(records)
    d.addCallbacks(lambda _: done(None), done)
    if decided:
        return decided[0]
    waiting = True
    return NOT_DONE_YET


class RedirectResource(Resource):
    isLeaf = True

    def __init__(self, gateway, links, *, server: bool):
        super().__init__()
        self.gateway = gateway
        self.cfg = gateway.cfg
        self.links = links
        self.server_side = server  # not ``server``: Resource.server, overwritten by putChild()

    def render_OPTIONS(self, request):
        return preflight(request, self.cfg.AllowOrigin)

    def _target(self, request) -> tuple[str, str | None]:
        query = request.uri.decode("latin-1").partition("?")[2]
        url = next((v for k, v in parse_qsl(query, keep_blank_values=True) if k == "url"), "")
        url = url.strip()
        if not url:
            return self.cfg.DefaultRedirect, None
        refusal = self.links.policy.refusal(url)
        if refusal is None:
            try:
                url = ascii_url(url)
            except LinkInvalid:
                refusal = "url has an invalid host name"
        return url, refusal

    def render_HEAD(self, request):
        # Link checkers and prefetchers: show where it goes, but do not count a click.
        target, refusal = self._target(request)
        if refusal:
            return error(request, 400, refusal)
        return self._redirect(request, target)

    def render_GET(self, request):
        apply_cors(request, self.cfg.AllowOrigin)
        target, refusal = self._target(request)
        if refusal:
            return error(request, 400, refusal)
        gw = self.gateway
        req = request_info(request, gw)
        raw = path_pairs(_rest_of_path(request, 3))
        raw.update(query_pairs(request.uri.decode("latin-1").partition("?")[2],
                               self.cfg.IgnoreQueryParamsKey))  # fmt: skip
        referrer = req.headers.get("referer")
        if referrer and "last" not in raw:
            raw["last"] = referrer
        # Beyond the input bounds the click is refused: the visitor still goes on, untracked.
        got = gw.events.records([raw], req, server=self.server_side)

        def answer() -> bytes:
            if not self.server_side and got.visitor.cookies_allowed:
                set_visitor_cookies(request, got.visitor, req.https, self.cfg)
            return self._redirect(request, target)

        return answer_after_intake(
            request, gw, got.records, answer, lambda: self.links.count("untracked")
        )

    render_POST = render_GET

    def _redirect(self, request, target: str) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", target.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        return b""
