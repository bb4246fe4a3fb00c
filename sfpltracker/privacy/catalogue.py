"""What the store holds, read from ClickHouse's own catalogue, and the SQL that changes it.

Prune and forget work from ``system.tables``/``system.columns`` rather than a fixed list, so a
table another feature adds later (messaging, logs, ...) is covered by the same rules as soon as
it has the columns they look for (``vid``, ``uid``, ``created_at``, ...). The SQL is plain
ClickHouse (``ALTER TABLE ... DELETE``: a mutation that rewrites the affected parts, so the rows
are physically gone, not just hidden), run on the store's writer, so the embedded store and a
ClickHouse server run the same statements.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from twisted.internet import defer, task

from sfpltracker.store.interface import database_of

# Configuration tables: never pruned, never searched for a subject (short links, credentials,
# the jurisdictions themselves).
KEEP_TABLES = frozenset(
    {"jurisdictions", "redirects", "redirect_history", "accounts", "orgs", "sequences", "zips"}
)
# Tables of operational logs: what ``prune --logs-only`` touches.
LOG_TABLES = frozenset({"logs"})
# The column that dates a row, in order of preference.
TIME_COLUMNS = ("created_at", "ldate", "date", "day", "created", "last_seen", "updated_at")

_EHASH = re.compile(r"^[A-Za-z0-9_\-+/=]{1,128}$")


@dataclass
class Table:
    name: str
    engine: str
    columns: dict[str, str] = field(default_factory=dict)  # name -> ClickHouse type

    def has(self, *names: str) -> bool:
        return all(n in self.columns for n in names)

    @property
    def time_column(self) -> str | None:
        for name in TIME_COLUMNS:
            kind = self.columns.get(name, "")
            if "Date" in kind:
                return name
        return None

    @property
    def final(self) -> str:
        """``FINAL`` where the engine collapses rows (Replacing/Summing/Aggregating)."""
        return (
            " FINAL"
            if re.search(r"(Replacing|Summing|Aggregating|Collapsing)", self.engine)
            else ""
        )


def refuse_duckdb(store) -> None:
    """These commands read ClickHouse's catalogue and delete with ClickHouse mutations: on the
    DuckDB store an ``AdminError`` saying so (docs/duckdb.md)."""
    if getattr(store, "kind", "") == "duckdb":
        from sfpltracker.admin import AdminError

        raise AdminError(
            "prune, forget, export-subject and export run on ClickHouse stores only; on the "
            "DuckDB store use DuckDB SQL on the file (docs/duckdb.md)"
        )


@defer.inlineCallbacks
def read_catalogue(store):
    """``{name: Table}`` of the data tables of the store's database (no views)."""
    refuse_duckdb(store)
    db = database_of(store)
    raw = yield store.query(
        "SELECT t.name AS table, t.engine AS engine, c.name AS column, c.type AS type "
        "FROM system.tables AS t INNER JOIN system.columns AS c "
        "ON c.database = t.database AND c.table = t.name "
        "WHERE t.database = {db:String} AND t.engine LIKE '%MergeTree%' "
        "ORDER BY t.name, c.position",
        "JSONEachRow",
        params={"db": db},
    )
    tables: dict[str, Table] = {}
    for line in raw.decode().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        t = tables.setdefault(rec["table"], Table(rec["table"], rec["engine"]))
        t.columns[rec["column"]] = rec["type"]
    return tables


# -- literals (identifiers are validated before they reach SQL) ------------------------------


def uuid_list(values) -> str:
    return ", ".join(f"toUUID('{v}')" for v in sorted(values))


def string_list(values) -> str:
    return ", ".join(
        "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in sorted(values)
    )


def valid_ehash(value: str) -> bool:
    return bool(_EHASH.match(value))


def time_literal(column_type: str, epoch_ms: int) -> str:
    """A literal comparable with a column of ``column_type`` for the instant ``epoch_ms``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch_ms // 1000))
    if "DateTime64" in column_type:
        return f"toDateTime64('{stamp}.{epoch_ms % 1000:03d}', 3, 'UTC')"
    if "DateTime" in column_type:
        return f"toDateTime('{stamp}', 'UTC')"
    return f"toDate('{stamp[:10]}')"


# -- running statements ------------------------------------------------------------------------


@defer.inlineCallbacks
def count(store, table: Table, where: str):
    db = database_of(store)
    raw = yield store.query(
        f"SELECT count() FROM {db}.`{table.name}` WHERE {where}", "TabSeparated"
    )
    return int(raw.decode().strip() or 0)


@defer.inlineCallbacks
def mutate(store, table: Table, action: str, where: str, reactor=None, timeout: float = 3600):
    """``ALTER TABLE ... <action> WHERE ...`` on the writer, waiting until it is applied.

    ``action`` is ``DELETE`` or ``UPDATE col = value``. ``mutations_sync = 2`` makes the
    statement wait where the server supports it; the ``system.mutations`` poll covers servers
    that run mutations in the background anyway.
    """
    db = database_of(store)
    cluster = store.cluster
    on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
    yield store.execute(
        f"ALTER TABLE {db}.`{table.name}`{on_cluster} {action} WHERE {where} "
        "SETTINGS mutations_sync = 2"
    )
    if reactor is None:
        from twisted.internet import reactor
    deadline = time.monotonic() + timeout
    while True:
        raw = yield store.query(
            "SELECT count(), any(latest_fail_reason) FROM system.mutations "
            "WHERE database = {db:String} AND table = {t:String} AND is_done = 0",
            "TabSeparated",
            params={"db": db, "t": table.name},
        )
        pending, _, reason = raw.decode().strip().partition("\t")
        if int(pending or 0) == 0:
            return
        if reason:
            raise RuntimeError(f"mutation on {table.name} failed: {reason}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mutation on {table.name} still running after {timeout:.0f} s")
        yield task.deferLater(reactor, 0.2, lambda: None)


ZERO_REF = "toUUID('00000000-0000-0000-0000-000000000000')"
