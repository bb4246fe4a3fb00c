"""``/tr/v1/ppi/{agree,jds,geoip}``: consent records, jurisdictions, GeoIP lookups.

- ``POST /ppi/agree``: one JSON object (``cflags`` plus the context of the decision) -> an
  ``agreed`` row (``agreements`` follows by materialized view). 200 ``{"ok": true, "vid": ...}``
  once durably accepted. The response stores the decision in the ``CookieConsent`` cookie, sets
  the ``vid`` cookie when analytics was granted and expires ``vid``/``sid`` when it was refused
  (withdrawal) - except under GPC/DNT, where no cookie is set at all.
- ``GET /ppi/agree?vid=``: that visitor's decisions, newest first, as a JSON array.
- ``GET /ppi/jds``: the jurisdictions table as a JSON array.
- ``GET /ppi/geoip?ip=``: the GeoIP record of ``ip`` (or of the caller) in the original's
  shape (``ips``, ``ipe``, ``iso2``, ``country`` = the country's name, ``region``, ``city``,
  ``lat``, ``lon``, ``zip``, ``tz``); ``&format=object``: API.md's record (``ip``, ``country`` =
  ISO code, ...). 400 bad IP or format, 404 unknown, 503 when no GeoIP database is configured.
  Never stored nor logged: the lookup runs on the address and answers the caller only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.web.resource import Resource

from sfpltracker.ingest.consent import PRIVATE_COLUMNS
from sfpltracker.ingest.ids import parse_uuid
from sfpltracker.ingest.parse import BadInput, RefusedItem, json_events
from sfpltracker.pipeline.intake import Refused
from sfpltracker.privacy.ip import canonical_ip
from sfpltracker.store.interface import database_of
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
from sfpltracker.web.ops import answer_format, bad_format

if TYPE_CHECKING:
    from sfpltracker.gateway import Gateway

log = Logger()

MAX_AGREEMENTS = 1000


def _database(gateway: Gateway) -> str:
    return database_of(gateway.store)


class PrivacyResource(Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway
        self.cfg = gateway.cfg

    def _action(self, request) -> str:
        parts = request.path.decode("latin-1").split("/")
        # /tr/v1/ppi/<action>[/...]
        return parts[4].lower() if len(parts) > 4 else ""

    def render_OPTIONS(self, request):
        return preflight(request, self.cfg.AllowOrigin)

    def render_GET(self, request):
        apply_cors(request, self.cfg.AllowOrigin)
        action = self._action(request)
        if action == "agree":
            return self._agreements(request)
        if action == "jds":
            return self._jurisdictions(request)
        if action == "geoip":
            return self._geoip(request)
        return error(request, 404, f"unknown privacy action {action!r}")

    def render_POST(self, request):
        apply_cors(request, self.cfg.AllowOrigin)
        action = self._action(request)
        if action == "agree":
            return self._agree(request)
        if action in ("jds", "geoip"):
            return method_not_allowed(request, "GET, HEAD, OPTIONS", f"use GET for /ppi/{action}")
        return error(request, 404, f"unknown privacy action {action!r}")

    render_PUT = render_POST

    # -- consent ----------------------------------------------------------------------------

    def _agree(self, request):
        gw = self.gateway
        if body_too_large(request):
            return error(request, 400, "request body larger than MaxBodyBytes")
        try:
            items = json_events(read_body(request), 1)
        except BadInput as e:
            return error(request, 400, str(e))
        if len(items) != 1 or not isinstance(items[0], dict):
            problem = items[0] if len(items) == 1 and isinstance(items[0], RefusedItem) else None
            return error(request, 400, problem or "expected one JSON object")
        req = request_info(request, gw)
        try:
            consent = gw.events.consent(items[0], req)
        except BadInput as e:
            return error(request, 400, str(e))

        def answer() -> bytes:
            gw.count("agreements_accepted")
            if consent.cookies_allowed:
                self._consent_cookies(request, consent.record[1], consent.granted, req.https)
            return write_json(request, 200, {"ok": True, "vid": consent.vid})

        d = gw.intake.accept([consent.record])

        def refused(failure):
            if failure.check(Refused):
                why = failure.value
                finish(request, error(request, 503, why.reason, retry_after=why.retry_after))
            else:
                log.failure("consent record not accepted", failure)
                finish(request, error(request, 503, "consent cannot be recorded now", 5))

        d.addCallbacks(lambda _: finish(request, answer()), refused)
        return NOT_DONE_YET

    def _consent_cookies(self, request, row: dict, granted: bool, https: bool) -> None:
        cfg = self.cfg
        common = {"path": b"/", "secure": https or None, "sameSite": "lax"}
        lifetime = str(cfg.VisitorCookieDays * 86400)
        request.addCookie(b"CookieConsent", str(row["cflags"]).encode(), max_age=lifetime, **common)
        if granted:
            request.addCookie(b"vid", row["vid"].encode(), max_age=lifetime, **common)
        else:  # withdrawal: the analytics cookies go
            request.addCookie(b"vid", b"", max_age="0", **common)
            request.addCookie(b"sid", b"", max_age="0", **common)

    def _agreements(self, request):
        args = request.args or {}
        raw = (args.get(b"vid") or [b""])[0].decode("latin-1")
        if not raw:
            return error(request, 400, "vid is required (?vid=...)")
        vid = parse_uuid(raw)
        if vid is None:
            return error(request, 400, "vid must be a UUID")
        db = _database(self.gateway)
        # the private columns are dropped here, not with `* EXCEPT`, which clickhouse-server
        # 18.16 cannot parse
        sql = (
            f"SELECT * FROM {db}.agreed FINAL "
            f"WHERE vid = {{vid:UUID}} ORDER BY created_at DESC, id DESC LIMIT {MAX_AGREEMENTS}"
        )
        return self._json_rows(request, sql, {"vid": vid}, drop=PRIVATE_COLUMNS)

    def _jurisdictions(self, request):
        db = _database(self.gateway)
        sql = (
            "SELECT regulation, compliance, seq, name, rules, locs, countries, regions, "
            f"retention_days, updated_at FROM {db}.jurisdictions FINAL "
            "ORDER BY regulation, compliance, seq"
        )
        return self._json_rows(request, sql, None)

    def _json_rows(self, request, sql: str, params, drop=()):
        d = self.gateway.store.query(sql, "JSONEachRow", params=params)

        def done(data: bytes):
            rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            rows = [{k: v for k, v in row.items() if k not in drop} for row in rows]
            finish(request, write_json(request, 200, rows))

        def failed(failure):
            log.failure("privacy read failed", failure)
            finish(request, error(request, 503, "the store is not available", 5))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    # -- GeoIP ------------------------------------------------------------------------------

    def _geoip(self, request):
        geoip = self.gateway.geoip
        if geoip is None:
            return error(request, 503, "no GeoIP database is configured (GeoIPDatabase)")
        shape = answer_format(request)
        if shape is None:
            return bad_format(request)
        args = request.args or {}
        asked = (args.get(b"ip") or [b""])[0].decode("latin-1").strip()
        if asked:
            ip = canonical_ip(asked)
            if ip is None:
                return error(request, 400, "ip is not an IP address")
        else:
            ip = request_info(request, self.gateway).ip
        record = geoip.lookup(ip)
        if record is None:
            return error(request, 404, "no GeoIP record for this address")
        request.setHeader(b"cache-control", b"no-store")
        if shape == "object":
            return write_json(request, 200, record.as_dict())
        return write_json(request, 200, original_geoip(record))


def original_geoip(record) -> dict:
    """The original's GeoIP JSON (its ``GeoIP`` struct), from our record."""
    return {
        "ips": record.ips,
        "ipe": record.ipe,
        "iso2": record.country,
        "country": record.country_name,
        "region": record.region,
        "city": record.city,
        "lat": record.lat,
        "lon": record.lon,
        "zip": record.zip,
        "tz": record.tz,
    }
