"""What a short link is, how its input is validated, and the rows it is stored as.

Lookup key: ``host + path``. The host is lower-cased without its port (as for every request);
the path is percent-decoded, lower-cased and loses a trailing slash, so ``/Spring``,
``/spring/`` and ``/spr%69ng`` are the same link. Slugs are case-insensitive on purpose: the
original stored them lower-cased (existing tables keep working) and people retype printed
campaign links in any case.

Validation follows the original tracker (reference a.7) with its messages, and answers a
missing or mistyped field with a 400 instead of crashing.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urljoin, urlsplit, urlunsplit

from sfpltracker.ingest.ids import parse_uuid, short_hash
from sfpltracker.ingest.parse import query_pairs
from sfpltracker.ingest.request import host_only

STATUSES = (301, 302, 307, 308)
DEFAULT_STATUS = 302
PERMANENT = (301, 308)

# Paths answered before short links are looked up: a link there could never be served.
RESERVED_PATHS = ("/health", "/ping", "/status", "/metrics", "/clear")
_TRACKED = re.compile(r"/tr/v\d+/x?rdr(/|$)")
# Characters browsers treat differently from Python's URL parser, or that have no place in a URL.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
# What no link key (host + decoded path) may hold: control characters (``%0d%0a``) and the
# backslash. ClickHouse reads both as escapes in a bound query parameter, so a lookup with one
# fails (or finds another key); such a slug can never be a link, and is never looked up.
_IMPOSSIBLE_KEY = re.compile(r"[\x00-\x1f\x7f\\]")


def possible_key(key: str) -> bool:
    """Could ``key`` (``link_key(host, path)``) be a short link's key?"""
    return _IMPOSSIBLE_KEY.search(key) is None


class LinkInvalid(ValueError):
    """Input the caller must fix; the message is the 400 reason."""


def normalize_path(raw: str | bytes) -> str:
    """``/Spr%69ng/`` -> ``/spring``: percent-decoded (UTF-8), lower-cased, no trailing slash."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    path = unquote_to_bytes(data).decode("utf-8", "replace").lower()
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return path or "/"


def link_key(host: str, path: str) -> str:
    return host + path


@dataclass(frozen=True, slots=True)
class Link:
    """One live short link, as the serving path needs it."""

    id: str
    host: str
    path: str
    urlto: str  # the destination as stored
    location: str  # where a hit goes: urlto, or the destination of a tracked /rdr/ URL
    status: int = DEFAULT_STATUS
    expires_ms: int = 0  # 0 = never
    forward_query: bool = False
    oid: str = ""
    org: str = ""
    fields: tuple[tuple[str, str], ...] = ()  # event fields from a tracked link's query
    created_at: int = 0
    updated_at: int = 0

    @property
    def key(self) -> str:
        return link_key(self.host, self.path)

    def live(self, now_ms: int) -> bool:
        return self.expires_ms == 0 or now_ms < self.expires_ms


def resolve_tracked(urlto: str, ignore_key: str = "igqp") -> tuple[str, tuple]:
    """Where a link to a tracked ``/tr/vN/rdr/?url=...`` URL really goes, in one hop.

    The destination is the ``url`` parameter (made absolute against the tracked URL); the
    other parameters (``utm_source=...``) become fields of the click event, as the ``/rdr/``
    hop would have recorded them. Any other URL is its own destination.
    """
    parts = urlsplit(urlto)
    if not _TRACKED.search(parts.path):
        return urlto, ()
    pairs = dict(parse_qsl(parts.query, keep_blank_values=True))
    destination = pairs.get("url", "").strip()
    if not destination:
        return urlto, ()
    fields = query_pairs(parts.query, ignore_key)
    fields.pop("url", None)
    return ascii_url(urljoin(urlto, destination)), tuple(sorted(fields.items()))


def relative_destination(urlto: str, link_oid: str = "") -> tuple[str, str] | None:
    """``(oid, path)`` for a tracked link whose ``url`` is a path (``/sale``): the original
    sends its clicks to the organisation's ``orgs.ddata.default_destination_host`` (reference
    a.7). The organisation is the tracked URL's ``oid`` parameter (the original's), else the
    link's own. None for any other link."""
    parts = urlsplit(urlto)
    if not _TRACKED.search(parts.path):
        return None
    pairs = dict(parse_qsl(parts.query, keep_blank_values=True))
    destination = pairs.get("url", "").strip()
    if not destination.startswith("/") or destination.startswith("//"):
        return None
    oid = parse_uuid(pairs.get("oid")) or parse_uuid(link_oid)
    return (oid, destination) if oid else None


def default_destination_host(ddata: str) -> str:
    """``ddata.default_destination_host`` of an ``orgs`` row (JSON text), "" when unset."""
    try:
        value = json.loads(ddata or "{}")
    except ValueError:
        return ""
    host = value.get("default_destination_host") if isinstance(value, dict) else None
    return host.strip() if isinstance(host, str) else ""


def with_org_host(link: Link, hosts: dict[str, str]) -> Link:
    """``link`` going to its organisation's default destination host when its tracked
    destination is a path and the organisation has one (``hosts``: oid -> host)."""
    found = relative_destination(link.urlto, link.oid)
    host = hosts.get(found[0], "") if found else ""
    if not found or not host:
        return link
    if "://" not in host:
        host = "https://" + host
    return replace(link, location=ascii_url(host.rstrip("/") + found[1]))


def link_from_row(row: dict, ignore_key: str = "igqp") -> Link:
    """A ``Link`` from a ``redirects`` row read with ``LINK_COLUMNS``."""
    location, fields = resolve_tracked(row["urlto"], ignore_key)
    return Link(
        id=row["id"],
        host=row["host"],
        path=row["path"],
        urlto=row["urlto"],
        location=location,
        status=int(row["status"]) if int(row["status"]) in STATUSES else DEFAULT_STATUS,
        expires_ms=int(row["expires"]),
        forward_query=bool(int(row["forward_query"])),
        oid=row["oid"],
        org=row["org"],
        fields=fields,
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


# What a ``redirects`` read selects (JSONEachRow: UUIDs as text, times as epoch ms).
LINK_COLUMNS = (
    "toString(id) AS id, host, path, urlto, status, toUnixTimestamp64Milli(expires) AS expires, "
    "forward_query, toString(oid) AS oid, toString(org) AS org, "
    "toUnixTimestamp64Milli(created_at) AS created_at, "
    "toUnixTimestamp64Milli(updated_at) AS updated_at, deleted"
)


# -- input ------------------------------------------------------------------------------------


@dataclass
class LinkInput:
    """A validated create/update request."""

    urlfrom: str  # normalised, with scheme (kept in the history)
    host: str
    path: str
    urlto: str
    status: int = DEFAULT_STATUS
    expires_ms: int = 0
    forward_query: bool = False
    oid: str | None = None
    org: str | None = None
    searchto: str | None = None
    given: set[str] = field(default_factory=set)  # optional fields the caller sent

    @property
    def key(self) -> str:
        return link_key(self.host, self.path)


def parse_link_input(
    body: Any, domains: list[str], now_ms: int, ignore_key: str = "igqp"
) -> LinkInput:
    """Validate a POST body (reference a.7 order and messages); ``LinkInvalid`` says why not."""
    if not isinstance(body, dict):
        raise LinkInvalid("Bad request (data)")
    body = {str(k).lower(): v for k, v in body.items()}
    raw_from, raw_to = body.get("urlfrom"), body.get("urlto")
    for value in (raw_from, raw_to):
        if value is not None and not isinstance(value, str):
            raise LinkInvalid("Bad request (urlfrom and urlto must be strings)")
    urlfrom = (raw_from or "").strip().lower()
    urlto = (raw_to or "").strip()
    if not urlfrom or not urlto:
        raise LinkInvalid("Bad URL (null)")
    if urlfrom == urlto.lower():
        raise LinkInvalid("Bad URL (equal)")
    to = _parse_http_url(urlto)
    if to is None:
        raise LinkInvalid("Bad URL (destination)")
    to_host = host_only(to.netloc)
    own_hosts = {host_only(d) for d in domains if d.strip()}
    if to_host in own_hosts and not _TRACKED.search(to.path):
        raise LinkInvalid("Bad URL (self-referential)")
    full_from, host, path = parse_from(urlfrom)
    if to_host == host and normalize_path(to.path) == path:
        raise LinkInvalid("Bad URL (equal)")

    out = LinkInput(urlfrom=full_from, host=host, path=path, urlto=ascii_url(urlto))
    if body.get("status") not in (None, ""):
        out.status = _status(body["status"])
        out.given.add("status")
    if "expires" in body:
        out.expires_ms = _expires(body["expires"], now_ms)
        out.given.add("expires")
    if "forward_query" in body:
        out.forward_query = _flag(body["forward_query"])
        out.given.add("forward_query")
    if body.get("oid") not in (None, ""):
        out.oid = parse_uuid(body["oid"])
        if out.oid is None:
            raise LinkInvalid("Bad oid (expected a UUID)")
    if body.get("org") is not None:
        if not isinstance(body["org"], str):
            raise LinkInvalid("Bad org (expected a string)")
        out.org = body["org"].strip()
    if isinstance(body.get("searchto"), str):
        out.searchto = body["searchto"]
    return out


def parse_from(text: str) -> tuple[str, str, str]:
    """``(normalised urlfrom, host, path)`` of a short URL (scheme optional, https assumed)."""
    text = text.strip().lower()
    frm = _parse_http_url(text if "://" in text else "https://" + text)
    if frm is None or frm.query or frm.fragment:
        raise LinkInvalid("Bad URL (from)")
    host = host_only(frm.netloc)
    path = normalize_path(frm.path)
    if len(frm.path) < 2 or len(path) < 2:
        raise LinkInvalid("Bad URL (from path)")
    if not possible_key(host + path):
        raise LinkInvalid("Bad URL (from path): control characters and backslashes are not allowed")
    if path in RESERVED_PATHS or path.startswith("/tr/"):
        raise LinkInvalid("Bad URL (from path): reserved for the tracker")
    return urlunsplit((frm.scheme, host, path, "", "")), host, path


def _parse_http_url(text: str):
    """``urlsplit(text)`` for an absolute http(s) URL with a host and no user info, else None."""
    if _UNSAFE.search(text):
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if "@" in parts.netloc:
        return None
    return parts


def ascii_url(url: str) -> str:
    """The URL with an IDN host in punycode and other non-ASCII characters percent-encoded,
    so it can go into a ``Location`` header as is."""
    if url.isascii():
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.hostname and not parts.hostname.isascii():
        try:
            ascii_host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise LinkInvalid("Bad URL (destination)") from None
        netloc = netloc.replace(parts.hostname, ascii_host)
    safe = "/:?#[]@!$&'()*+,;=%~-._"
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            quote(parts.path, safe=safe),
            quote(parts.query, safe=safe),
            quote(parts.fragment, safe=safe),
        )
    )


def _status(value: Any) -> int:
    try:
        status = int(value) if not isinstance(value, bool) else 0
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON 1e999
        status = 0
    if status not in STATUSES:
        raise LinkInvalid("Bad status (use 301, 302, 307 or 308)")
    return status


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise LinkInvalid("Bad forward_query (true or false)")


def _expires(value: Any, now_ms: int) -> int:
    """Epoch ms of ``expires`` (ISO 8601 text, naive = UTC, or Unix seconds); 0 = never."""
    if value in (None, "", 0):
        return 0
    ms: int | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        # JSON allows 1e999 and integers of any length: only what fits Int64 milliseconds.
        ms = int(value * 1000) if -(2**62) < value < 2**62 // 1000 else None
    elif isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            ms = int(when.timestamp() * 1000)
    if ms is None:
        raise LinkInvalid("Bad expires (an ISO 8601 time or Unix seconds)")
    if ms <= now_ms:
        raise LinkInvalid("Bad expires (in the past)")
    return ms


# -- rows -------------------------------------------------------------------------------------


def redirect_row(link: Link, updater: str, now_ms: int, deleted: bool = False) -> dict:
    """The ``redirects`` row of ``link`` (a newer version of its key)."""
    return {
        "hhash": short_hash(link.host),
        "urlfrom": link.key,
        "urlto": link.urlto,
        "oid": link.oid,
        "org": link.org,
        "updated_at": now_ms,
        "updater": updater,
        "created_at": link.created_at or now_ms,
        "id": link.id,
        "host": link.host,
        "path": link.path,
        "status": link.status,
        "expires": link.expires_ms,
        "forward_query": 1 if link.forward_query else 0,
        "deleted": 1 if deleted else 0,
    }


def history_row(
    link: Link, action: str, urlfrom: str, updater: str, now_ms: int, searchto: str | None = None
) -> dict:
    """The ``redirect_history`` row of a change: ``pathto``/``searchto`` describe the
    destination (the original stored the from-path as ``pathto``)."""
    to = urlsplit(link.urlto)
    return {
        "urlfrom": urlfrom,
        "hostfrom": link.host,
        "slugfrom": link.path,
        "urlto": link.urlto,
        "hostto": (to.hostname or "").lower(),
        "pathto": to.path,
        "searchto": searchto if searchto is not None else to.query,
        "oid": link.oid,
        "org": link.org,
        "updater": updater,
        "updated_at": now_ms,
        "id": link.id,
        "action": action,
        "status": link.status,
        "expires": link.expires_ms,
        "forward_query": 1 if link.forward_query else 0,
    }


def public_view(link: Link, clicks: int | None = None) -> dict:
    """A link as the admin API shows it."""
    out = {
        "id": link.id,
        "urlfrom": link.key,
        "urlto": link.urlto,
        "status": link.status,
        "expires": _iso(link.expires_ms) if link.expires_ms else None,
        "forward_query": link.forward_query,
        "org": link.org,
        "created_at": _iso(link.created_at),
        "updated_at": _iso(link.updated_at),
    }
    if link.location != link.urlto:
        out["location"] = link.location
    if clicks is not None:
        out["clicks"] = clicks
    return out


def _iso(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
