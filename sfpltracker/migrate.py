"""``python -m sfpltracker migrate --from clickhouse://user:pass@host:9000/sfpla``.

Copies the tables of an original tracker's ClickHouse database (sfproductlabs/tracker) into
this gateway's configured store, through the store interface: the rows go where the gateway
writes, the materialized views here derive what they derive (visitors, sessions, ltv,
agreements ...). docs/migrating.md is the operator's guide.

How it reads: each table of ``TABLES`` in pages of ``--batch`` rows ordered by the original's
sort key, with ``FINAL`` where the original's engine collapses rows (so what is copied is what
the original's own ``FINAL`` queries saw), each page starting after the last key of the one
before (keyset paging: no OFFSET re-reading the table). The last key of every page copied is
kept in ``DataDirectory/migrate/<source>.json`` (written atomically, fsynced): a run stopped
anywhere resumes at the page after it.

Why a resumed run never doubles a row: a page is built from the source alone (no clock, no
random ids), so the page after a saved key is the same rows every time, and it is inserted
with an insert token derived from the source, the table and that key (one per chunk when a
page is bigger than one insert may be: ``insert_chunks``). A page that landed but
whose key was not saved yet (a kill between the two) is sent again with the same rows and the
same token, and the store skips what landed - the table's part and every view's part
(``store/embedded/store.py``); a store without tokens gets ``dedup=True`` (rows whose key is stored
are skipped). ``redirect_history`` keeps no deduplication window here, so its rows already
stored are looked up first. The source must not change while it is copied: point traffic at
this gateway first (docs/migrating.md).

What the mapping does beyond copying same-named columns (``Mapper.map_rows``):
* IPs: the original stored raw IPs (``ips``, ``dailies``, ``agreed``, ``logs``, and ``events``
  unless ``UseRemoveIP``); here ``IPMode`` applies to them as to new events, and an ``iphash``
  without its IP (the original's unsalted, reversible FNV) is replaced by a keyed hash of it.
* ``ehash``/``chash``/``uhash`` (unsalted SHA-1 of an address/number/name) become keyed hashes
  of themselves: equal values stay equal, a dictionary no longer reverses them.
* ``events`` are marked ``server = 1``: the original's per-day side tables (hits, dailies,
  referrers, outcomes ...) are copied as they were, so the views here must not count the old
  events into them a second time. ``params`` keep one value per JSON path.
* ``agreed`` rows get an ``id`` (UUIDv5 of the original's key), the browser family instead of
  the raw User-Agent; ``agreements`` and ``ltv`` are not copied, the views here fill them.
* ``redirects``/``redirect_history``: the link key in this gateway's form (host without port,
  normalised path), an ``id`` per link (UUIDv5 of the key), ``pathto``/``searchto`` from the
  destination (the original stored the from-path as ``pathto``).
Tables the original has but this schema lacks (or has as plain views) are counted and listed,
not copied; a later schema that adds them as tables gets them copied by a run then.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from sfpltracker import admin
from sfpltracker.fsutil import write_atomic
from sfpltracker.ingest.fields import unique_json_paths
from sfpltracker.ingest.ids import short_hash
from sfpltracker.links.model import LinkInvalid, link_key, normalize_path, parse_from
from sfpltracker.pipeline.batcher import MAX_INSERT_BYTES, MAX_INSERT_ROWS, estimate_row_bytes
from sfpltracker.privacy.ip import IPPolicy

DEFAULT_BATCH = 5000
# Every id minted here is a UUIDv5 in this namespace: the same source row, the same id.
NAMESPACE = uuid.UUID("5f0c6d1e-8a5b-4c1e-9f57-6d2b1f0e7a31")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Table:
    """One table of the original: its sort key (the resume position), whether its engine
    collapses rows (read with FINAL), and why it is not copied (``skip``)."""

    name: str
    key: tuple[str, ...] = ()
    final: bool = True
    skip: str = ""


# In copy order. Keys and engines are the original's (original-behaviour.md d.2).
TABLES = [
    Table("events", ("created_at", "eid"), final=False),  # plain MergeTree: FINAL refused
    Table("payments", ("oid", "org", "id")),
    Table("agreed", ("vid", "created_at", "updated_at")),
    Table("redirects", ("urlfrom",)),
    Table("redirect_history", ("urlfrom", "updated_at")),
    Table("hits", ("hhash", "url", "date")),
    Table("referrers", ("hhash", "url", "date")),
    Table("dailies", ("ip", "day")),
    Table("outcomes", ("hhash", "outcome", "sink", "url", "created")),
    Table("mthreads", ("oid", "org", "tid", "created_at")),
    Table("mstore", ("oid", "org", "tid", "mid", "created_at"), final=False),
    Table("mtriage", ("tid", "mid", "created_at"), final=False),
    # The original's side tables and its other tables: copied when this schema has them.
    Table("ips", ("hhash", "ip", "date")),
    Table("reqs", ("hhash", "vid", "date")),
    Table("browsers", ("hhash", "bhash", "browser", "date")),
    Table("hosts", ("hhash", "hostname")),
    Table("userhosts", ("hhash", "uid", "vid")),
    Table("usernames", ("hhash", "uhash", "vid")),
    Table("emails", ("hhash", "ehash")),
    Table("cells", ("hhash", "chash", "vid")),
    Table("counters", ("id",)),
    Table("updates", ("id",)),
    Table("logs", ("created_at", "id"), final=False),
    Table("impression_daily", ("oid", "org", "tid", "day", "variant_id")),
    Table("orgs", ("oid", "org")),
    # Not copied.
    Table("agreements", skip="filled here from agreed by a view (the original wrote both)"),
    Table("ltv", skip="summed here from payments by a view"),
    Table(
        "accounts",
        skip="unsalted SHA-1 passwords are not accepted here: "
        "create accounts anew (python -m sfpltracker account create)",
    ),
    Table("jurisdictions", skip="this schema seeds current regimes (rules in another form)"),
    Table("sequences", skip="the original's schema versions"),
]
BY_NAME = {t.name: t for t in TABLES}

# Destination tables without a deduplication window here (an insert token cannot make a
# re-sent page idempotent): their rows already stored are looked up by these columns first.
CHECK_STORED = {"redirect_history": ("urlfrom", "updated_at")}
KEYED_HASHES = ("ehash", "chash", "uhash")


class MigrateError(admin.AdminError):
    """The migration cannot go on; the message says why and what to do."""


# -- the source -------------------------------------------------------------------------------


def source_label(url: str) -> str:
    """``host:port/database`` of a source URL: what the operator sees, never the password."""
    parts = urlsplit(url)
    database = parts.path.strip("/") or "sfpla"
    return f"{parts.hostname or 'localhost'}:{parts.port or 9000}/{database}"


def check_source_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("clickhouse", "clickhouses"):
        raise MigrateError(
            "--from takes the original's native-protocol URL, "
            "clickhouse://user:password@host:9000/sfpla (clickhouses:// for TLS)"
        )
    database = parts.path.strip("/") or "sfpla"
    if not _NAME.match(database):
        raise MigrateError(f"bad database name {database!r} in --from")
    return url


def _select_expr(column: str, spec: str) -> str:
    """How a column is read: times as epoch milliseconds, UUIDs/JSON/dates as text (the
    gateway's row format), whatever the original's server version calls the type."""
    inner = spec
    for wrapper in ("LowCardinality(", "Nullable("):
        while inner.startswith(wrapper):
            inner = inner[len(wrapper) : -1]
    col = f"`{column}`"
    if inner.startswith("DateTime64"):
        return f"toUnixTimestamp64Milli({col})"
    if inner.startswith("DateTime"):
        return f"toUInt64(toUnixTimestamp({col})) * 1000"
    if inner in ("UUID", "Date", "Date32") or inner.startswith(("JSON", "Object(")):
        return f"toString({col})"
    return col


def _plain(value: Any) -> Any:
    """A driver value as the gateway's rows carry it (JSON-friendly)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class Source:
    """The original's database over the native protocol (blocking: call from a thread)."""

    def __init__(self, url: str):
        from clickhouse_driver import Client

        self.url = check_source_url(url)
        parts = urlsplit(url)
        self.database = parts.path.strip("/") or "sfpla"
        self.label = source_label(url)
        self.client = Client.from_url(url)

    def close(self) -> None:
        self.client.disconnect()

    def _run(self, sql: str, params: dict | None = None) -> list[tuple]:
        try:
            return self.client.execute(sql, params or {})
        except Exception as e:  # noqa: BLE001 - shown to the operator with the source named
            raise MigrateError(f"the original's database {self.label}: {_first_line(e)}") from None

    def tables(self) -> dict[str, str]:
        """Table name -> engine."""
        rows = self._run(
            "SELECT name, engine FROM system.tables WHERE database = %(db)s", {"db": self.database}
        )
        return dict(rows)

    def columns(self, table: str) -> list[tuple[str, str]]:
        return self._run(
            "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(t)s",
            {"db": self.database, "t": table},
        )

    def count(self, table: Table) -> int:
        name = f"`{self.database}`.`{table.name}`"
        if not table.final:
            return self._run(f"SELECT count() FROM {name}")[0][0]
        # Counting every column: 18.16 answers count() of a SummingMergeTree ... FINAL with 0
        # unless the summed column is read.
        columns = ", ".join(f"`{c}`" for c, _ in self.columns(table.name))
        return self._run(f"SELECT count(tuple({columns})) FROM {name} FINAL")[0][0]

    def page(
        self, table: Table, columns: list[tuple[str, str]], after: list[str] | None, limit: int
    ) -> tuple[list[dict], list[str] | None]:
        """Up to ``limit`` rows after the key ``after`` (None: from the start), in key order,
        and the last row's key (as text, for the next page and the state file)."""
        types = dict(columns)
        missing = [k for k in table.key if k not in types]
        if missing:
            raise MigrateError(f"{table.name} in {self.label} has no column {missing[0]!r}")
        exprs = [_select_expr(name, spec) for name, spec in columns]
        exprs += [f"toString(`{k}`)" for k in table.key]
        params: dict[str, Any] = {}
        where = ""
        if after is not None:
            # (k1, k2, ...) > (a1, a2, ...), spelled out: row comparison of tuples is newer
            # than some servers the original ran on.
            terms = []
            for i, k in enumerate(table.key):
                params[f"k{i}"] = after[i]
                equal = [
                    f"`{p}` = CAST(%(k{j})s AS {types[p]})" for j, p in enumerate(table.key[:i])
                ]
                terms.append(" AND ".join([*equal, f"`{k}` > CAST(%(k{i})s AS {types[k]})"]))
            where = " WHERE " + " OR ".join(f"({t})" for t in terms)
        final = " FINAL" if table.final else ""
        order = ", ".join(f"`{k}`" for k in table.key)
        sql = (
            f"SELECT {', '.join(exprs)} FROM `{self.database}`.`{table.name}`{final}{where} "
            f"ORDER BY {order} LIMIT {int(limit)}"
        )
        result = self._run(sql, params)
        names = [name for name, _ in columns]
        rows = [dict(zip(names, r, strict=False)) for r in result]
        # Most columns arrive as the rows carry them (the SELECT made times, UUIDs, dates and
        # JSON plain); only composite and exotic types are converted value by value.
        for name, spec in columns:
            if any(t in spec for t in ("Array", "Decimal", "IPv", "Tuple", "Map", "Nested")):
                for row in rows:
                    row[name] = _plain(row[name])
        last = list(result[-1][len(names) :]) if result else None
        return rows, last


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


# -- mapping rows -----------------------------------------------------------------------------


class Mapper:
    """Turns the original's rows into rows of this schema (same config, same secrets as the
    gateway, so a migrated IP hashes like a new event's)."""

    def __init__(self, cfg):
        from sfpltracker.gateway import load_or_create_secret

        secret = load_or_create_secret(cfg.data_dir / "secret.key")
        ip_secret = cfg.IPHashSecret.encode() if cfg.IPHashSecret else secret
        self.ip_policy = IPPolicy(cfg.IPMode, ip_secret)
        self.hash_key = cfg.PrefixPrivateHash.encode() or secret

    def rekey(self, value: str) -> str:
        if not value:
            return ""
        digest = hmac.new(self.hash_key, b"original:" + value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:20]).decode().rstrip("=")

    def map_rows(
        self, table: str, rows: list[dict], source: dict[str, str], columns: dict[str, str]
    ) -> list[dict]:
        """The rows for this schema's ``table``: ``source`` and ``columns`` are name -> type
        there and here. Only a column whose type differs (String -> JSON, UInt8 -> Bool ...)
        is converted value by value."""
        convert: dict[str, Callable[[Any], Any]] = {}
        for name, spec in columns.items():
            if "JSON" in spec:
                convert[name] = _json_text
            elif name in source and _base(spec) != _base(source[name]):
                convert[name] = partial(_coerce, spec=spec)
        special = getattr(self, f"_map_{table}", None)
        hashes = [h for h in KEYED_HASHES if h in source]
        out = []
        for row in rows:
            if "ip" in row:
                self._ip(row)
            for name in hashes:
                if isinstance(row[name], str):
                    row[name] = self.rekey(row[name])
            if special is not None:
                special(row)
            mapped = {name: value for name, value in row.items() if name in columns}
            for name, fn in convert.items():
                if name in mapped:
                    mapped[name] = fn(mapped[name])
            out.append(mapped)
        return out

    def _ip(self, row: dict) -> None:
        raw = row.get("ip") or ""
        if raw:
            row["ip"], iphash = self.ip_policy.stored(raw)
            if "iphash" in row:
                row["iphash"] = iphash
        elif row.get("iphash"):
            # No IP, only the original's unsalted FNV hash of it: reversible, so rehashed.
            row["iphash"] = "" if self.ip_policy.mode == "none" else self.rekey(row["iphash"])

    def _map_events(self, row: dict) -> None:
        row["server"] = 1
        row["bot"] = 0

    def _map_agreed(self, row: dict) -> None:
        from sfpltracker.privacy.useragent import parse_agent

        row["id"] = str(
            uuid.uuid5(NAMESPACE, f"agreed|{row.get('vid')}|{row.get('created_at')}|"
                                  f"{row.get('updated_at')}")
        )  # fmt: skip
        ua = row.get("browser") or ""
        if " " in ua or "/" in ua:  # the original stored the raw User-Agent here
            agent = parse_agent(ua)
            row["browser"] = agent.browser
            row["os"] = row.get("os") or agent.os
            row["device"] = row.get("device") or agent.device

    def _map_redirects(self, row: dict) -> None:
        _, host, path = _link_parts(row.get("urlfrom") or "")
        row["urlfrom"] = link_key(host, path)
        row["hhash"] = short_hash(host)  # the link's host, as links/model.py writes it
        row["host"], row["path"] = host, path
        row["id"] = link_id(row["urlfrom"])
        row.setdefault("status", 302)

    def _map_redirect_history(self, row: dict) -> None:
        row["urlfrom"], host, path = _link_parts(row.get("urlfrom") or "")
        row["hostfrom"], row["slugfrom"] = host, path
        row["id"] = link_id(link_key(host, path))
        to = urlsplit(row.get("urlto") or "")
        row["hostto"] = (to.hostname or "").lower()
        row["pathto"] = to.path  # the original stored the from-path here
        row["searchto"] = row.get("searchto") or to.query
        row["action"] = "migrated"
        row["status"] = 302


def link_id(key: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "link|" + key))


def _link_parts(urlfrom: str) -> tuple[str, str, str]:
    """(URL, host, path) of a short link in this gateway's form: host without port, path
    percent-decoded, lower-cased, without trailing slash (``links/model.py``)."""
    try:
        return parse_from(urlfrom)
    except LinkInvalid:  # kept (a link the admin API would refuse today), split plainly
        text = urlfrom.strip().lower()
        scheme, _, rest = text.rpartition("://")
        host, _, path = rest.partition("/")
        host, path = host.split(":")[0], normalize_path("/" + path)
        return f"{scheme or 'https'}://{host}{path}", host, path


def _base(spec: str) -> str:
    """A type without LowCardinality/Nullable; DateTime and DateTime64 alike (both arrive as
    epoch milliseconds)."""
    for wrapper in ("LowCardinality(", "Nullable("):
        while spec.startswith(wrapper):
            spec = spec[len(wrapper) : -1]
    return "DateTime" if spec.startswith("DateTime") else spec


def _coerce(value: Any, spec: str) -> Any:
    """A value of the original's column type as this schema's column type takes it, where the
    two differ (UInt8 -> Bool, a number kept as text ...); anything else as it is."""
    inner = spec
    for wrapper in ("LowCardinality(", "Nullable("):
        while inner.startswith(wrapper):
            inner = inner[len(wrapper) : -1]
    if value is None:
        return None
    if inner == "Bool":
        return value.strip().lower() in ("1", "true") if isinstance(value, str) else bool(value)
    if inner.startswith(("Int", "UInt")) and isinstance(value, bool | float):
        return int(value)
    if inner.startswith("Float") and isinstance(value, int | bool):
        return float(value)
    if inner in ("String", "FixedString") and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if inner == "UUID" and value == "":
        return ZERO_UUID
    return value


def _json_text(value: Any) -> str:
    """JSON text for a JSON column, each path named once (ClickHouse refuses a row naming one
    twice); '' and NULL as ``{}``."""
    if value is None or value == "" or value == "{}":
        return "{}"
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return json.dumps({"value": value})  # not JSON: kept, as a value
    else:
        parsed = value
    if not isinstance(parsed, dict):
        return json.dumps({"value": parsed})
    unique = unique_json_paths(parsed)
    if unique is parsed and isinstance(value, str):
        return value  # the text as it was: nothing to drop
    return json.dumps(unique, ensure_ascii=False, separators=(",", ":"))


# -- one page ---------------------------------------------------------------------------------


def page_token(label: str, table: str, after: list[str] | None, limit: int) -> str:
    """The insert token of a page: same source, table, start and size -> same rows, same
    token."""
    text = json.dumps([label, table, after, limit])
    return "migrate-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _quote(value: str) -> str:
    """A ClickHouse string literal (for an array query parameter)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@defer.inlineCallbacks
def destination_columns(store, table: str):
    """``(name -> type, None)`` of this schema's ``table``, or ``(None, reason)`` when rows
    cannot be inserted there."""
    if getattr(store, "kind", "") == "duckdb":
        raise admin.AdminError("migrate copies into ClickHouse stores only (docs/duckdb.md)")
    database = getattr(store, "database", "sfpla")
    found = _rows(
        (
            yield store.query(
                "SELECT engine FROM system.tables WHERE database = {db:String} "
                "AND name = {t:String}",
                "JSONEachRow",
                params={"db": database, "t": table},
            )
        )
    )
    if not found:
        return None, "no such table in this schema"
    if found[0]["engine"] in ("View", "MaterializedView", "LiveView"):
        return None, "a view over events in this schema (derived, not copied)"
    columns = _rows(
        (
            yield store.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} "
                "AND table = {t:String}",
                "JSONEachRow",
                params={"db": database, "t": table},
            )
        )
    )
    return {c["name"]: c["type"] for c in columns}, None


@defer.inlineCallbacks
def _without_stored(store, table: str, rows: list[dict], key: tuple[str, ...]):
    """``rows`` minus those whose ``key`` columns are stored already (``CHECK_STORED``)."""
    database = getattr(store, "database", "sfpla")
    first = key[0]
    values = sorted({str(r.get(first, "")) for r in rows})
    literal = "[" + ",".join(_quote(v) for v in values) + "]"
    wanted = ", ".join(
        f"toString(toUnixTimestamp64Milli(`{k}`))" if k.endswith("_at") else f"toString(`{k}`)"
        for k in key
    )
    data = yield store.query(
        f"SELECT {wanted} FROM {database}.`{table}` WHERE `{first}` IN {{v:Array(String)}}",
        "JSONCompactEachRow",
        params={"v": literal},
    )
    stored = {tuple(r) for r in _rows(data)}
    return [r for r in rows if tuple(str(r.get(k, "")) for k in key) not in stored]


# A page goes to the store in inserts of at most the batcher's bounds, whatever ``--batch`` is:
# a page of 100,000 events in one insert needs more memory than the embedded store has, and was
# refused on every retry (the copy could not go on). Module names, so a test can lower them.
INSERT_ROWS = MAX_INSERT_ROWS
INSERT_BYTES = MAX_INSERT_BYTES


def insert_chunks(rows: list[dict]) -> list[list[dict]]:
    """``rows`` in order, cut where a chunk would pass ``INSERT_ROWS`` or ``INSERT_BYTES``.
    From the rows alone: a page sent again is cut the same way, each chunk keeps its token."""
    chunks: list[list[dict]] = []
    chunk: list[dict] = []
    size = 0
    for row in rows:
        n = estimate_row_bytes(row)
        if chunk and (len(chunk) >= INSERT_ROWS or size + n > INSERT_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(row)
        size += n
    if chunk:
        chunks.append(chunk)
    return chunks


@defer.inlineCallbacks
def copy_page(store, mapper: Mapper, source_url: str, name: str, after, limit: int):
    """Read one page of the original's ``name`` after key ``after`` and insert it here.

    Fires with ``{"read", "stored", "after", "done"}`` (``after``: the page's last key) or
    ``{"skipped": reason}`` when this schema has no table to take the rows.
    """
    table = BY_NAME.get(name)
    if table is None or table.skip:
        raise MigrateError(f"{name} is not a table the migration copies")
    columns, reason = yield destination_columns(store, name)
    if columns is None:
        return {"skipped": reason}
    source = yield deferToThread(Source, source_url)
    try:
        source_columns = yield deferToThread(source.columns, name)
        rows, last = yield deferToThread(source.page, table, source_columns, after, limit)
    finally:
        yield deferToThread(source.close)
    # Off the reactor: in a running gateway, live traffic shares it.
    mapped = yield deferToThread(mapper.map_rows, name, rows, dict(source_columns), columns)
    stored = 0
    if name in CHECK_STORED and mapped:
        mapped = yield _without_stored(store, name, mapped, CHECK_STORED[name])
    page = page_token(source.label, name, after, limit)
    tokens = getattr(store, "insert_tokens", False)
    for i, chunk in enumerate(insert_chunks(mapped)):
        if tokens:
            # The first chunk keeps the page's token: a page of one chunk, as every page was
            # before pages were cut, is recognised by a copy resumed across the upgrade.
            token = page if i == 0 else f"{page}-{i}"
            stored += yield store.insert(name, chunk, dedup=True, token=token)
        else:
            stored += yield store.insert(name, chunk, dedup=True)
    return {
        "read": len(rows),
        "stored": stored,
        "after": last if last is not None else after,
        "done": len(rows) < limit,
    }


def migrate_page_command(ctx: admin.AdminContext, args: dict):
    """One page, run by the gateway that owns the store (``python -m sfpltracker migrate``
    while the gateway runs)."""
    mapper = Mapper(ctx.cfg)
    after = args.get("after")
    if after is not None and not (
        isinstance(after, list) and all(isinstance(v, str) for v in after)
    ):
        raise MigrateError("after: a list of strings")
    limit = args.get("limit")
    if not isinstance(limit, int) or not 1 <= limit <= 1_000_000:
        raise MigrateError("limit: an integer from 1 to 1000000")
    return copy_page(
        ctx.store, mapper, check_source_url(str(args.get("source", ""))),
        str(args.get("table", "")), after, limit,
    )  # fmt: skip


# -- the run ----------------------------------------------------------------------------------


class State:
    """What was copied, per table, in ``DataDirectory/migrate/<source>.json``."""

    def __init__(self, data_dir: Path, label: str):
        digest = hashlib.sha256(label.encode()).hexdigest()[:16]
        self.path = Path(data_dir) / "migrate" / f"{digest}.json"
        self.data: dict = {"source": label, "tables": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())

    def table(self, name: str) -> dict:
        return self.data["tables"].setdefault(
            name, {"after": None, "read": 0, "stored": 0, "done": False}
        )

    def save(self) -> None:
        """Atomically, and durably: a resumed run must never start before a page it saved."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data, indent=1).encode(), 0o600)


def run(cfg, source_url: str, page, out, batch: int = DEFAULT_BATCH, restart: bool = False):
    """Copy every table (blocking). ``page(table, after, limit) -> dict`` copies one page:
    in this process, or in the running gateway. ``out(line)`` shows progress. Returns the
    summary rows (one dict per table of the original)."""
    source = Source(source_url)
    try:
        present = source.tables()
        state = State(cfg.data_dir, source.label)
        if restart:
            state.data["tables"] = {}
        if state.data.get("batch", batch) != batch and not restart:
            # Pages of another size would start elsewhere, and their tokens would not match.
            out(f"resuming with --batch {state.data['batch']} (the size this copy started with)")
            batch = state.data["batch"]
        state.data["batch"] = batch
        state.save()
        counts = {}
        for table in TABLES:
            if table.name in present:
                counts[table.name] = source.count(table)
        out(f"copying from {source.label} into the {cfg.store_entry().Type} store")
    finally:
        source.close()

    summary = []
    for table in TABLES:
        if table.name not in present:
            continue
        total = counts.get(table.name)
        if table.skip:
            summary.append(
                {"table": table.name, "source": total, "note": "not copied: " + table.skip}
            )
            continue
        st = state.table(table.name)
        if st.get("skipped"):  # no table here last time: the schema may have one now
            st.update(done=False, skipped="")
        if st["done"]:
            out(f"{table.name}: done before ({st['read']:,} rows)")
        started = time.monotonic()
        while not st["done"]:
            result = page(table.name, st["after"], batch)
            if "skipped" in result:
                st["skipped"] = result["skipped"]
                st["done"] = True
                state.save()
                out(f"{table.name}: {total:,} rows not copied: {result['skipped']}")
                break
            st["after"] = result["after"]
            st["read"] += result["read"]
            st["stored"] += result["stored"]
            st["done"] = result["done"]
            state.save()
            if not result["read"] and st["read"]:
                continue  # the empty page after a full one: nothing new to show
            rate = st["read"] / max(time.monotonic() - started, 1e-3)
            share = f" ({100 * st['read'] // total}%)" if total else ""
            out(f"{table.name}: {st['read']:,} of {total:,} rows{share}, {rate:,.0f} rows/s")
        note = ""
        if st.get("skipped"):
            note = "not copied: " + st["skipped"]
        elif st["stored"] < st["read"]:
            note = (
                f"{st['read'] - st['stored']:,} not inserted (already stored, or refused: "
                f"python -m sfpltracker deadletter list --table {table.name})"
            )
        summary.append(
            {
                "table": table.name,
                "source": total,
                "read": st["read"],
                "stored": st["stored"],
                "note": note,
            }
        )
    # The original's *_local tables (under its Distributed ones), views and the tables its
    # code never writes: one line, they would drown the rest.
    others = sorted(set(present) - set(BY_NAME))
    if others:
        names = ", ".join(others)
        names = names if len(names) <= 160 else names[:157] + "..."
        summary.append(
            {"table": f"({len(others)} more)", "source": None, "note": f"not copied: {names}"}
        )
    state.data["finished"] = True
    state.save()
    return summary


def format_summary(summary: list[dict]) -> str:
    lines = [f"{'table':<18} {'source rows':>12} {'copied':>10} {'inserted':>10}  note"]
    for s in summary:
        source = "-" if s.get("source") is None else f"{s['source']:,}"
        read = "-" if "read" not in s else f"{s['read']:,}"
        stored = "-" if "stored" not in s else f"{s['stored']:,}"
        lines.append(f"{s['table']:<18} {source:>12} {read:>10} {stored:>10}  {s['note']}")
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------


def arguments(parser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL",
        help="the original's database: clickhouse://user:password@host:9000/sfpla",
    )
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="rows per page (default %(default)s)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="forget what an earlier run copied, start over"
    )


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "::1", "127.0.0.1", "") else host


def check_not_own_database(cfg, url: str) -> None:
    """Refuse a source that is this gateway's own store: the original's config.json names its
    database (``Context: sfpla``), which is also this schema's default database."""
    entry = cfg.store_entry()
    if entry.Type != "clickhouse":
        return
    parts = urlsplit(url)
    database = parts.path.strip("/") or "sfpla"
    source = (_local(parts.hostname or "localhost"), parts.port or 9000)
    for hostport in entry.Hosts:
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "9000")
        if (_local(host.strip("[]")), int(port or 9000)) == source and database == entry.Database:
            raise MigrateError(
                f"--from is this gateway's own database ({hostport}/{database}): give the "
                'gateway a database of its own ("Database": "sfpltracker" in its Notify '
                "entry), load the schema there, then migrate (docs/migrating.md)"
            )


def cmd_migrate(cfg, ns) -> int:
    from sfpltracker.cli import client as cli

    url = check_source_url(ns.source)
    check_not_own_database(cfg, url)
    if not 1 <= ns.batch <= 1_000_000:
        raise MigrateError("--batch: from 1 to 1000000 rows")

    def out(line: str) -> None:
        print(line, flush=True)

    def in_gateway(table, after, limit):
        args = {"source": url, "table": table, "after": after, "limit": limit}
        return cli.call_running_gateway(cfg, "migrate-page", args)

    try:
        cli.call_running_gateway(cfg, "ping", {})
    except cli.GatewayNotRunning:
        summary = cli.run_with_store(cfg, lambda store: _offline(cfg, store, url, ns, out))
    else:
        out("the gateway is running: it inserts the pages (it owns the store)")
        summary = run(cfg, url, in_gateway, out, ns.batch, ns.restart)
    out(format_summary(summary))
    return 0


def _offline(cfg, store, url: str, ns, out) -> defer.Deferred:
    """Run the copy in a thread, each page inserted by ``store`` on the reactor."""
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    mapper = Mapper(cfg)

    def here(table, after, limit):
        return blockingCallFromThread(reactor, copy_page, store, mapper, url, table, after, limit)

    return deferToThread(run, cfg, url, here, out, ns.batch, ns.restart)
