"""The event model: parsed input plus its request -> the ``(table, row)`` records to store.

``EventModel.records()`` is the one way a tracking request becomes records, whatever carried
it (HTTP ``/tr/`` ``/str/`` ``/img/``, a WebSocket message, a redirect or short-link click, a
``/pub/`` download, a page the edge served): the visitor, one ``events`` row per input item,
and the rows derived from an event (messaging, ``ingest/messaging.py``).
``payment_records()`` and ``consent()`` do the same for ``/ltv/`` and ``/ppi/agree``. The web
layer only parses the transport and answers.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfpltracker.ingest import bounds
from sfpltracker.ingest.consent import agreed_row
from sfpltracker.ingest.fields import (
    EVENT_COERCERS,
    NOT_PARAMS,
    PRIVATE_FIELDS,
    looks_hashed,
    param_value,
    to_int,
    to_json_object,
    tz_country,
    unique_json_paths,
)
from sfpltracker.ingest.ids import parse_uuid, short_hash, uuid4, uuid7
from sfpltracker.ingest.messaging import messaging_records
from sfpltracker.ingest.parse import BadInput, item_problem, lower_keys
from sfpltracker.ingest.payments import payment_rows
from sfpltracker.ingest.request import RequestInfo
from sfpltracker.privacy.identity import CookielessIds, CookiePolicy, analytics_consented
from sfpltracker.privacy.ip import IPPolicy

Enricher = Callable[[dict, RequestInfo], None]
Record = tuple[str, dict[str, Any]]

# The inputs that make a keyed-hash column (``email`` -> ``ehash``, or ``ehash`` itself, ...):
# an event with none of them skips that step.
_PRIVATE_INPUTS = frozenset(PRIVATE_FIELDS) | frozenset(
    key for key, (column, _) in EVENT_COERCERS.items() if column in PRIVATE_FIELDS.values()
)

# ``json.dumps(..., separators=...)`` builds a new encoder on every call; this one is shared
# (same settings: ASCII-only, compact).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclass(slots=True)
class Visitor:
    """Who a request is from, decided once per request (a batch shares one visitor)."""

    vid: str
    sid: str
    cookies_allowed: bool
    from_cookie: bool
    # No cookie may be set (GPC, DNT, no consent): the vid is the day's cookieless id and the
    # client's own vid is not used, so no identifier outlives the day.
    cookieless: bool = False
    day_key: bytes | None = None  # keys the IP hash of a cookieless visitor (IPMode hash)
    # The vid was minted for this request (no cookie, none sent): its first event counts in
    # counters 'vids_created' (events.new_vid), the others of its batch do not.
    minted: bool = False


@dataclass(slots=True)
class Ingested:
    """What the input items of one request (or WebSocket message) became."""

    records: list[Record]  # each stored event's row, followed by the rows derived from it
    # Per input item: the eid of its stored event; for an event dropped as a bot (DropBots),
    # the client's own eid if it sent a valid one (handled, not stored); None when refused.
    eids: list[str | None]
    problems: list[str]  # "event <n>: <reason>" of each refused item
    accepted: int  # events among the records (the rest are derived from them)
    visitor: Visitor


@dataclass
class Consent:
    """A consent decision (``/ppi/agree``) and what its answer needs."""

    record: Record  # ("agreed", row)
    vid: str
    granted: bool  # analytics granted: the vid cookie is set, else vid/sid are expired
    cookies_allowed: bool  # False under GPC/DNT: no cookie at all is set


@dataclass
class EventModel:
    ip_policy: IPPolicy
    cookie_policy: CookiePolicy
    cookieless: CookielessIds
    hash_key: bytes  # keys the hash of e-mail addresses
    drop_bots: bool = False
    enrichers: tuple[Enricher, ...] = ()
    # ``(raw, row, req) -> record | None``: what an output (the Conversions API) needs of an
    # event that its row does not keep, accepted with it (notify/facebook.py); None: no output.
    capture: Callable[[dict, dict, RequestInfo], tuple[str, dict] | None] | None = None
    # ``NormalizeURLs``: ``url``/``last`` stored the original's way (ingest/urls.py); None:
    # kept as sent (API.md section 4)
    normalise_url: Callable[[str], str] | None = None

    def visitor(
        self, req: RequestInfo, first: dict | None = None, *, server: bool = False
    ) -> Visitor:
        """The visitor of a request; ``first`` is its first event (ids the client sent).

        Server events (``/str/``) come from the site's backend: no cookie is read or set, the
        vid is the one the backend sends. Client events follow the cookie policy.
        """
        first = first or {}
        if server:
            vid = parse_uuid(first.get("vid")) or parse_uuid(req.cookies.get("vid")) or uuid4()
            sid = parse_uuid(first.get("sid")) or parse_uuid(req.cookies.get("sid")) or uuid4()
            return Visitor(vid, sid, cookies_allowed=False, from_cookie=False)
        cookies = req.cookies
        if self.cookie_policy.refusal(req.headers, cookies) is not None:
            day = req.day
            vid = self.cookieless.visitor_id(day, req.host, req.ip, req.user_agent)
            sid = parse_uuid(first.get("sid")) or self.cookieless.session_id(day, vid)
            return Visitor(
                vid,
                sid,
                cookies_allowed=False,
                from_cookie=False,
                cookieless=True,
                day_key=self.cookieless.day_key(day),
            )
        # (``x and parse_uuid(x)``: most of these ids are absent, and a call costs more)
        cookie_vid = cookies.get("vid")
        cookie_vid = cookie_vid and parse_uuid(cookie_vid)
        sent_vid = first.get("vid")
        sent_vid = sent_vid and parse_uuid(sent_vid)
        if not sent_vid:
            sent_vid = req.original_inputs.get("vid")
            sent_vid = sent_vid and parse_uuid(sent_vid)
        vid = cookie_vid or sent_vid or uuid4()
        sid = cookies.get("sid")
        sid = sid and parse_uuid(sid)
        if not sid:
            sid = first.get("sid")
            sid = (sid and parse_uuid(sid)) or uuid4()
        # (positional: keyword arguments make instantiation cost a dict; see request_info)
        minted = not cookie_vid and not sent_vid
        return Visitor(vid, sid, True, bool(cookie_vid), False, None, minted)

    def records(
        self,
        items: list[Any],
        req: RequestInfo,
        base: dict[str, str] | None = None,
        *,
        server: bool = False,
        with_user_agent: bool = True,
        visitor: Visitor | None = None,
    ) -> Ingested:
        """The records of one request's input ``items``.

        ``items`` are parsed input: dicts (any key case) are events, anything else (a
        ``RefusedItem``, a JSON value that is not an object) is refused on its own, as is an
        event beyond the input bounds; the others stand. ``base`` holds the pairs every event
        of the request shares (REST path, query string, the WebSocket URL's query); an event's
        own keys win. ``visitor`` is one decided earlier (a WebSocket connection's); a
        cookieless one is decided again, so its id never outlives its day. ``server``: sent by
        the site's backend (``/str/``, or a request the edge tracks for the visitor);
        ``with_user_agent=False`` when the user agent is the backend's own.
        """
        raws: list[Any] = []
        first = None  # the first event: the ids the client sent
        for item in items:
            if isinstance(item, dict):
                if not item:  # a GET's one item: its fields are all in ``base``
                    item = {**base} if base else {}
                else:
                    item = {**base, **lower_keys(item)} if base else lower_keys(item)
                if first is None:
                    first = item
            raws.append(item)
        if visitor is None or visitor.cookieless:
            visitor = self.visitor(req, first if first is not None else base or {}, server=server)
        records: list[Record] = []
        eids: list[str | None] = []
        problems: list[str] = []
        accepted = 0
        columns = self.request_columns(req, visitor, with_user_agent)  # the same for each event
        for n, raw in enumerate(raws):
            if not isinstance(raw, dict):
                problems.append(f"event {n}: {item_problem(raw)}")
                eids.append(None)
                continue
            try:
                row = self.event_row(raw, req, visitor, server=server, columns=columns)
            except BadInput as e:  # beyond a bound: this event alone is refused
                problems.append(f"event {n}: {e}")
                eids.append(None)
                continue
            if row is None:  # a bot, with DropBots: handled, not stored
                eids.append(parse_uuid(raw.get("eid")))
                continue
            records.append(("events", row))
            # an output's record of the event (the Conversions API, notify/facebook.py)
            if self.capture is not None and (extra := self.capture(raw, row, req)) is not None:
                records.append(extra)
            if "tid" in row:  # a message thread: mthreads/mstore/mtriage rows too
                records.extend(messaging_records(raw, row))
            eids.append(row["eid"])
            accepted += 1
        return Ingested(records, eids, problems, accepted, visitor)

    def payment_records(self, body: dict[str, Any], req: RequestInfo) -> list[Record]:
        """``("payments", row)`` per line item of a ``/ltv/`` body; ``BadInput`` if malformed."""
        body = lower_keys(body)
        rows = payment_rows(body, req, parse_uuid(req.cookies.get("vid")))
        records: list[Record] = [("payments", row) for row in rows]
        # A payment an output sends (a Purchase to the Conversions API) is spooled with it.
        payment = getattr(self.capture, "payment", None)
        if payment is not None:
            items = body.get("payments", [body])
            items = [lower_keys(i) for i in items if isinstance(i, dict)]
            for item, row in zip(items, rows, strict=True):
                if (extra := payment(body, item, row, req)) is not None:
                    records.append(extra)
        return records

    def consent(self, body: dict[str, Any], req: RequestInfo) -> Consent:
        """The ``agreed`` record of a ``/ppi/agree`` body; ``BadInput`` if malformed.

        The visitor is the body's ``vid``, else the cookie's; else a new one when analytics
        is granted and the browser does not refuse cookies (it becomes the vid cookie), else
        the day's cookieless id (nothing that outlives the day).
        """
        body = lower_keys(body)
        cookies_allowed = self.cookie_policy.header_refusal(req.headers) is None
        flags = body.get("cflags", req.cookies.get("CookieConsent"))
        granted = analytics_consented(None if flags is None else str(flags))
        vid = parse_uuid(body.get("vid")) or parse_uuid(req.cookies.get("vid"))
        if vid is None:
            if granted and cookies_allowed:
                vid = uuid4()
            else:
                vid = self.cookieless.visitor_id(req.day, req.host, req.ip, req.user_agent)
        row = agreed_row(body, req, vid, self.ip_policy, self.enrichers)
        return Consent(("agreed", row), vid, granted, cookies_allowed)

    def request_columns(
        self, req: RequestInfo, visitor: Visitor, with_user_agent: bool = True
    ) -> tuple:
        """The columns every event of a request shares, worked out once per request:
        ``created_at, hhash, hostname, ja4h, ip, iphash, bhash``."""
        host = req.host
        # IPMode applies here, before the row goes anywhere; enrichers (GeoIP) still see the
        # full ``req.ip``, which is never put in a row unless IPMode is "full".
        ip, iphash = self.ip_policy.stored(req.ip, visitor.day_key)
        ua = req.user_agent
        if ua and with_user_agent:
            ua = ua.strip().lower()
        bhash = short_hash(ua) if ua and with_user_agent else ""
        return req.now_ms, short_hash(host), host, req.ja4h, ip, iphash, bhash

    def event_row(
        self,
        raw: dict[str, Any],
        req: RequestInfo,
        visitor: Visitor,
        *,
        server: bool,
        with_user_agent: bool = True,
        columns: tuple | None = None,
    ) -> dict[str, Any] | None:
        """The ``events`` row for ``raw`` (keys lower-cased), or None when it is dropped (bot).

        ``columns``: ``request_columns()`` of this request, visitor and ``with_user_agent``
        (made here when not given). Raises ``BadInput`` for an event beyond the params bounds
        (``MaxParamsKeys``, ``MaxParamsBytes``): that event alone is refused.
        """
        # The original's lowest-priority inputs: the ``User`` header (a JSON object), then the
        # ``ehash`` cookie; anything the event itself sends wins.
        extra = req.original_inputs
        if extra:
            raw = {**extra, **raw}
        row: dict[str, Any] = {}
        params: dict[str, Any] | None = None  # made when the event has custom fields
        explicit_params = raw.get("params")
        if explicit_params is not None:
            explicit_params = to_json_object(explicit_params)
            if explicit_params:
                params = dict(explicit_params)
        coercer = EVENT_COERCERS.get
        for key, value in raw.items():
            spec = coercer(key)
            if spec is not None:
                typed = spec[1](value)
                if typed is not None:
                    row[spec[0]] = typed
            elif key not in NOT_PARAMS:
                if params is None:
                    params = {}
                params[key] = value

        if "ename" not in row and isinstance(raw.get("content"), str) and raw["content"]:
            row["ename"] = raw["content"].strip().lower()
            row.pop("content", None)

        # (``x and parse_uuid(x)``: most events send none of these ids, and a call costs more)
        sent = raw.get("eid")
        row["eid"] = (sent and parse_uuid(sent)) or uuid7(req.now_ms)
        if visitor.from_cookie or visitor.cookieless:
            row["vid"] = visitor.vid
        else:
            sent = raw.get("vid")
            row["vid"] = (sent and parse_uuid(sent)) or visitor.vid
        sent = raw.get("sid")
        row["sid"] = (sent and parse_uuid(sent)) or visitor.sid
        if "cflags" not in row:
            consent = req.cookies.get("CookieConsent")
            if consent is not None:
                cookie_flags = to_int(consent)
                if cookie_flags is not None:
                    row["cflags"] = cookie_flags

        # E-mail, user name, phone: only their keyed hashes are stored, never the value.
        # (Skipped when the event has none of those inputs: most events.)
        if not _PRIVATE_INPUTS.isdisjoint(raw):
            for key, column in PRIVATE_FIELDS.items():
                sent = row.get(column)
                if sent is not None and not looks_hashed(sent.strip()):
                    row[column] = self.hash_private(sent) if sent.strip() else ""
                value = raw.get(key)
                if not row.get(column) and isinstance(value, str) and value.strip():
                    row[column] = self.hash_private(value)
        if "url" not in row:
            page_url = req.page_url
            if page_url:
                row["url"] = page_url
        if self.normalise_url is not None:
            for column in ("url", "last"):
                if row.get(column):
                    row[column] = self.normalise_url(row[column])

        if columns is None:
            columns = self.request_columns(req, visitor, with_user_agent)
        created_at, hhash, hostname, ja4h, ip, iphash, bhash = columns
        row["created_at"] = created_at
        row["hhash"] = hhash
        row["hostname"] = hostname
        row["ja4h"] = ja4h
        if visitor.minted and not server and row["vid"] == visitor.vid:
            row["new_vid"] = 1
            visitor.minted = False  # once per visitor, not per event of its batch
        row["ip"] = ip
        row["iphash"] = iphash
        row["bhash"] = bhash
        row["params"] = _params_text(params) if params else "{}"
        row["server"] = 1 if server else 0
        row["bot"] = 0
        for enrich in self.enrichers:
            enrich(row, req)
        if not row.get("country"):  # the original's last resort: the client's time zone
            tz = row.get("tz")
            if tz:
                country = tz_country(tz)
                if country:
                    row["country"] = country
        if self.drop_bots and row["bot"]:
            return None
        return row

    def hash_private(self, text: str) -> str:
        """Keyed hash of an e-mail address (never stored in the clear)."""
        return hash_private(self.hash_key, text)


def _uuid_or_none(value: Any) -> str | None:
    """``parse_uuid(value)``, without the call for an absent value (most ids of most events)."""
    return parse_uuid(value) if value else None


def _params_text(params: dict[str, Any]) -> str:
    """``params`` as the JSON text of the column, each JSON path named once (ClickHouse refuses
    a row naming one twice: ``unique_json_paths``). Only text with a dot can have a dotted key,
    so most events skip that walk.

    Raises ``BadInput`` (the event is refused, the others in its batch stand) beyond
    ``MaxParamsBytes`` or ``MaxParamsKeys``; the depth was bounded when the JSON was read.
    """
    limits = bounds.LIMITS
    # Events of one kind often send the same custom fields (a short link's clicks: ``to``,
    # ``relation``): their text is kept, for text-only fields (a text's typed value depends on
    # the text alone; 1 == 1.0 == True would mix other types up).
    items = tuple(params.items())
    key = items if all(type(k) is str and type(v) is str for k, v in items) else None
    if key is not None:
        text = _PARAMS_TEXT.get(key)
        if text is not None and len(text) <= limits.params_bytes and text.count(":") <= limits.keys:
            return text
    typed = {str(k): param_value(v) for k, v in params.items()}
    text = _COMPACT_JSON.encode(typed)
    if len(text) > limits.params_bytes:
        raise BadInput(f"params larger than MaxParamsBytes ({limits.params_bytes})")
    # Every key is followed by a colon: with fewer colons than the limit, no need to count.
    if text.count(":") > limits.keys and bounds.count_keys(typed) > limits.keys:
        raise BadInput(f"params with more keys than MaxParamsKeys ({limits.keys})")
    if "." in text:
        unique = unique_json_paths(typed)
        if unique is not typed:
            text = _COMPACT_JSON.encode(unique)
    if key is not None and len(text) <= _PARAMS_TEXT_MAX:
        if len(_PARAMS_TEXT) >= _PARAMS_TEXT_SIZE:
            _PARAMS_TEXT.clear()
        _PARAMS_TEXT[key] = text
    return text


# ``_params_text`` of text-only fields, per field set (bounded: entries and their size).
_PARAMS_TEXT: dict[tuple, str] = {}
_PARAMS_TEXT_SIZE = 1024
_PARAMS_TEXT_MAX = 1024


def hash_private(key: bytes, text: str) -> str:
    """The ``ehash`` of an e-mail address: HMAC-SHA256 keyed with ``PrefixPrivateHash``/secret."""
    digest = hmac.new(key, text.strip().lower().encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:20]).decode().rstrip("=")
