"""Payments (``POST /tr/v1/ltv/``) -> ``payments`` rows, one per line item.

``ltv``, ``ltvu`` and ``ltvv`` are summed from ``payments`` by materialized views, so a payment
is counted once however often it is replayed (its ``id`` is minted here and is the dedup key).
"""

from __future__ import annotations

import datetime
from typing import Any

from sfpltracker.ingest.fields import to_float, to_int, to_str
from sfpltracker.ingest.ids import parse_uuid, short_hash, uuid4
from sfpltracker.ingest.messaging import MAX_TIME_MS, MIN_TIME_MS
from sfpltracker.ingest.parse import BadInput
from sfpltracker.ingest.request import RequestInfo

COMMON_UUIDS = ("vid", "uid", "oid", "tid", "invid", "sid", "updater", "owner")
ITEM_UUIDS = ("product_id", "orid")
ITEM_STRINGS = "product pcat man model currency country rcode region campaign_id".split()
ITEM_NUMBERS = """qty price discount revenue margin cost tax tax_rate commission referral fees subtotal
    total payment""".split()
ITEM_TIMES = ("starts", "ends", "invoiced_at", "paid_at")


def parse_time_ms(value: Any) -> int | None:
    """RFC 3339 text or epoch milliseconds -> epoch milliseconds (None outside 1970-2106)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        # NaN, infinity and integers of any length are possible in JSON: keep what a
        # DateTime64 column holds.
        return int(value) if MIN_TIME_MS <= value < MAX_TIME_MS else None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    ms = int(moment.timestamp() * 1000)
    return ms if MIN_TIME_MS <= ms < MAX_TIME_MS else None


def payment_rows(body: dict[str, Any], req: RequestInfo, cookie_vid: str | None) -> list[dict]:
    """Rows for a single payment or a ``payments: [...]`` batch; bad fields are dropped."""
    common: dict[str, Any] = {}
    for key in COMMON_UUIDS:
        value = parse_uuid(body.get(key))
        if value:
            common[key] = value
    if "vid" not in common and cookie_vid:
        common["vid"] = cookie_vid
    org = to_str(body.get("org"))
    if org is not None:
        common["org"] = org
    common["hhash"] = short_hash(req.host)
    common["created_at"] = common["updated_at"] = req.now_ms

    items = body.get("payments")
    if items is None:
        items = [body]
    elif not isinstance(items, list) or not items:
        raise BadInput("payments must be a non-empty array of objects")
    rows = []
    for item in items:
        if not isinstance(item, dict):
            continue  # a non-object line item is skipped, the others stand
        item = {str(k).lower(): v for k, v in item.items()}
        row = dict(common, id=uuid4())
        for key in ITEM_UUIDS:
            value = parse_uuid(item.get(key))
            if value:
                row[key] = value
        for key in ITEM_STRINGS:
            value = to_str(item.get(key))
            if value is not None:
                row[key] = value
        for key in ITEM_NUMBERS:
            value = to_float(item.get(key))
            if value is not None:
                row[key] = value
        if "revenue" not in row:
            amount = to_float(item.get("amt"))
            if amount is not None:
                row["revenue"] = amount
        duration = to_int(item.get("duration"))
        if duration is not None:
            row["duration"] = duration
        for key in ITEM_TIMES:
            value = parse_time_ms(item.get(key))
            if value is not None:
                row[key] = value
        row.setdefault("currency", "USD")
        rows.append(row)
    if not rows:
        raise BadInput("no payment line item is a JSON object")
    return rows
