"""The event model: one input dict plus its request -> one ``events`` row.

Rules (API.md section 4): values are kept as sent except ``ename``, ``etyp``, ``source``,
``medium``, ``campaign`` (lower) and ``country`` (upper); unknown keys land in ``params`` the same
way from every input form; ``eid`` is the client's when it is a valid UUID, else a new UUIDv7;
the stored ``vid`` is the one the ``vid`` cookie gets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..privacy.identity import CookielessIds, CookiePolicy
from ..privacy.ip import IPPolicy
from .fields import EVENT_FIELDS, NOT_PARAMS, coerce, param_value, to_int, to_json_object
from .ids import parse_uuid, short_hash, uuid4, uuid7
from .request import RequestInfo

# Paths of the tracking API itself are never taken as the page ``url`` of an event.
_INTERNAL = re.compile(r"/(tr|img|pub|str|rdr|xrdr|ltv|ppi|rpi)/v?\d*|/tr/v\d+/")

Enricher = Callable[[dict, RequestInfo], None]


@dataclass
class Visitor:
    """Who a request is from, decided once per request (a batch shares one visitor)."""

    vid: str
    sid: str
    cookies_allowed: bool
    from_cookie: bool


@dataclass
class EventModel:
    ip_policy: IPPolicy
    cookie_policy: CookiePolicy
    cookieless: CookielessIds
    hash_key: bytes  # keys the hash of e-mail addresses
    drop_bots: bool = False
    enrichers: tuple[Enricher, ...] = ()

    def visitor(self, req: RequestInfo, first: dict | None = None) -> Visitor:
        first = first or {}
        if not self.cookie_policy.cookies_allowed(req.headers, req.cookies):
            vid = parse_uuid(first.get("vid")) or self.cookieless.visitor_id(
                req.day, req.host, req.ip, req.user_agent
            )
            sid = parse_uuid(first.get("sid")) or self.cookieless.session_id(req.day, vid)
            return Visitor(vid, sid, cookies_allowed=False, from_cookie=False)
        cookie_vid = parse_uuid(req.cookies.get("vid"))
        vid = cookie_vid or parse_uuid(first.get("vid")) or uuid4()
        sid = parse_uuid(req.cookies.get("sid")) or parse_uuid(first.get("sid")) or uuid4()
        return Visitor(vid, sid, cookies_allowed=True, from_cookie=cookie_vid is not None)

    def event_row(
        self,
        raw: dict[str, Any],
        req: RequestInfo,
        visitor: Visitor,
        *,
        server: bool,
        with_user_agent: bool = True,
    ) -> dict[str, Any] | None:
        """The ``events`` row for ``raw`` (keys lower-cased), or None when it is dropped (bot)."""
        row: dict[str, Any] = {}
        params: dict[str, Any] = {}
        explicit_params = to_json_object(raw.get("params"))
        if explicit_params:
            params.update(explicit_params)
        for key, value in raw.items():
            spec = EVENT_FIELDS.get(key)
            if spec is not None:
                typed = coerce(spec[1], value)
                if typed is not None:
                    row[spec[0]] = typed
            elif key not in NOT_PARAMS:
                params[key] = value

        if "ename" not in row and isinstance(raw.get("content"), str) and raw["content"]:
            row["ename"] = raw["content"].strip().lower()
            row.pop("content", None)

        row["eid"] = parse_uuid(raw.get("eid")) or uuid7(req.now_ms)
        if visitor.from_cookie:
            row["vid"] = visitor.vid
        else:
            row["vid"] = parse_uuid(raw.get("vid")) or visitor.vid
        row["sid"] = parse_uuid(raw.get("sid")) or visitor.sid
        cookie_flags = to_int(req.cookies.get("CookieConsent", ""))
        if "cflags" not in row and cookie_flags is not None:
            row["cflags"] = cookie_flags

        email = raw.get("email")
        if "ehash" not in row and isinstance(email, str) and email.strip():
            row["ehash"] = self.hash_private(email)
        if "url" not in row and req.uri and not _INTERNAL.search(req.uri.split("?", 1)[0]):
            row["url"] = req.uri

        row["created_at"] = req.now_ms
        row["hhash"] = short_hash(req.host)
        row["ip"] = self.ip_policy.stored_ip(req.ip)
        row["iphash"] = self.ip_policy.stored_iphash(req.ip)
        ua = req.user_agent.strip().lower() if with_user_agent else ""
        row["bhash"] = short_hash(ua) if ua else ""
        row["params"] = json.dumps(
            {str(k): param_value(v) for k, v in params.items()}, separators=(",", ":")
        )
        row["server"] = 1 if server else 0
        row.setdefault("bot", 0)
        for enrich in self.enrichers:
            enrich(row, req)
        if self.drop_bots and row.get("bot"):
            return None
        return row

    def hash_private(self, text: str) -> str:
        """Keyed hash of an e-mail address (never stored in the clear)."""
        digest = hmac.new(self.hash_key, text.strip().lower().encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:20]).decode().rstrip("=")
