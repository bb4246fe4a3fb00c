"""Recording what the edge serves (HTML pages, proxied requests) as server events.

The same path ``/tr/v1/pub/`` downloads take: the records from the event model
(``EventModel.records()``), handed to the intake; the response never waits for them or fails
because of them.
"""

from __future__ import annotations

from twisted.logger import Logger

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
        got = gateway.events.records([raw], req, server=True)
        if got.problems:  # beyond the input bounds: served, not tracked
            log.info("{ename} not tracked: {why}", ename=raw.get("ename"), why=got.problems[0])
        if not got.records:  # refused, or a bot with DropBots
            return
        d = gateway.intake.accept(got.records)
        d.addCallback(lambda _: gateway.count("events_accepted", got.accepted))
        d.addErrback(
            lambda f: log.info(
                "{ename} not tracked: {why}", ename=raw.get("ename"), why=f.getErrorMessage()
            )
        )

    return track
