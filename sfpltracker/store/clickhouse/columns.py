"""Rows -> typed columns for clickhouse-driver's columnar INSERT.

Rows are dicts of JSON-friendly values (UUIDs as text, DateTime/DateTime64 as epoch
milliseconds, JSON as text). clickhouse-driver wants Python values of each column's type, so
every column of a table gets a converter, chosen once from its ClickHouse type (as
``system.columns`` spells it). A converter turns a whole column at once: when every value
already has the expected Python type (the common case) the list passes through, otherwise
each value is converted, and a value that cannot be rejects its row with a reason naming the
column. Rejected rows never reach the server; the store dead-letters them.

A column no row sets is left out of the INSERT. A row that lacks a column others set gets the
type's zero value, as ClickHouse itself would give it, except for columns with a ``DEFAULT``
expression: the server must compute those, so rows are grouped by which of them they set and
each group is inserted with its own column list.
"""

from __future__ import annotations

import datetime
import decimal
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sfpltracker.store.schema import split_top_level

UTC = datetime.UTC
EPOCH_DATE = datetime.date(1970, 1, 1)
ZERO_UUID = uuid.UUID(int=0)


class Rejected(ValueError):
    """A value its column cannot hold; the message says why."""


@dataclass
class ColumnType:
    """How one ClickHouse type takes values: pass-through types, per-value conversion, zero."""

    name: str
    fast_types: frozenset  # Python types the driver takes as they are
    convert: Callable[[Any], Any]  # one value -> driver value, or raise Rejected
    zero: Any
    fast_map: Callable[[list], list] | None = None  # the column when every value is fast
    fast_ok: Callable[[list], bool] | None = None  # a whole-column check of fast values

    def column(self, values: list, rejected: dict[int, str], column: str) -> list:
        """The driver's column for ``values``; bad values add ``rejected[row] = reason``."""
        zero = self.zero
        types = set(map(type, values))
        if types <= self.fast_types | {type(None)}:
            filled = (
                values if type(None) not in types else [zero if v is None else v for v in values]
            )
            if self.fast_ok is None or not filled or self.fast_ok(filled):
                return self.fast_map(filled) if self.fast_map else filled
        out = []
        convert = self.convert
        for i, v in enumerate(values):
            if v is None:
                out.append(zero)
                continue
            try:
                out.append(convert(v))
            except (Rejected, ValueError, TypeError, OverflowError) as e:
                rejected.setdefault(i, f"column {column} ({self.name}): {e}")
                out.append(zero)
        return out


def split_type(spec: str) -> tuple[str, list[str]]:
    """``"Map(String, Array(UInt8))"`` -> ("Map", ["String", "Array(UInt8)"])."""
    spec = spec.strip()
    if "(" not in spec or not spec.endswith(")"):
        return spec, []
    name, inner = spec[: spec.index("(")], spec[spec.index("(") + 1 : -1]
    args = split_top_level(inner)
    return name, args


def column_type(spec: str) -> ColumnType:
    """The converter for a ClickHouse type spec."""
    name, args = split_type(spec)
    if name in ("LowCardinality",):
        return column_type(args[0])
    if name == "SimpleAggregateFunction":
        return column_type(args[-1])
    if name == "Nullable":
        inner = column_type(args[0])
        return ColumnType(spec, inner.fast_types, inner.convert, None, inner.fast_map)
    if name == "String":
        return ColumnType(spec, frozenset({str}), _to_text, "")
    if name == "FixedString":
        size = int(args[0])
        return ColumnType(spec, frozenset(), lambda v: _to_fixed(v, size), "")
    if name == "UUID":
        # Text passes through: the driver parses it (a bad one is found by the store's bisection).
        return ColumnType(spec, frozenset({uuid.UUID, str}), _to_uuid, ZERO_UUID)
    m = re.fullmatch(r"(U?)Int(\d+)", name)
    if m:
        bits, unsigned = int(m.group(2)), bool(m.group(1))
        lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return ColumnType(
            spec,
            frozenset({int}),
            lambda v: _to_int(v, lo, hi),
            0,
            fast_ok=lambda values: lo <= min(values) and max(values) <= hi,
        )
    if name in ("Float32", "Float64"):
        return ColumnType(spec, frozenset({float, int}), _to_float, 0.0)
    if name.startswith("Decimal"):
        return ColumnType(spec, frozenset({decimal.Decimal}), _to_decimal, decimal.Decimal(0))
    if name == "Bool":
        return ColumnType(spec, frozenset({bool}), _to_bool, False)
    if name in ("Date", "Date32"):
        return ColumnType(spec, frozenset({datetime.date}), _to_date, EPOCH_DATE)
    if name == "DateTime":
        return _datetime_type(spec, 0)
    if name == "DateTime64":
        return _datetime_type(spec, int(args[0]) if args else 3)
    if name in ("JSON", "Object"):
        # JSON text passes through: the driver sends text or objects alike.
        return ColumnType(spec, frozenset({dict, str}), _to_json_object, {})
    if name == "Array":
        inner = column_type(args[0])
        return ColumnType(spec, frozenset(), lambda v: _to_array(v, inner), [])
    if name == "Map":
        return ColumnType(spec, frozenset({dict}), _to_map, {})
    if name in ("Enum8", "Enum16"):
        first = re.match(r"\s*'((?:[^'\\]|\\.)*)'", args[0]) if args else None
        return ColumnType(
            spec, frozenset({str, int}), _reject_other, first.group(1) if first else ""
        )
    if name == "IPv4":
        return ColumnType(spec, frozenset({str}), _reject_other, "0.0.0.0")
    if name == "IPv6":
        return ColumnType(spec, frozenset({str}), _reject_other, "::")
    # Anything else (Tuple, Nested, Variant ...): the driver gets the value as it is.
    return ColumnType(spec, frozenset({object}), lambda v: v, None)


def _datetime_type(spec: str, scale: int) -> ColumnType:
    """DateTime/DateTime64: the driver takes raw ints (seconds / ticks of ``scale``)."""
    if scale == 3:
        fast_map = None  # epoch milliseconds are DateTime64(3) ticks already
    elif scale < 3:
        div = 10 ** (3 - scale)
        fast_map = lambda values: [v // div for v in values]  # noqa: E731
    else:
        mul = 10 ** (scale - 3)
        fast_map = lambda values: [v * mul for v in values]  # noqa: E731
    return ColumnType(spec, frozenset({int}), lambda v: _to_ticks(v, scale), 0, fast_map=fast_map)


# -- one value ------------------------------------------------------------------------------


def _to_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    raise Rejected(f"expected text, got {_kind(v)}")


def _to_fixed(v: Any, size: int) -> bytes:
    data = v.encode() if isinstance(v, str) else v
    if not isinstance(data, bytes):
        raise Rejected(f"expected text, got {_kind(v)}")
    if len(data) > size:
        raise Rejected(f"{len(data)} bytes do not fit FixedString({size})")
    return data


def _to_uuid(v: Any) -> uuid.UUID:
    if isinstance(v, uuid.UUID):
        return v
    if not isinstance(v, str):
        raise Rejected(f"expected a UUID, got {_kind(v)}")
    try:
        return uuid.UUID(v)
    except ValueError:
        raise Rejected(f"not a UUID: {v[:64]!r}") from None


def _to_int(v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool):
        n = int(v)
    elif isinstance(v, int):
        n = v
    elif isinstance(v, float) and v.is_integer():
        n = int(v)
    else:
        raise Rejected(f"expected an integer, got {_kind(v)}")
    if not lo <= n <= hi:
        raise Rejected(f"{n} is out of range")
    return n


def _to_float(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise Rejected(f"expected a number, got {_kind(v)}")


def _to_decimal(v: Any) -> decimal.Decimal:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise Rejected(f"expected a number, got {_kind(v)}")
    try:
        return decimal.Decimal(str(v))
    except decimal.InvalidOperation:
        raise Rejected(f"not a number: {str(v)[:64]!r}") from None


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v in (0, 1):
        return bool(v)
    raise Rejected(f"expected true or false, got {_kind(v)}")


def _to_date(v: Any) -> datetime.date:
    if isinstance(v, datetime.datetime):
        return v.astimezone(UTC).date() if v.tzinfo else v.date()
    if isinstance(v, datetime.date):
        return v
    if isinstance(v, str):
        return datetime.date.fromisoformat(v[:10])
    if isinstance(v, int) and not isinstance(v, bool):
        return datetime.datetime.fromtimestamp(v / 1000, UTC).date()  # epoch milliseconds
    raise Rejected(f"expected a date, got {_kind(v)}")


def _to_ticks(v: Any, scale: int) -> int:
    """Epoch milliseconds (or a datetime / ISO text) -> ticks of 10**-scale seconds."""
    if isinstance(v, bool):
        raise Rejected("expected epoch milliseconds, got true/false")
    if isinstance(v, int):
        ms: float = v
    elif isinstance(v, float):
        ms = v
    elif isinstance(v, datetime.datetime | str):
        dt = datetime.datetime.fromisoformat(v) if isinstance(v, str) else v
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = dt.timestamp() * 1000
    else:
        raise Rejected(f"expected epoch milliseconds, got {_kind(v)}")
    return int(ms * 10**scale // 1000)


def _to_json_object(v: Any) -> dict:
    if isinstance(v, dict):
        return v
    if isinstance(v, str):
        try:
            parsed = json.loads(v or "{}")
        except ValueError as e:
            raise Rejected(f"not JSON: {e}") from None
        if isinstance(parsed, dict):
            return parsed
    raise Rejected(f"expected a JSON object, got {_kind(v)}")


def _to_array(v: Any, inner: ColumnType) -> list:
    if not isinstance(v, list | tuple):
        raise Rejected(f"expected an array, got {_kind(v)}")
    rejected: dict[int, str] = {}
    out = inner.column(list(v), rejected, "element")
    if rejected:
        raise Rejected(next(iter(rejected.values())))
    return out


def _to_map(v: Any) -> dict:
    if isinstance(v, dict):
        return v
    raise Rejected(f"expected an object, got {_kind(v)}")


def _reject_other(v: Any) -> Any:
    raise Rejected(f"unexpected {_kind(v)}")


def _kind(v: Any) -> str:
    text = json.dumps(v, default=str)
    return f"{type(v).__name__} {text[:40]}"


# -- a table ---------------------------------------------------------------------------------


@dataclass
class TableShape:
    """The insertable columns of a table, in table order, and those with a DEFAULT."""

    columns: dict[str, str]
    defaults: frozenset = frozenset()
    types: dict[str, ColumnType] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # named as the table spells the type, for reasons that point at the column
        self.types = {n: replace(column_type(t), name=t) for n, t in self.columns.items()}


@dataclass
class Block:
    """One INSERT: its column names, the columnar data and the rows it came from."""

    names: list[str]
    columns: list[list]
    rows: list[dict]


@dataclass
class Prepared:
    blocks: list[Block]
    rejected: list[tuple[dict, str]]  # (row, reason)


def prepare(shape: TableShape, rows: list[dict]) -> Prepared:
    """Columnar blocks for ``rows``, and the rows no column type could take."""
    rejected: dict[int, str] = {}
    keys = set().union(*rows)
    present = [c for c in shape.columns if c in keys]
    data = {
        name: shape.types[name].column([r.get(name) for r in rows], rejected, name)
        for name in present
    }
    bad = [(rows[i], reason) for i, reason in sorted(rejected.items())]
    keep = [i for i in range(len(rows)) if i not in rejected] if rejected else range(len(rows))
    defaults = [c for c in present if c in shape.defaults]
    groups: dict[tuple, list[int]] = {}
    if defaults:
        for i in keep:
            row = rows[i]
            sets = tuple(row.get(c) is not None for c in defaults)
            groups.setdefault(sets, []).append(i)
    elif keep:
        groups[()] = list(keep)
    blocks = []
    for sets, indexes in groups.items():
        left_to_server = {c for c, is_set in zip(defaults, sets, strict=True) if not is_set}
        names = [c for c in present if c not in left_to_server]
        whole = len(indexes) == len(rows)
        columns = [data[c] if whole else [data[c][i] for i in indexes] for c in names]
        blocks.append(Block(names, columns, [rows[i] for i in indexes]))
    return Prepared(blocks, bad)
