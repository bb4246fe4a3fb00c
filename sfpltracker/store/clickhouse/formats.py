"""Query results in ClickHouse's text formats, for a store that reads over the native protocol.

The native protocol returns typed values, not formatted text; the store interface returns
bytes in a named format (what the query listener and the features that read through the store
expect). This renders the common formats the way ClickHouse itself writes them - same escaping,
same number and date spelling (checked against a real server's HTTP interface in the tests):
JSONEachRow, JSONCompactEachRow, JSON, TabSeparated (+ WithNames, WithNamesAndTypes, Raw), CSV
(+ WithNames). Other formats are refused with ClickHouse's UNKNOWN_FORMAT code; query the
server directly for those.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import json
import math
import struct
import uuid
from collections.abc import Callable
from typing import Any

from sfpltracker.store.clickhouse.columns import split_type

UNKNOWN_FORMAT = 73

ALIASES = {
    "TSV": "TabSeparated",
    "TSVWithNames": "TabSeparatedWithNames",
    "TSVWithNamesAndTypes": "TabSeparatedWithNamesAndTypes",
    "TSVRaw": "TabSeparatedRaw",
}
FORMATS = (
    "JSONEachRow",
    "JSONCompactEachRow",
    "JSON",
    "TabSeparated",
    "TabSeparatedWithNames",
    "TabSeparatedWithNamesAndTypes",
    "TabSeparatedRaw",
    "CSV",
    "CSVWithNames",
)


class UnsupportedFormat(ValueError):
    code = UNKNOWN_FORMAT


def render(
    fmt: str,
    rows: list[tuple],
    columns: list[tuple[str, str]],
    *,
    quote_64bit: bool = False,
    statistics: dict | None = None,
    rows_before_limit: int | None = None,
) -> bytes:
    """``rows`` (from clickhouse-driver) with ``columns`` [(name, type)] as ``fmt`` text."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise UnsupportedFormat(
            f"Code: {UNKNOWN_FORMAT}. the clickhouse store renders {', '.join(FORMATS)}; "
            f"query the server directly for {fmt}"
        )
    names = [n for n, _ in columns]
    if fmt.startswith("JSON"):
        values = [_json_renderer(t, quote_64bit) for _, t in columns]
        cells = [[r(v) for r, v in zip(values, row, strict=True)] for row in rows]
        if fmt == "JSONEachRow":
            keys = [_json_text(n) for n in names]
            lines = [
                "{" + ",".join(f"{k}:{c}" for k, c in zip(keys, cs, strict=True)) + "}"
                for cs in cells
            ]
            return "".join(line + "\n" for line in lines).encode()
        if fmt == "JSONCompactEachRow":
            return "".join("[" + ", ".join(cs) + "]\n" for cs in cells).encode()
        return _json_document(columns, cells, statistics or {}, rows_before_limit).encode()
    if fmt.startswith("CSV"):
        values = [_csv_renderer(t) for _, t in columns]
        lines = [",".join(r(v) for r, v in zip(values, row, strict=True)) for row in rows]
        if fmt == "CSVWithNames":
            lines.insert(0, ",".join(_csv_string(n) for n in names))
        return "".join(line + "\n" for line in lines).encode()
    raw = fmt == "TabSeparatedRaw"
    values = [_tsv_renderer(t, raw) for _, t in columns]
    lines = ["\t".join(r(v) for r, v in zip(values, row, strict=True)) for row in rows]
    if fmt in ("TabSeparatedWithNames", "TabSeparatedWithNamesAndTypes"):
        header = ["\t".join(_escape(n) for n in names)]
        if fmt.endswith("Types"):
            header.append("\t".join(_escape(t) for _, t in columns))
        lines = header + lines
    return "".join(line + "\n" for line in lines).encode()


# -- the base type of a column ----------------------------------------------------------------


def _unwrap(spec: str) -> tuple[str, list[str]]:
    name, args = split_type(spec)
    while name in ("Nullable", "LowCardinality", "SimpleAggregateFunction"):
        name, args = split_type(args[-1])
    return name, args


def _scale(spec: str) -> int | None:
    """Fraction digits of a DateTime64 type, None for other types."""
    name, args = _unwrap(spec)
    return int(args[0]) if name == "DateTime64" and args else None


# -- scalars as ClickHouse writes them ---------------------------------------------------------


def number(value: float, float32: bool = False) -> str:
    """A float the way ClickHouse writes it: shortest digits, exponent below 1e-7 / from 1e21."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    text = _shortest32(value) if float32 else repr(value)
    sign, digits, exponent = decimal.Decimal(text).normalize().as_tuple()
    ds = "".join(map(str, digits))
    assert isinstance(exponent, int)  # a finite value (nan and inf are answered above)
    point = len(ds) + exponent  # digits before the decimal point
    if len(ds) <= point <= 21:
        body = ds + "0" * (point - len(ds))
    elif 0 < point <= 21:
        body = ds[:point] + "." + ds[point:]
    elif -6 < point <= 0:
        body = "0." + "0" * -point + ds
    else:
        mantissa = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        body = f"{mantissa}e{point - 1}"
    return ("-" if sign else "") + body


def _shortest32(value: float) -> str:
    packed = struct.pack("<f", value)
    for precision in range(1, 10):
        text = f"{value:.{precision}g}"
        if struct.pack("<f", float(text)) == packed:
            return text
    return repr(value)


def _datetime_text(value: datetime.datetime, scale: int | None) -> str:
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if scale:
        text += "." + f"{value.microsecond:06d}{'0' * max(0, scale - 6)}"[:scale]
    return text


def _plain(value: Any, spec: str) -> str | None:
    """Text of values written the same in every format (dates, UUIDs, IPs), else None."""
    if isinstance(value, datetime.datetime):
        return _datetime_text(value, _scale(spec))
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    return None


def _scalar(value: Any, spec: str) -> str | None:
    """Numbers and booleans (unquoted in every format), else None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number(value, _unwrap(spec)[0] == "Float32")
    if isinstance(value, decimal.Decimal):
        return str(value)
    return None


# -- JSON --------------------------------------------------------------------------------------


def _json_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("/", "\\/")


def _json_renderer(spec: str, quote_64bit: bool) -> Callable[[Any], str]:
    name, args = _unwrap(spec)
    quoted = quote_64bit and name in ("Int64", "UInt64", "Int128", "UInt128", "Int256", "UInt256")
    if name == "Tuple":
        element_types = [a.split(" ")[-1] for a in args]  # named tuples: "name Type"
    elif name == "Array" and args:
        element_types = [args[0]]
    else:
        element_types = []
    elements = [_json_renderer(t, quote_64bit) for t in element_types]

    def render_value(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, list | tuple):
            if name == "Tuple" and len(elements) == len(v):
                return "[" + ",".join(r(x) for r, x in zip(elements, v, strict=True)) + "]"
            element = elements[0] if name == "Array" and elements else _json_any
            return "[" + ",".join(element(x) for x in v) + "]"
        if isinstance(v, dict):
            return (
                "{" + ",".join(f"{_json_text(str(k))}:{_json_any(x)}" for k, x in v.items()) + "}"
            )
        if isinstance(v, float) and not math.isfinite(v):
            return "null"
        scalar = _scalar(v, spec)
        if scalar is not None:
            return f'"{scalar}"' if quoted and not isinstance(v, bool) else scalar
        plain = _plain(v, spec)
        if plain is not None:
            return _json_text(plain)
        return _json_text(_text(v))

    return render_value


def _json_any(v: Any) -> str:
    return _json_renderer("", False)(v)


def _json_document(
    columns: list[tuple[str, str]], cells: list[list[str]], stats: dict, before_limit: int | None
) -> str:
    """The ``JSON`` format, laid out as ClickHouse lays it out."""
    meta = ",\n".join(
        f'\t\t{{\n\t\t\t"name": {_json_text(n)},\n\t\t\t"type": {_json_text(t)}\n\t\t}}'
        for n, t in columns
    )
    keys = [_json_text(n) for n, _ in columns]
    data = ",\n".join(
        "\t\t{\n" + ",\n".join(f"\t\t\t{k}: {c}" for k, c in zip(keys, cs, strict=True)) + "\n\t\t}"
        for cs in cells
    )
    statistics = ",\n".join(f'\t\t"{k}": {v}' for k, v in stats.items())
    return (
        '{\n\t"meta":\n\t[\n' + meta + '\n\t],\n\n\t"data":\n\t[\n' + data + "\n\t],\n\n"
        f'\t"rows": {len(cells)},\n\n'
        + ("" if before_limit is None else f'\t"rows_before_limit_at_least": {before_limit},\n\n')
        + f'\t"statistics":\n\t{{\n{statistics}\n\t}}\n}}\n'
    )


# -- TabSeparated and CSV ------------------------------------------------------------------------

_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        "\t": "\\t",
        "\n": "\\n",
        "'": "\\'",
        "\b": "\\b",
        "\f": "\\f",
        "\r": "\\r",
        "\0": "\\0",
    }
)


def _escape(text: str) -> str:
    return text.translate(_ESCAPES)


def _quoted(v: Any, spec: str) -> str:
    """A value inside an array, tuple or map: strings, dates and UUIDs in single quotes."""
    if v is None:
        return "NULL"
    name, args = _unwrap(spec)
    if isinstance(v, list):
        inner = args[0] if name == "Array" and args else ""
        return "[" + ",".join(_quoted(x, inner) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ",".join(_quoted(x, "") for x in v) + ")"
    if isinstance(v, dict):
        return "{" + ",".join(f"{_quoted(k, '')}:{_quoted(x, '')}" for k, x in v.items()) + "}"
    scalar = _scalar(v, spec)
    if scalar is not None:
        return scalar
    plain = _plain(v, spec)
    text = plain if plain is not None else _text(v)
    return "'" + _escape(text) + "'"


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _tsv_renderer(spec: str, raw: bool) -> Callable[[Any], str]:
    def render_value(v: Any) -> str:
        if v is None:
            return "\\N"
        if isinstance(v, list | tuple | dict):
            return _quoted(v, spec)  # escaped once, inside its quotes
        scalar = _scalar(v, spec)
        if scalar is not None:
            return scalar
        plain = _plain(v, spec)
        text = plain if plain is not None else _text(v)
        return text if raw else _escape(text)

    return render_value


def _csv_string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _csv_renderer(spec: str) -> Callable[[Any], str]:
    def render_value(v: Any) -> str:
        if v is None:
            return "\\N"
        if isinstance(v, list | tuple | dict):
            return _csv_string(_quoted(v, spec))
        scalar = _scalar(v, spec)
        if scalar is not None:
            return scalar
        plain = _plain(v, spec)
        return _csv_string(plain if plain is not None else _text(v))

    return render_value
