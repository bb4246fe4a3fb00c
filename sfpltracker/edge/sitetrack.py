"""Recording what the edge serves (HTML pages, proxied requests) as server events.

The same path ``/tr/v1/pub/`` downloads take: build the row with the event model, hand it to
the intake, never make the response wait for it or fail because of it.
"""

from __future__ import annotations

from twisted.logger import Logger

from sfpltracker.ingest.parse import BadInput
from sfpltracker.web.common import request_info

log = Logger()


def make_tracker(gateway):
    """``track(request, fields)``: one server event for ``request`` with ``fields``."""

    def track(request, fields: dict) -> None:
        req = request_info(request, gateway)
        raw = dict(fields)
        scheme = "https" if req.https else "http"
        raw.setdefault("url", f"{scheme}://{req.host}{req.uri}" if req.host else req.uri)
        referer = req.headers.get("referer")
        if referer:
            raw.setdefault("last", referer)
        visitor = gateway.events.visitor(req)
        try:
            row = gateway.events.event_row(raw, req, visitor, server=True)
        except BadInput as e:  # beyond the input bounds: served, not tracked
            log.info("{ename} not tracked: {why}", ename=raw.get("ename"), why=str(e))
            return
        if row is None:  # a bot, with DropBots
            return
        d = gateway.intake.accept([("events", row)])
        d.addCallback(lambda _: gateway.count("events_accepted"))
        d.addErrback(
            lambda f: log.info(
                "{ename} not tracked: {why}", ename=raw.get("ename"), why=f.getErrorMessage()
            )
        )

    return track
