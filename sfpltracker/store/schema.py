"""Reading the ``schema/`` files into statements a store executes.

The files are the single source of the schema. Stores differ only in how they run the
statements (chDB in-process, a ClickHouse server over the native protocol) and, for a cluster,
in how each statement is rewritten; both happen in the store, not here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
DEFAULT_DATABASE = "sfpla"

# The oldest ClickHouse a schema directory declares it runs on, as a comment in any file:
# ``-- requires: ClickHouse >= 25.3``. The loader of a server store refuses older servers.
_REQUIRES = re.compile(r"^--\s*requires:\s*ClickHouse\s*>=\s*(\d+(?:\.\d+)*)", re.MULTILINE)


def schema_dir() -> Path:
    """The packaged ``schema/``; ``SFPL_SCHEMA_DIR`` points elsewhere (tests on old servers)."""
    override = os.environ.get("SFPL_SCHEMA_DIR")
    return Path(override) if override else SCHEMA_DIR


def required_version(directory: Path | None = None) -> tuple[int, ...]:
    """The highest ``requires: ClickHouse >= X.Y`` of the schema files, () when none says."""
    found: list[tuple[int, ...]] = [()]
    for path in sorted((directory or schema_dir()).glob("*.sql")):
        for m in _REQUIRES.finditer(path.read_text()):
            found.append(tuple(int(p) for p in m.group(1).split(".")))
    return max(found)


def parse_version(text: str) -> tuple[int, ...]:
    """``"25.3.2.39"`` -> (25, 3, 2, 39); non-numeric suffixes are ignored."""
    parts = []
    for piece in text.strip().split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group(0)))
    return tuple(parts)


@dataclass(frozen=True)
class Statement:
    file: str
    sql: str

    @property
    def kind(self) -> str:
        """``database`` / ``table`` / ``view`` / ``materialized_view`` / ``insert`` / ``other``."""
        head = " ".join(self.sql.split()[:4]).upper()
        if head.startswith("CREATE DATABASE"):
            return "database"
        if head.startswith("CREATE MATERIALIZED VIEW"):
            return "materialized_view"
        if head.startswith("CREATE VIEW"):
            return "view"
        if head.startswith("CREATE TABLE"):
            return "table"
        if head.startswith("INSERT"):
            return "insert"
        return "other"

    @property
    def name(self) -> str | None:
        """The object the statement creates, without the database (``events``)."""
        m = re.search(
            r"\bCREATE\s+(?:MATERIALIZED\s+VIEW|VIEW|TABLE|DATABASE)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
            r"(?:\w+\.)?(\w+)",
            self.sql,
            re.IGNORECASE,
        )
        return m.group(1) if m else None


def _strip_comments(text: str) -> str:
    out = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("--"):
            continue
        out.append(line)
    return "\n".join(out)


def split_statements(text: str) -> list[str]:
    """Statements end with ``;`` at the end of a line (the convention of our schema files)."""
    statements, current = [], []
    for line in _strip_comments(text).splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            sql = "\n".join(current).strip().rstrip(";").strip()
            if sql:
                statements.append(sql)
            current = []
    rest = "\n".join(current).strip()
    if rest:
        statements.append(rest)
    return statements


def load_statements(
    database: str = DEFAULT_DATABASE, directory: Path | None = None
) -> list[Statement]:
    """Every statement of every ``*.sql`` file, in file-name order, for ``database``."""
    statements = []
    for path in sorted((directory or schema_dir()).glob("*.sql")):
        for sql in split_statements(path.read_text()):
            if database != DEFAULT_DATABASE:
                sql = re.sub(rf"\b{DEFAULT_DATABASE}\.", f"{database}.", sql)
                sql = re.sub(
                    rf"(CREATE DATABASE IF NOT EXISTS )\b{DEFAULT_DATABASE}\b",
                    rf"\g<1>{database}",
                    sql,
                )
            statements.append(Statement(path.name, sql))
    return statements


# ``dashboard rebuild`` (dashboard/rollups.py) builds ``<t>__rebuild`` and its view
# ``<t>_mv__rebuild`` and stops merges of ``events`` meanwhile.
REBUILD_SUFFIX = "__rebuild"


def interrupted_rebuild(database: str, table_names) -> list[str]:
    """Statements undoing what a rebuild stopped midway (the gateway killed) left: its view
    would fill a table no one reads on every insert, and on a ClickHouse server merges of
    ``events`` would stay stopped (parts pile up until inserts are refused). Empty when
    nothing was left."""
    left = [n for n in table_names if n.endswith(REBUILD_SUFFIX)]
    if not left:
        return []
    views = sorted(n for n in left if n.removesuffix(REBUILD_SUFFIX).endswith("_mv"))
    tables = sorted(set(left) - set(views))
    return (
        [f"DROP TABLE IF EXISTS {database}.{n}" for n in views + tables]
        + [f"SYSTEM START MERGES {database}.events"]
        + [
            f"SYSTEM START MERGES {database}.{n.removesuffix(REBUILD_SUFFIX)}"
            for n in tables
            if n.removesuffix(REBUILD_SUFFIX) in table_names
        ]
    )


JSON_BOUNDS = "(json bounds)"  # the ``file`` of the statements json_type_changes() makes
# A JSON column of a CREATE TABLE (one column per line, the convention of our schema files).
_JSON_COLUMN = re.compile(r"^\s+`?(\w+)`?\s+(JSON(?:\(.*\))?)\s*,?\s*$", re.MULTILINE)


_COPY_OF = re.compile(r"\bAS\s+\w+\.(\w+)\s+ENGINE\b", re.IGNORECASE)


def json_columns(statements: list[Statement]) -> dict[tuple[str, str], str]:
    """(table, column) -> declared type, for every JSON column the statements create
    (``CREATE TABLE t AS other``: other's columns)."""
    out: dict[tuple[str, str], str] = {}
    for s in statements:
        if s.kind != "table" or not s.name:
            continue
        copy_of = _COPY_OF.search(s.sql)
        if copy_of:
            for (table, column), declared in list(out.items()):
                if table == copy_of.group(1):
                    out[(s.name, column)] = declared
        for m in _JSON_COLUMN.finditer(s.sql):
            out[(s.name, m.group(1))] = m.group(2)
    return out


def canonical_json_type(text: str) -> str:
    """``JSON(max_dynamic_paths = 64, max_dynamic_types = 8)`` and ClickHouse's spelling of it
    (``JSON(max_dynamic_types=8, max_dynamic_paths=64)``) -> one text; ``JSON`` -> ``JSON()``."""
    compact = "".join(text.split())
    m = re.fullmatch(r"JSON(?:\((.*)\))?", compact)
    if not m:
        return compact
    return "JSON(" + ",".join(sorted(a for a in (m.group(1) or "").split(",") if a)) + ")"


def json_type_changes(
    statements: list[Statement], stored: dict[tuple[str, str], str], database: str
) -> list[Statement]:
    """``ALTER TABLE ... MODIFY COLUMN`` for each JSON column whose stored type is another JSON
    type than the schema declares (a table created by an older schema: ``params JSON`` before
    it was bounded, docs/resources.md). ``CREATE TABLE IF NOT EXISTS`` leaves such a table as it
    is; the ALTER changes its metadata at once and rewrites the existing parts in the
    background (a mutation). Only JSON to JSON: other type changes are not made behind the
    operator's back."""
    out = []
    for (table, column), declared in json_columns(statements).items():
        current = stored.get((table, column))
        if current is None or not current.startswith("JSON"):
            continue
        if canonical_json_type(current) != canonical_json_type(declared):
            out.append(
                Statement(
                    JSON_BOUNDS,
                    f"ALTER TABLE {database}.{table} MODIFY COLUMN {column} {declared}",
                )
            )
    return out


ENGINE_CHANGE = "(engine change)"  # the ``file`` of the statements engine_changes() makes
_ENGINE = re.compile(r"\bENGINE\s*=\s*(\w+)", re.IGNORECASE)
# Engine changes made for the operator: a table an older schema made with the first engine,
# declared now with the second. Rows are copied as they are (same columns, same sort key order
# or a longer one), so nothing is lost; any other change is left to the operator.
CONVERTIBLE = frozenset({("MergeTree", "ReplacingMergeTree")})


def engine_changes(
    statements: list[Statement], stored: dict[str, str], database: str
) -> list[Statement]:
    """The statements that rebuild a table whose stored engine (``stored``: table -> engine of
    ``system.tables``) is an older one the schema now declares otherwise (``redirect_history``
    was a MergeTree, which refuses ``FINAL``). ``CREATE TABLE IF NOT EXISTS`` keeps the old
    table; this copies its rows into the declared table and swaps the two atomically
    (``EXCHANGE TABLES``: an Atomic database, the default of chDB and ClickHouse >= 20.10)."""
    out = []
    for s in statements:
        if s.kind != "table" or not s.name:
            continue
        declared = _ENGINE.search(s.sql)
        current = stored.get(s.name)
        if not declared or current is None or (current, declared.group(1)) not in CONVERTIBLE:
            continue
        table, new = f"{database}.{s.name}", f"{database}.{s.name}__convert"
        create = re.sub(
            rf"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+{re.escape(table)}\b",
            f"CREATE TABLE {new}",
            s.sql,
            count=1,
        )
        out += [
            Statement(ENGINE_CHANGE, f"DROP TABLE IF EXISTS {new}"),
            Statement(ENGINE_CHANGE, create),
            Statement(ENGINE_CHANGE, f"INSERT INTO {new} SELECT * FROM {table}"),
            Statement(ENGINE_CHANGE, f"EXCHANGE TABLES {table} AND {new}"),
            Statement(ENGINE_CHANGE, f"DROP TABLE {new}"),
        ]
    return out


def cluster_engine_changes(
    statements: list[Statement], stored: dict[str, str], database: str, cluster: str
) -> dict[str, list[str]]:
    """On a cluster, the statements an operator runs to rebuild a ``<t>_local`` table an older
    schema made with an engine since changed (table -> statements; ``stored`` as for
    ``engine_changes``, Replicated engines compared without the prefix). Not run by the gateway:
    the copy must run once per shard on one replica while nothing writes the table, which
    several gateways starting at once cannot promise (docs/clickhouse.md)."""
    out = {}
    for s in statements:
        if s.kind != "table" or not s.name:
            continue
        declared = _ENGINE.search(s.sql)
        current = stored.get(s.name)
        if not declared or current is None:
            continue
        pair = (current.removeprefix("Replicated"), declared.group(1).removeprefix("Replicated"))
        if pair not in CONVERTIBLE:
            continue
        table, new = f"{database}.{s.name}", f"{database}.{s.name}__convert"
        on = f" ON CLUSTER '{cluster}'"
        create = re.sub(
            rf"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+{re.escape(table)}\b",
            f"CREATE TABLE {new}",
            s.sql,
            count=1,
        ).replace(f"/{s.name}'", f"/{s.name}__convert'")  # its own ZooKeeper path
        if on not in create:
            create = create.replace(f"CREATE TABLE {new}", f"CREATE TABLE {new}{on}", 1)
        out[s.name] = [
            create,
            f"INSERT INTO {new} SELECT * FROM {table}  -- on one replica of each shard",
            f"EXCHANGE TABLES {table} AND {new}{on}",
            f"DROP TABLE {new}{on} SYNC",
        ]
    return out


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses and quotes (a backslash escapes inside
    quotes), each part stripped, empty parts dropped: column lists, engine arguments, keys."""
    parts, depth, quote, current = [], 0, "", []
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and i + 1 < len(text):
                current.append(ch + text[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]
