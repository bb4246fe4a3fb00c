"""Typing of event fields: each known input key, the column it fills and how it is coerced.

A wrongly typed value is coerced when that is unambiguous (``"12"`` for an integer, ``94107``
for a zip) and otherwise dropped for that field alone, so one bad field never fails its event or
the batch it came in.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

from sfpltracker.ingest import bounds
from sfpltracker.ingest.ids import parse_uuid

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT64_MAX = 2**64 - 1


def to_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):  # (math.isfinite() of an int past a float's range raised)
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(value)
    return None  # objects, arrays, null: dropped


def to_int(value: Any, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int | None:
    if isinstance(value, bool):
        n: int | None = int(value)
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float):
        n = int(value) if math.isfinite(value) and value == int(value) else None
    elif isinstance(value, str) and len(value) <= 64 and _INT.match(value.strip()):
        n = int(value.strip())  # short: int() of 4,300+ digits raises, and is out of range
    elif isinstance(value, str) and len(value) <= 64 and _FLOAT.match(value.strip()):
        f = float(value)
        n = int(f) if math.isfinite(f) and f == int(f) else None
    else:
        n = None
    return n if n is not None and lo <= n <= hi else None


def to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        f = value
    elif isinstance(value, int):
        try:
            f = float(value)
        except OverflowError:  # over 1.8e308
            return None
    elif isinstance(value, str) and _FLOAT.match(value.strip()):
        f = float(value)
    else:
        return None
    return f if math.isfinite(f) else None


def to_json_object(value: Any) -> dict | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        parsed = bounds.json_in_text(value)
        return parsed if isinstance(parsed, dict) else None
    return None


def param_value(value: Any) -> Any:
    """A custom parameter's value, typed the same whichever form it came in.

    GET, path and WebSocket values are strings; JSON bodies have numbers. ``"3"`` and ``3``
    both become 3, ``"true"`` becomes true, but ``"02134"`` stays a string (its zero matters).
    An integer outside Int64/UInt64 is kept as its text (as ClickHouse's JSON type would).
    """
    if isinstance(value, str):
        s = value.strip()
        if s in ("true", "false"):
            return s == "true"
        if (
            len(s) <= bounds.MAX_INT_CHARS
            and _INT.match(s)
            and str(int(s)) == s.lstrip("+")
            and INT64_MIN <= int(s) <= INT64_MAX
        ):
            return int(s)
        if _is_plain_decimal(s):
            return float(s)
        return s
    if isinstance(value, dict):
        return {str(k): param_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [param_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if type(value) is int and not INT64_MIN <= value <= UINT64_MAX:
        return str(value)
    return value


def unique_json_paths(obj: dict) -> dict:
    """``obj`` without keys that name a JSON path a key before them already named.

    ClickHouse's JSON type reads a dotted key as a path: ``{"a.b": 1, "a": {"b": 2}}`` names
    ``a.b`` twice and the whole row is refused ("Duplicate path found"). The first value of
    each path is kept, later ones are dropped (only that field: the event goes in). Objects in
    arrays are paths of their own. Most objects have no dotted key and are returned as they are.
    """
    if not _has_dotted_key(obj):
        return obj
    return _first_of_each_path(obj, "", set())


def _has_dotted_key(obj: dict) -> bool:
    # A plain loop: this runs for every event's params (a generator costs more than the walk).
    for key, value in obj.items():
        if "." in key:
            return True
        if isinstance(value, dict):
            if _has_dotted_key(value):
                return True
        elif isinstance(value, list) and _list_has_dotted_key(value):
            return True
    return False


def _list_has_dotted_key(values: list) -> bool:
    for value in values:
        if isinstance(value, dict):
            if _has_dotted_key(value):
                return True
        elif isinstance(value, list) and _list_has_dotted_key(value):
            return True
    return False


def _first_of_each_path(obj: dict, prefix: str, seen: set[str]) -> dict:
    out = {}
    for key, value in obj.items():
        path = prefix + key
        if isinstance(value, dict):
            out[key] = _first_of_each_path(value, path + ".", seen)
        elif value is None:  # no value: ClickHouse stores no path for it
            out[key] = value
        elif path not in seen:
            seen.add(path)
            out[key] = _paths_in_arrays(value)
    return out


def _paths_in_arrays(value: Any) -> Any:
    if isinstance(value, list):
        return [
            _first_of_each_path(v, "", set()) if isinstance(v, dict) else _paths_in_arrays(v)
            for v in value
        ]
    return value


def _is_plain_decimal(s: str) -> bool:
    """``"1.5"``, ``"-0.25"``: yes; ``"007.5"``, ``"1e9"``, ``"1."``: no (kept as text)."""
    if not _FLOAT.match(s) or "." not in s or "e" in s.lower() or s.endswith("."):
        return False
    whole = s.lstrip("+-").split(".")[0]
    return whole in ("", "0") or not whole.startswith("0")


# Input key -> (column, kind). Kinds: uuid, str, lower, upper, int, int32, float, json.
EVENT_FIELDS: dict[str, tuple[str, str]] = {
    **{k: (k, "uuid") for k in "uid oid tid rid auth_id invoice_id device_id ref".split()},
    **{
        k: (k, "str")
        for k in """org app rel ptyp xid split sink content term relation aff arm_id mcid device
        os browser region city zip tz gaid idfa msid fbid culture rcode last url outcome
        ehash uhash chash""".split()
    },
    **{k: (k, "lower") for k in "ename etyp source medium campaign".split()},
    "country": ("country", "upper"),
    "cflags": ("cflags", "int"),
    "duration": ("duration", "int"),
    "w": ("vp_w", "int"),
    "h": ("vp_h", "int"),
    "vp_w": ("vp_w", "int"),
    "vp_h": ("vp_h", "int"),
    "ver": ("ver", "int32"),
    "lat": ("lat", "float"),
    "lon": ("lon", "float"),
    "score": ("score", "float"),
    "targets": ("targets", "json"),
}

# Keys with a meaning of their own that must not be copied into ``params``: the typed fields
# above, identifiers handled by the event model, and personal data that is only stored hashed.
NOT_PARAMS = frozenset(EVENT_FIELDS) | frozenset(
    """eid vid sid params email cell chash uname uhash acct first uri hhash iphash bhash ip
    latlon tr time created did vp v1 hostname new_vid""".split()
)

# Personal data the client may send in the clear (key -> the column of its keyed hash), or
# already hashed under the column's own name (``ehash``, ``uhash``, ``chash``).
PRIVATE_FIELDS = {"email": "ehash", "uname": "uhash", "cell": "chash"}

# What a hash looks like (the original's base64url SHA-1, ours, hex digests).
_HASHED = re.compile(r"^[A-Za-z0-9_\-+/=]{20,128}$")


def looks_hashed(value: str) -> bool:
    """Whether a client's ``ehash``/``uhash``/``chash`` can be stored as it is. An e-mail
    address, phone number or user name sent in its place is hashed first: never stored raw."""
    return bool(_HASHED.match(value)) and not value.lstrip("+").isdigit()


@functools.cache
def _zone_countries() -> dict[str, str]:
    """Lower-cased IANA time zone -> ISO 3166-1 alpha-2, from the tz database's zone.tab (what
    the original's zones.go table was made from)."""
    import pytz

    return {z.lower(): cc for cc, zones in pytz.country_timezones.items() for z in zones}


def tz_country(tz: Any) -> str | None:
    """The country of an IANA time zone name (``America/Los_Angeles`` -> ``US``), or None."""
    if not isinstance(tz, str) or not tz:
        return None
    return _zone_countries().get(tz.strip().lower())


def _lower(value: Any) -> str | None:
    if type(value) is str:  # nearly always: the other types go through to_str
        return value.strip().lower()
    s = to_str(value)
    return s.strip().lower() if s is not None else None


def _upper(value: Any) -> str | None:
    if type(value) is str:
        return value.strip().upper()
    s = to_str(value)
    return s.strip().upper() if s is not None else None


def _int32(value: Any) -> int | None:
    return to_int(value, INT32_MIN, INT32_MAX)


def _json(value: Any) -> str | None:
    obj = to_json_object(value)
    return None if obj is None else json_column_text(obj)


def json_column_text(obj: dict) -> str | None:
    """The text of a JSON column (``targets``, consent ``loc``) for ``obj``, or None (the field
    is dropped) when it has more keys than ``MaxParamsKeys`` or more bytes than
    ``MaxParamsBytes``: the same bounds as ``params``."""
    limits = bounds.LIMITS
    if bounds.count_keys(obj) > limits.keys:
        return None
    text = json.dumps(unique_json_paths(param_value(obj)), separators=(",", ":"))
    return text if len(text) <= limits.params_bytes else None


# Each kind's coercion, looked up once per field instead of walking a chain of comparisons.
COERCERS = {
    "str": to_str,
    "lower": _lower,
    "upper": _upper,
    "uuid": parse_uuid,
    "int": to_int,
    "int32": _int32,
    "float": to_float,
    "json": _json,
}

# Input key -> (column, coercion), what ``EventModel.event_row`` uses for each key.
EVENT_COERCERS = {key: (column, COERCERS[kind]) for key, (column, kind) in EVENT_FIELDS.items()}


def coerce(kind: str, value: Any) -> Any:
    """The column value for ``value``, or None when it cannot be typed (field dropped)."""
    try:
        convert = COERCERS[kind]
    except KeyError:
        raise ValueError(kind) from None
    return convert(value)
