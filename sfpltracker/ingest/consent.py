"""Consent records: a ``POST /tr/v1/ppi/agree`` body -> one ``agreed`` row.

The row keeps the original tracker's columns (reference c.18) with its bugs fixed: values are
typed per column (a wrong type drops that field, never the record), ``ip``/``iphash`` follow
``IPMode``, ``browser`` is the parsed browser (not the raw user agent), and ``id`` is minted here
as the dedup key. ``agreements`` (latest per visitor) is derived from ``agreed`` by ClickHouse.
"""

from __future__ import annotations

from typing import Any

from sfpltracker.ingest.fields import json_column_text, to_float, to_int, to_json_object, to_str
from sfpltracker.ingest.ids import parse_uuid, short_hash, uuid7
from sfpltracker.ingest.parse import BadInput
from sfpltracker.ingest.request import RequestInfo
from sfpltracker.privacy.identity import consent_flags

UUIDS = ("sid", "uid", "avid", "owner", "oid", "ref")
STRINGS = """app rel url gaid idfa msid fbid region culture term rcode aff device os tz zip org
    browser""".split()
LOWER = ("source", "medium", "campaign")
JSONS = ("compliances", "loc")

# Columns of ``agreed`` that ``GET /ppi/agree`` leaves out: network identifiers are for the
# operator's own audit (through the query listener), not for anyone who knows a vid.
PRIVATE_COLUMNS = ("ip", "iphash", "bhash")


def agreed_row(body: dict[str, Any], req: RequestInfo, vid: str, ip_policy, enrichers=()) -> dict:
    """The ``agreed`` row for a consent ``body`` (keys lower-cased) of visitor ``vid``."""
    flags = to_int(body.get("cflags"))
    if flags is None:
        flags = consent_flags(req.cookies.get("CookieConsent"))
    if flags is None:
        raise BadInput("cflags (the consent flags, an integer) is required")
    row: dict[str, Any] = {
        "id": uuid7(req.now_ms),
        "vid": vid,
        "created_at": req.now_ms,
        "updated_at": req.now_ms,
        "cflags": flags,
        "hhash": short_hash(req.host),
    }
    for key in UUIDS:
        value = parse_uuid(body.get(key))
        if value:
            row[key] = value
    for key in STRINGS:
        value = to_str(body.get(key))
        if value is not None:
            row[key] = value
    for key in LOWER:
        value = to_str(body.get(key))
        if value is not None:
            row[key] = value.strip().lower()
    country = to_str(body.get("country"))
    if country:
        row["country"] = country.strip().upper()
    for key in JSONS:
        obj = to_json_object(body.get(key))
        text = json_column_text(obj) if obj is not None else None
        if text is not None:
            row[key] = text
    for key in ("lat", "lon"):
        value = to_float(body.get(key))
        if value is not None:
            row[key] = value
    for key, column in (("w", "vp_w"), ("h", "vp_h"), ("vp_w", "vp_w"), ("vp_h", "vp_h")):
        value = to_int(body.get(key))
        if value is not None:
            row[column] = value
    if "sid" not in row:
        sid = parse_uuid(req.cookies.get("sid"))
        if sid:
            row["sid"] = sid
    if "url" not in row:
        referer = req.headers.get("referer", "")
        if referer:
            row["url"] = referer
    ua = req.user_agent.strip().lower()
    row["bhash"] = short_hash(ua) if ua else ""
    row["ip"], row["iphash"] = ip_policy.stored(req.ip)
    # GeoIP and user agent, as for events (client values win); the bot flag has no column here.
    probe = dict(row)
    for enrich in enrichers:
        enrich(probe, req)
    for key in ("country", "region", "zip", "lat", "lon", "browser", "os", "device"):
        if probe.get(key) and not row.get(key):
            row[key] = probe[key]
    return row
