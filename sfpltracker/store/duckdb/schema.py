"""The ``schema/`` files as DuckDB statements: the same tables, the derived ones as views.

The ClickHouse files stay the one source of the tables and their columns: each ``CREATE
TABLE`` is read here and written again in DuckDB's types (``duck_type``), with every column
``NOT NULL`` and ClickHouse's default for its type (so a row that leaves a column out reads
as it does in ClickHouse: ``''``, the zero UUID, 0, epoch 0, ``{}``), and a primary key that
does what the ClickHouse engine does to a replayed or newer row at once rather than at merge
time (``table_key``):

- a table with a dedup key (``store.dedup.DEDUP_KEYS``: events.eid, payments.id, agreed.id,
  logs.id) keys on it and keeps the row stored first (``ON CONFLICT DO NOTHING``): a replay
  never doubles a row, whatever path it came by;
- another ``ReplacingMergeTree(ver)`` keys on its ``ORDER BY`` columns and keeps the row with
  the highest ``ver`` (the newest if equal): what ``FINAL`` reads in ClickHouse (accounts,
  redirects, jurisdictions, messaging, orgs, updates); without ``ver``, the newest insert.

So ``FINAL`` is what a DuckDB table always holds, and a query's ``FINAL`` is dropped
(``dialect.py``). The tables ClickHouse fills by materialized views (hits, visitors, ltv,
agreements, ...) and the plain views are views here, written in DuckDB SQL in ``views.sql``:
computed from the source table at read time, they count every stored row exactly once with
nothing to keep in step on insert (docs/duckdb.md, "Derived tables: views"). ``counters`` is
also written by the NATS consumer: its rows go to ``counters_consumed``, and the view adds the
gateway's own ``vids_created`` from ``events``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sfpltracker.store.dedup import DEDUP_KEYS
from sfpltracker.store.schema import (
    DEFAULT_DATABASE,
    Statement,
    load_statements,
    split_top_level,
)

VIEWS_FILE = Path(__file__).with_name("views.sql")
TOKENS_TABLE = "_sfpl_insert_tokens"  # insert tokens, committed with the rows they stored
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
# Tables the gateway inserts into under one name whose rows live in another here.
INSERT_TABLES = {"counters": "counters_consumed"}

_SCALARS = {
    "String": "VARCHAR",
    "FixedString": "VARCHAR",
    "UUID": "UUID",
    "Int8": "TINYINT",
    "Int16": "SMALLINT",
    "Int32": "INTEGER",
    "Int64": "BIGINT",
    "UInt8": "UTINYINT",
    "UInt16": "USMALLINT",
    "UInt32": "UINTEGER",
    "UInt64": "UBIGINT",
    "Float32": "FLOAT",
    "Float64": "DOUBLE",
    "Bool": "BOOLEAN",
    "Date": "DATE",
    "Date32": "DATE",
    "IPv4": "VARCHAR",
    "IPv6": "VARCHAR",
}
# What a ClickHouse column holds when a row does not set it.
_DEFAULTS = {
    "VARCHAR": "''",
    "UUID": f"'{ZERO_UUID}'::UUID",
    "BOOLEAN": "false",
    "DATE": "DATE '1970-01-01'",
    "TIMESTAMP": "TIMESTAMP '1970-01-01 00:00:00'",
    "JSON": "'{}'::JSON",
}


def duck_type(ch_type: str) -> str:
    """A ClickHouse column type in DuckDB's types (``Array(UUID)`` -> ``UUID[]``)."""
    t = ch_type.strip()
    for wrapper in ("LowCardinality(", "Nullable("):
        if t.startswith(wrapper):
            return duck_type(t[len(wrapper) : -1])
    if t.startswith("Array("):
        return duck_type(t[6:-1]) + "[]"
    if t.startswith("SimpleAggregateFunction("):
        return duck_type(split_top_level(t[len("SimpleAggregateFunction(") : -1])[1])
    if t.startswith("DateTime"):
        return "TIMESTAMP"  # UTC, to the microsecond (DateTime64(3) holds milliseconds)
    if t.startswith("JSON") or t.startswith("Object("):
        return "JSON"
    if t.startswith(("Decimal", "Float")):
        return "DOUBLE" if t != "Float32" else "FLOAT"
    if t.startswith("Enum"):
        return "VARCHAR"
    base = t.split("(", 1)[0]
    return _SCALARS.get(base, "VARCHAR")


def default_of(duck: str) -> str:
    if duck.endswith("[]"):
        return f"[]::{duck}"
    return _DEFAULTS.get(duck, "0")


@dataclass
class Column:
    name: str
    type: str  # DuckDB's
    default: str  # a DuckDB expression


@dataclass
class Table:
    name: str
    columns: list[Column]
    key: list[str] = field(default_factory=list)
    version: str | None = None  # ReplacingMergeTree(ver)
    keep_first: bool = False  # a dedup key: a replayed row is dropped, not replacing

    def ddl(self, database: str) -> str:
        cols = [f'"{c.name}" {c.type} NOT NULL DEFAULT {c.default}' for c in self.columns]
        if self.key:
            cols.append("PRIMARY KEY (" + ", ".join(f'"{k}"' for k in self.key) + ")")
        body = ",\n    ".join(cols)
        return f'CREATE TABLE IF NOT EXISTS {database}."{self.name}" (\n    {body}\n)'


def _body(sql: str) -> str:
    """The column list of a ``CREATE TABLE ... ( ... )``."""
    start = sql.index("(")
    depth = 0
    for i in range(start, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if depth == 0:
                return sql[start + 1 : i]
    raise ValueError(f"unbalanced CREATE TABLE: {sql[:80]}")


_DEFAULT = re.compile(r"\s+DEFAULT\s+(.+)$", re.IGNORECASE | re.DOTALL)
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w+)(?:\(([^)]*)\))?", re.IGNORECASE)
_ORDER = re.compile(r"ORDER BY\s+(\([^;]*?\)|\S+)\s*(?:SETTINGS|PARTITION|PRIMARY|$)", re.I | re.S)
_TARGET = re.compile(r"\bTO\s+\w+\.(\w+)", re.IGNORECASE)


def _columns(sql: str) -> list[Column]:
    out = []
    for item in split_top_level(_body(sql)):
        head = item.split(None, 1)
        if not head or head[0].upper() in ("INDEX", "PROJECTION", "CONSTRAINT"):
            continue
        name, rest = head[0].strip("`"), head[1]
        default = None
        m = _DEFAULT.search(rest)
        if m:
            default, rest = m.group(1).strip(), rest[: m.start()]
        duck = duck_type(rest)
        out.append(Column(name, duck, default if default is not None else default_of(duck)))
    return out


def table_of(statement: Statement, known: dict[str, Table]) -> Table:
    """The DuckDB table of a ClickHouse ``CREATE TABLE`` (``AS other``: other's columns)."""
    name = statement.name or ""
    copy = re.search(r"\bAS\s+\w+\.(\w+)\s+ENGINE\b", statement.sql, re.IGNORECASE)
    columns = list(known[copy.group(1)].columns) if copy else _columns(statement.sql)
    engine = _ENGINE.search(statement.sql)
    kind, arg = (engine.group(1), (engine.group(2) or "").strip()) if engine else ("", "")
    table = Table(name, columns)
    if name in DEDUP_KEYS:
        table.key, table.keep_first = [DEDUP_KEYS[name]], True
    elif kind == "ReplacingMergeTree":
        order = _ORDER.search(statement.sql)
        key = order.group(1).strip("()") if order else ""
        names = {c.name for c in columns}
        parts = [p.strip().strip("`") for p in split_top_level(key)]
        if parts and all(p in names for p in parts):
            table.key = parts
            table.version = arg or None
    return table


@dataclass
class DuckSchema:
    """What ``load`` runs: tables (with keys), column additions, the views and the seed."""

    tables: dict[str, Table]
    statements: list[tuple[str, str]]  # (what, sql), in order


def build(database: str = DEFAULT_DATABASE) -> DuckSchema:
    statements = load_statements(DEFAULT_DATABASE)
    targets = {
        m.group(1)
        for s in statements
        if s.kind == "materialized_view" and (m := _TARGET.search(s.sql))
    }
    tables: dict[str, Table] = {}
    out: list[tuple[str, str]] = [("schema", f"CREATE SCHEMA IF NOT EXISTS {database}.main")]
    for s in statements:
        if s.kind == "table" and s.name:
            table = table_of(s, tables)
            tables[table.name] = table
            if table.name not in targets:
                out.append((s.file, table.ddl(database)))
        elif s.kind == "other" and (m := re.match(
            r"ALTER TABLE \w+\.(\w+) ADD COLUMN IF NOT EXISTS (\w+) (.+)$", s.sql.strip(), re.S
        )):  # fmt: skip
            duck = duck_type(m.group(3))
            out.append((s.file, (
                f'ALTER TABLE {database}."{m.group(1)}" ADD COLUMN IF NOT EXISTS "{m.group(2)}" '
                f"{duck} DEFAULT {default_of(duck)}"
            )))  # fmt: skip
        elif s.kind == "insert":
            out.append((s.file, seed(s.sql, database)))
    for sql in _views_sql(database):
        out.append((VIEWS_FILE.name, sql))
    out.append((
        "tokens",
        f"CREATE TABLE IF NOT EXISTS {database}.{TOKENS_TABLE} (token VARCHAR PRIMARY KEY, "
        "tbl VARCHAR NOT NULL, stored BIGINT NOT NULL, seq BIGINT NOT NULL)",
    ))  # fmt: skip
    kept = {n: t for n, t in tables.items() if n not in targets}
    return DuckSchema(kept, out)


def _views_sql(database: str) -> list[str]:
    text = VIEWS_FILE.read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    parts = [p.strip() for p in "\n".join(lines).split(";\n")]
    return [p.rstrip(";").replace("sfpla.", f"{database}.") for p in parts if p.strip()]


def seed(sql: str, database: str) -> str:
    """The jurisdictions seed (``INSERT ... SELECT ... WHERE NOT IN``) in DuckDB's words."""
    sql = sql.replace("CAST([], 'Array(String)')", "[]::VARCHAR[]")
    sql = re.sub(r"toUInt32\((\d+)\)", r"\1::UINTEGER", sql)
    sql = re.sub(r"toDateTime64\(('[^']*'), 3, 'UTC'\)", r"\1::TIMESTAMP", sql)
    return sql.replace(f"{DEFAULT_DATABASE}.", f"{database}.")


# ClickHouse functions the tracker's own reads use (and people coming from ClickHouse type),
# as DuckDB macros kept in the store's file, so those reads run unchanged.
MACROS = [
    "toString(x) AS CAST(x AS VARCHAR)",
    "toUnixTimestamp64Milli(x) AS coalesce(epoch_ms(x), 0)",
    "toFloat64(x) AS CAST(x AS DOUBLE)",
    "toInt64(x) AS CAST(x AS BIGINT)",
    "toUInt64(x) AS CAST(x AS UBIGINT)",
    "toUUID(x) AS CAST(x AS UUID)",
    "toDate(x) AS CAST(x AS DATE)",
    "uniqExact(x) AS count(DISTINCT x)",
    "countIf(x) AS count_if(x)",
    "sumIf(x, c) AS sum(x) FILTER (WHERE c)",
]


def macros(database: str) -> list[str]:
    return [f"CREATE OR REPLACE MACRO {database}.main.{m}" for m in MACROS]
