"""The tracker's ClickHouse-flavoured reads in DuckDB's words, and ClickHouse's output formats.

The gateway's own reads (short links, accounts, ``/ppi/agree``, ``/ppi/jds``) are written for
ClickHouse. What they use beyond standard SQL is small, so it is bridged here rather than
written twice: ``FINAL`` is dropped (a DuckDB table is always what ``FINAL`` reads, see
``schema.py``), ``{name:Type}`` parameters become DuckDB's ``$name`` cast to the type (an
``IN {x:Array(T)}`` an ``IN (SELECT unnest(...))``), and the ClickHouse functions they call
(``toString``, ``toUnixTimestamp64Milli``, ``uniqExact``, ...) are macros in the store's file
(``schema.MACROS``). Answers come back in the ClickHouse formats the callers parse
(``JSONEachRow``, ``TabSeparated``) and the query listener offers.
"""

from __future__ import annotations

import ast
import csv
import datetime
import decimal
import io
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

from sfpltracker.store.duckdb.schema import duck_type

_PARAM = re.compile(r"(\bIN\s+)?\{(\w+):([^{}]+)\}", re.IGNORECASE)
_FINAL = re.compile(r"(?<=\w)\s+FINAL\b", re.IGNORECASE)
_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)


def translate(sql: str, params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``(DuckDB SQL, its parameters)`` for a ClickHouse read of the tracker."""
    values: dict[str, Any] = {}
    params = params or {}

    def bind(m: re.Match) -> str:
        within, name, ch_type = m.group(1), m.group(2), m.group(3).strip()
        value = params[name]
        if ch_type.startswith("Array("):
            if isinstance(value, str):  # the ClickHouse array literal callers build
                value = list(ast.literal_eval(value))
            values[name] = [str(v) for v in value]
            element = duck_type(ch_type[6:-1])
            cast = f"CAST(${name} AS {element}[])"
            return f"IN (SELECT unnest({cast}))" if within else cast
        values[name] = value
        return f"{within or ''}CAST(${name} AS {duck_type(ch_type)})"

    sql = _PARAM.sub(bind, sql)
    return _FINAL.sub("", sql), values


def without_final(sql: str) -> str:
    return _FINAL.sub("", sql)


def split_format(sql: str) -> tuple[str, str | None]:
    """A trailing ``FORMAT name`` (ClickHouse's way to ask for a format) taken off the query."""
    m = _FORMAT.search(sql)
    if m is None:
        return sql, None
    return sql[: m.start()], m.group(1)


# -- values as ClickHouse writes them ------------------------------------------------------------


def _json_value(value: Any, is_json: bool) -> Any:
    if value is None:
        return None
    if is_json and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v, False) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v, False) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime.timedelta):
        return str(value)
    return value


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def _text(value: Any, quoted: bool = False) -> str:
    """A value as ClickHouse's text formats write it (arrays as ``['a','b']``)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v, True) for v in value) + "]"
    v = _json_value(value, False)
    if isinstance(v, (dict, list)):
        v = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    text = str(v)
    if quoted and isinstance(v, str):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def _tsv(value: Any) -> str:
    return "\\N" if value is None else _text(value).translate(_TSV_ESCAPES)


class TooBig(Exception):
    """The answer passed ``max_result_bytes``."""


class Output:
    """Rows written in one format, counting bytes against a limit as they are written."""

    def __init__(self, fmt: str, names: list[str], json_columns: set[int], limit: int = 0):
        self.fmt, self.names, self.json_columns, self.limit = fmt, names, json_columns, limit
        self.parts: list[bytes] = []
        self.size = 0
        self.rows = 0

    def _add(self, data: str | bytes) -> None:
        b = data.encode() if isinstance(data, str) else data
        self.size += len(b)
        if self.limit and self.size > self.limit:
            raise TooBig(f"the answer is larger than max_result_bytes ({self.limit})")
        self.parts.append(b)

    def _obj(self, row) -> dict:
        return {
            n: _json_value(v, i in self.json_columns)
            for i, (n, v) in enumerate(zip(self.names, row, strict=True))
        }

    def write(self, rows: Iterable[tuple]) -> None:
        f = self.fmt
        for row in rows:
            self.rows += 1
            if f == "JSONEachRow":
                self._add(json.dumps(self._obj(row), ensure_ascii=False) + "\n")
            elif f == "JSONCompactEachRow":
                self._add(json.dumps(list(self._obj(row).values()), ensure_ascii=False) + "\n")
            elif f in ("TabSeparated", "TSV", "TabSeparatedWithNames", "TSVWithNames"):
                self._add("\t".join(_tsv(v) for v in row) + "\n")
            elif f in ("CSV", "CSVWithNames"):
                out = io.StringIO()
                csv.writer(out, lineterminator="\n").writerow([_text(v) for v in row])
                self._add(out.getvalue())
            elif f in ("JSON", "JSONCompact") or f.startswith("Pretty"):
                self._buffered.append(row)
            else:
                raise ValueError(f)

    _buffered: list[tuple]

    def begin(self) -> None:
        self._buffered = []
        if self.fmt in ("TabSeparatedWithNames", "TSVWithNames"):
            self._add("\t".join(self.names) + "\n")
        elif self.fmt == "CSVWithNames":
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerow(self.names)
            self._add(out.getvalue())

    def end(self) -> bytes:
        if self.fmt in ("JSON", "JSONCompact"):
            data = [
                self._obj(r) if self.fmt == "JSON" else list(self._obj(r).values())
                for r in self._buffered
            ]
            doc = {
                "meta": [{"name": n} for n in self.names],
                "data": data,
                "rows": len(data),
            }
            self._add(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        elif self.fmt.startswith("Pretty"):
            cells = [[_text(v) for v in r] for r in self._buffered]
            widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(self.names)]
            line = "+" + "+".join("-" * (w + 2) for w in widths) + "+\n"
            out = [
                line,
                "| "
                + " | ".join(n.ljust(w) for n, w in zip(self.names, widths, strict=True))
                + " |\n",
                line,
            ]
            for c in cells:
                out.append(
                    "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |\n"
                )
            out.append(line)
            self._add("".join(out))
        return b"".join(self.parts)


TEXT_FORMATS = frozenset(
    {
        "JSONEachRow",
        "JSONCompactEachRow",
        "TabSeparated",
        "TSV",
        "TabSeparatedWithNames",
        "TSVWithNames",
        "CSV",
        "CSVWithNames",
        "JSON",
        "JSONCompact",
        "Pretty",
        "PrettyCompact",
        "PrettyCompactMonoBlock",
        "PrettySpace",
    }
)
ARROW_FORMATS = frozenset({"Parquet", "Arrow", "ArrowStream"})
FORMATS = TEXT_FORMATS | ARROW_FORMATS
