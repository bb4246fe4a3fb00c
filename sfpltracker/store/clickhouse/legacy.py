"""The gateway's own reads on a ClickHouse server older than the packaged schema needs.

The packaged schema requires ClickHouse 25.3 and the store refuses older servers, so in
production this module does nothing. A schema downgraded for an older server
(``SFPL_SCHEMA_DIR``; the tests run Debian's 18.16 with ``tests/clickhouse_legacy.py``) gets
past that check, and then two things the gateway's reads use are missing on the server:

* query parameters (``{name:Type}``) in the native protocol (protocol revision 54459): they are
  bound here, on the client, each value as a literal of its declared type (strings escaped;
  UUIDs as text, which the server converts where it compares; an array after ``IN`` as a
  tuple, because these servers take no array there);
* ``DateTime64`` and ``toUnixTimestamp64Milli`` (ClickHouse 20.x): the downgraded schema has
  ``DateTime`` columns, whose epoch seconds times 1000 is the same number.

So the features that read through the store (short links, accounts, privacy) run unchanged on
such a server, which is how two gateways sharing one server are tested here.
"""

from __future__ import annotations

import re
from typing import Any

from sfpltracker.store.errors import StoreError

PARAMETERS_REVISION = 54459  # clickhouse_driver.defines.DBMS_MIN_PROTOCOL_VERSION_WITH_PARAMETERS
DATETIME64_VERSION = (20, 1)

_PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+)\}")
_INTEGER = re.compile(r"U?Int(8|16|32|64|128|256)")
_ARRAY_ITEM = re.compile(r"'(?:[^'\\]|\\.)*'|-?\d+")  # a quoted string or an integer
_BEFORE_IN = re.compile(r"\bIN\s*$", re.IGNORECASE)
_MILLI = "toUnixTimestamp64Milli("


class LegacyDialect:
    """Rewrites a read for a server of ``version`` speaking protocol ``revision``."""

    def __init__(self, version: tuple[int, ...], revision: int):
        self.bind_parameters = revision < PARAMETERS_REVISION
        self.no_datetime64 = version < DATETIME64_VERSION

    @classmethod
    def needed(cls, version: tuple[int, ...], revision: int) -> LegacyDialect | None:
        dialect = cls(version, revision)
        return dialect if dialect.bind_parameters or dialect.no_datetime64 else None

    def adapt(self, sql: str, params: dict[str, Any] | None) -> tuple[str, dict | None]:
        """``(sql, params)`` to send: parameters bound into the text, functions replaced."""
        if self.no_datetime64:
            sql = epoch_milli_from_seconds(sql)
        if self.bind_parameters and params:
            return bind(sql, params), None
        return sql, params


def bind(sql: str, params: dict[str, Any]) -> str:
    """Replace every ``{name:Type}`` with a literal of ``Type`` holding ``params[name]``."""

    def literal(match: re.Match) -> str:
        name, ch_type = match.group(1), match.group(2).strip()
        if name not in params:
            raise StoreError(f"query parameter {name!r} is missing", 456)
        value = params[name]
        if _INTEGER.fullmatch(ch_type):
            try:
                return str(int(value))
            except (TypeError, ValueError):
                raise StoreError(f"query parameter {name!r}: not an integer", 457) from None
        if ch_type in ("String", "UUID"):
            return quote(value)
        if ch_type.startswith("Array(") and _BEFORE_IN.search(sql, 0, match.start()):
            return "(" + ", ".join(array_items(value)) + ")"
        return f"CAST({quote(value)} AS {ch_type})"  # the server parses the text as the type

    return _PLACEHOLDER.sub(literal, sql)


def array_items(value: Any) -> list[str]:
    """The literals of an array parameter: a Python sequence, or array text (``['a','b']``)."""
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [str(int(v)) if isinstance(v, int) else quote(v) for v in value]
    else:
        items = _ARRAY_ITEM.findall(str(value))
    return items or ["NULL"]  # `x IN (NULL)` matches nothing


def quote(value: Any) -> str:
    """A ClickHouse string literal."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def epoch_milli_from_seconds(sql: str) -> str:
    """``toUnixTimestamp64Milli(x)`` -> ``(1000 * toInt64(toUnixTimestamp(x)))``."""
    out, at = [], 0
    while (start := sql.find(_MILLI, at)) >= 0:
        depth, end = 1, start + len(_MILLI)
        while depth and end < len(sql):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            end += 1
        inner = epoch_milli_from_seconds(sql[start + len(_MILLI) : end - 1])
        out.append(f"{sql[at:start]}(1000 * toInt64(toUnixTimestamp({inner})))")
        at = end
    out.append(sql[at:])
    return "".join(out)
