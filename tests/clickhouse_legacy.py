"""The packaged schema, downgraded for Debian's clickhouse-server 18.16 (tests and benchmarks).

18.16 is a real server speaking the native protocol, but older than the schema's SQL: it has
no DateTime64, JSON, Bool, LowCardinality (without a setting), skipping indexes, codecs,
SimpleAggregateFunction or ``non_replicated_deduplication_window``. ``downgrade_schema(dir)``
writes a copy of ``schema/`` with each of those replaced by what 18.16 has (DateTime,
String ...), so the driver path (inserts, failover, outages, dead letters) is tested on tables
shaped like the real ones. The shipped schema itself is tested on chDB. Generated rather than
hand-copied, so a column added to ``events`` shows up here too.
"""

from __future__ import annotations

import re
from pathlib import Path

from sfpltracker.store.schema import SCHEMA_DIR, split_statements

LEGACY_VERSION = "18.16"

# (pattern, replacement) applied to every statement, in order.
_REWRITES = [
    (r"DateTime64\(\d+(?:,\s*'[^']*')?\)", "DateTime"),
    (r"now64\(\d+(?:,\s*'[^']*')?\)", "now()"),
    (r"toDateTime64\(('[^']*'),\s*\d+(?:,\s*('[^']*'))?\)", r"toDateTime(\1, \2)"),
    (r"LowCardinality\((\w+)\)", r"\1"),
    (r"\bBool\b", "UInt8"),
    (r"\s+CODEC\([^()]*\)", ""),  # column codecs came with 19.x
    (r"(?m)^(\s+\w+)\s+JSON(?:\([^)]*\))?(,?)$", r"\1 String\2"),  # JSON(max_dynamic_...) too
    (r"(?m)^\s+INDEX\s+.*$\n?", ""),
    (r",(\s*\n\))", r"\1"),  # the comma left before ")" by a removed INDEX line
    (r"\s*SETTINGS\s+non_replicated_deduplication_window\s*=\s*\d+", ""),
    (r"(ENGINE\s*=\s*\w*MergeTree)(\s*\n)", r"\1()\2"),  # 18.16 wants the parentheses
    (r"--\s*requires:\s*ClickHouse\s*>=\s*[\d.]+", f"-- requires: ClickHouse >= {LEGACY_VERSION}"),
]
# Statements 18.16 cannot run at all: tables of SimpleAggregateFunction columns and their views.
_UNSUPPORTED = re.compile(r"SimpleAggregateFunction")
# Upgrades of a table an older schema made (18.16 has no ADD COLUMN IF NOT EXISTS); the
# CREATE TABLE of a fresh schema already has those columns.
_UPGRADE = re.compile(r"ADD\s+COLUMN\s+IF\s+NOT\s+EXISTS", re.IGNORECASE)


def downgrade_statement(sql: str) -> str:
    for pattern, replacement in _REWRITES:
        sql = re.sub(pattern, replacement, sql)
    return sql


def downgrade_schema(destination: Path, source: Path = SCHEMA_DIR) -> Path:
    """Write the 18.16 form of every ``source`` file into ``destination``; returns it."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.sql")):
        text = path.read_text()
        header = "\n".join(
            downgrade_statement(line) for line in text.splitlines() if line.startswith("--")
        )
        statements = split_statements(text)
        dropped = {
            _created(s)
            for s in statements
            if s.upper().startswith("CREATE TABLE") and _UNSUPPORTED.search(s)
        }
        kept = [
            downgrade_statement(s)
            for s in statements
            if _created(s) not in dropped
            and not _UPGRADE.search(s)
            and not any(f".{t} " in s or s.endswith(f".{t}") for t in dropped)
        ]
        body = "".join(f"{s};\n\n" for s in kept)
        (destination / path.name).write_text(f"{header}\n\n{body}")
    return destination


def _created(sql: str) -> str:
    m = re.search(
        r"CREATE\s+(?:MATERIALIZED\s+VIEW|VIEW|TABLE)\s+(?:IF\s+NOT\s+EXISTS\s+)?\w+\.(\w+)", sql
    )
    return m.group(1) if m else ""
