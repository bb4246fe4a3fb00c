"""Messaging rows: an event with a valid ``tid`` also writes ``mthreads``, ``mstore``, ``mtriage``.

One row per table per event (the original wrote mthreads and mstore twice). Each row is built
from the event's input (keys lower-cased) and its already-built ``events`` row:

* every input key named like a column of the table is typed to that column (text, booleans,
  Int32/Int64/Float64, UUIDs, arrays of UUIDs or text, JSON objects as JSON text, times as epoch
  milliseconds); a value that cannot be typed is dropped for that column alone, so the column
  keeps its default and the event, its other fields and its batch are stored as usual;
* the identity and the normalised fields come from the ``events`` row, so both tables agree:
  ``tid``, ``oid``, ``org``, ``uid``, ``vid`` (the stored visitor id), ``ename``, ``source`` ...;
* ``created_at`` and ``updated_at`` are the event's time (not the load time), so a replayed
  record builds the identical row and an older event never overwrites a newer thread row;
* ``mid`` is the client's valid ``mid``, else the event's ``eid``: replays keep their key.

The columns and their types are read from ``schema/060_messaging.sql``, the one place they are
written down. The caller checks ``"tid" in row`` first, so an event without a thread costs one
dict lookup.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Callable
from typing import Any

from sfpltracker.ingest import bounds
from sfpltracker.ingest.fields import INT32_MAX, INT32_MIN, to_float, to_int, to_str
from sfpltracker.ingest.ids import parse_uuid
from sfpltracker.store.schema import DEFAULT_DATABASE, SCHEMA_DIR, split_statements

SCHEMA_FILE = SCHEMA_DIR / "060_messaging.sql"
TABLES = ("mthreads", "mstore", "mtriage")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"

# Columns filled from the ``events`` row when it has them (typed and normalised there already).
FROM_EVENT = (
    "tid oid org uid vid xid split ename etyp source medium campaign term app rel ptyp ver ref "
    "aff rid relation"
).split()
# Columns the gateway sets itself; input keys of these names are ignored.
SET_BY_GATEWAY = frozenset({"created_at", "updated_at", "mid"})
# String columns that hold structured content: an object or array sent there is kept as JSON
# text instead of being dropped.
JSON_TEXT_COLUMNS = frozenset({"ddata", "data"})
# Defaults the original tracker applied when the event does not say (reference c.4).
DEFAULTS = {
    "mthreads": {},
    "mstore": {"scheduled_local_hour": -1, "scheduled_local_dow": -1},
    "mtriage": {"urgency": 8, "keep": True, "scheduled_local_hour": -1, "scheduled_local_dow": -1},
}

# DateTime64 inputs outside this range are dropped (the oldest servers' DateTime ends in 2106).
MIN_TIME_MS = 0
MAX_TIME_MS = int(datetime.datetime(2106, 1, 1, tzinfo=datetime.UTC).timestamp() * 1000)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


# -- one value ---------------------------------------------------------------------------------


def to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def to_int32(value: Any) -> int | None:
    return to_int(value, INT32_MIN, INT32_MAX)


def to_time_ms(value: Any) -> int | None:
    """RFC 3339, ``YYYY-MM-DD HH:MM:SS`` (UTC) or epoch seconds -> epoch milliseconds."""
    if isinstance(value, bool):
        return None
    seconds: float | None
    if isinstance(value, int | float):
        seconds = to_float(value)  # None for an integer too big for a float
    elif isinstance(value, str) and _NUMBER.match(value.strip()):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            moment = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        seconds = moment.timestamp()
    else:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    ms = round(seconds * 1000)
    return ms if MIN_TIME_MS <= ms < MAX_TIME_MS else None


def _list(value: Any) -> list | None:
    """A JSON array, or the text of one (GET and path values are text)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.lstrip().startswith("["):
        parsed = bounds.json_in_text(value)
        return parsed if isinstance(parsed, list) else None
    return None


def to_uuid_list(value: Any) -> list[str] | None:
    """Every element a UUID, or the field is dropped (one bad element spoils the list)."""
    items = _list(value)
    if items is None:
        return None
    out = [parse_uuid(v) for v in items]
    return None if None in out else out


def to_str_list(value: Any) -> list[str] | None:
    items = _list(value)
    if items is None:
        return None
    out = [to_str(v) for v in items]
    return None if None in out else out


def _dumps(value: Any) -> str | None:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError):
        return None


def to_json_object_text(value: Any) -> str | None:
    """A JSON object (or its text) -> compact JSON text; anything else is dropped."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        value = bounds.json_in_text(value)
    return _dumps(value) if isinstance(value, dict) else None


def to_json_text(value: Any) -> str | None:
    """Text as it is; an object or array as JSON text."""
    if isinstance(value, dict | list):
        return _dumps(value)
    return to_str(value)


# ClickHouse type (as the schema spells it) -> coercion of an input value.
_BY_TYPE: dict[str, Callable[[Any], Any]] = {
    "String": to_str,
    "LowCardinality(String)": to_str,
    "UUID": parse_uuid,
    "Bool": to_bool,
    "Int32": to_int32,
    "Int64": to_int,
    "Float64": to_float,
    "JSON": to_json_object_text,
    "DateTime64(3, 'UTC')": to_time_ms,
    "Array(UUID)": to_uuid_list,
    "Array(String)": to_str_list,
}


# -- the columns, from the schema file ---------------------------------------------------------

_CREATE = re.compile(
    rf"CREATE TABLE IF NOT EXISTS {DEFAULT_DATABASE}\.(\w+)\s*\((.*)\)\s*ENGINE", re.S
)
_COLUMN = re.compile(r"^\s*(\w+)\s+(.+?)(?:\s+DEFAULT\s+.*)?$")


def schema_columns(text: str) -> dict[str, dict[str, str]]:
    """``{table: {column: type}}`` of the CREATE TABLE statements in ``text``."""
    tables: dict[str, dict[str, str]] = {}
    for statement in split_statements(text):
        m = _CREATE.search(statement)
        if not m:
            continue
        columns = {}
        for line in m.group(2).split(",\n"):
            col = _COLUMN.match(line.strip().rstrip(","))
            if col:
                columns[col.group(1)] = col.group(2)
        tables[m.group(1)] = columns
    return tables


def coercers(columns: dict[str, str]) -> dict[str, Callable[[Any], Any]]:
    """Input key -> coercion for the columns an input may set (not those the gateway sets or
    copies from the events row)."""
    out = {}
    for name, ch_type in columns.items():
        if name in SET_BY_GATEWAY or name in FROM_EVENT:
            continue
        if name in JSON_TEXT_COLUMNS:
            out[name] = to_json_text
        else:  # JSON(max_dynamic_paths = ...) is coerced as JSON
            out[name] = _BY_TYPE["JSON" if ch_type.startswith("JSON") else ch_type]
    return out


COLUMNS = schema_columns(SCHEMA_FILE.read_text())
COERCERS = {table: coercers(COLUMNS[table]) for table in TABLES}
# The tables share most columns (subject, msg, users ...): each input value is typed once, with
# the coercion the message tables use, and again only where a table types it differently
# (mthreads.mtempl is JSON, mstore.mtempl text).
_SHARED: dict[str, Callable[[Any], Any]] = {}
for _table in ("mstore", "mtriage", "mthreads"):
    for _name, _convert in COERCERS[_table].items():
        _SHARED.setdefault(_name, _convert)
_OWN = {
    table: {n: c for n, c in COERCERS[table].items() if _SHARED[n] is not c} for table in TABLES
}
_NAMES = {table: frozenset(COERCERS[table]) - frozenset(_OWN[table]) for table in TABLES}
_FROM_EVENT = {table: [c for c in FROM_EVENT if c in COLUMNS[table]] for table in TABLES}


# -- the rows ----------------------------------------------------------------------------------


def _typed(raw: dict[str, Any], coerce: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """The values of ``raw`` whose key ``coerce`` knows, typed; bad values left out."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        convert = coerce.get(key)
        if convert is not None and value is not None:
            typed = convert(value)
            if typed is not None:
                out[key] = typed
    return out


def _row(typed: dict, raw: dict, event: dict, table: str) -> dict[str, Any]:
    names = _NAMES[table]
    row = {k: v for k, v in typed.items() if k in names}
    for name, convert in _OWN[table].items():
        value = raw.get(name)
        value = convert(value) if value is not None else None
        if value is not None:
            row[name] = value
    for column in _FROM_EVENT[table]:
        value = event.get(column)
        if value is not None:
            row[column] = value
    row["created_at"] = row["updated_at"] = event["created_at"]
    for column, default in DEFAULTS[table].items():
        row.setdefault(column, default)
    return row


def messaging_records(raw: dict[str, Any], event: dict[str, Any]) -> list[tuple[str, dict]]:
    """``("mthreads", row)``, ``("mstore", row)``, ``("mtriage", row)`` for an event with a tid.

    ``raw`` is the event's input (keys lower-cased), ``event`` its ``events`` row. No records for
    an event without a valid (non-zero) ``tid``.
    """
    tid = event.get("tid")
    if not tid or tid == ZERO_UUID:
        return []
    typed = _typed(raw, _SHARED)
    mid = parse_uuid(raw.get("mid")) or event["eid"]
    thread = _row(typed, raw, event, "mthreads")
    store = _row(typed, raw, event, "mstore")
    triage = _row(typed, raw, event, "mtriage")
    for message in (store, triage):
        message["mid"] = mid
        message.setdefault("createdms", event["created_at"])
    return [("mthreads", thread), ("mstore", store), ("mtriage", triage)]


def event_records(raw: dict[str, Any], event: dict[str, Any]) -> list[tuple[str, dict]]:
    """The records of one accepted event: its ``events`` row, plus the messaging rows when it
    has a tid."""
    if "tid" in event:
        return [("events", event), *messaging_records(raw, event)]
    return [("events", event)]


def count_events(records: list[tuple[str, dict]]) -> int:
    """How many of ``records`` are events (the rest are rows derived from them)."""
    return sum(1 for table, _ in records if table == "events")
