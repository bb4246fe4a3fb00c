"""Cluster mode: the ``schema/`` statements rewritten for a ClickHouse cluster.

The schema files describe one server. With ``Cluster`` set, the loader turns each statement
into its cluster form, so there is still one schema to maintain:

* ``CREATE DATABASE`` gets ``ON CLUSTER``.
* A ``*MergeTree`` table ``db.t`` becomes ``db.t_local`` with the ``Replicated`` engine
  (ZooKeeper/Keeper path ``/clickhouse/tables/{shard}/<db>/t_local``, replica ``{replica}``:
  macros every node defines) plus ``db.t``, a ``Distributed`` table over ``t_local``. The
  gateway and every query keep using the public name ``t``.
* A materialized view reads and writes the *local* tables: ``FROM db.events`` becomes
  ``FROM db.events_local`` and ``TO db.hits`` becomes ``TO db.hits_local``. Why: an insert into
  the Distributed ``events`` is forwarded to one replica of one shard, as an insert into its
  ``events_local``; the view fires there, exactly once per row, and writes that shard's
  ``hits_local``, which replication copies to the other replicas (a replica that fetches a part
  does not fire views). So each row is derived once, on the shard that stores it; the
  Distributed ``hits`` reads every shard. A view on the Distributed table instead would fire
  only on the node that received the insert and miss anything inserted into a local table.
* Plain views (``events_recent``) get ``ON CLUSTER`` and keep reading the public, Distributed
  tables: they see the whole cluster.
* ``ALTER TABLE db.t`` runs on ``t_local`` and on ``t``; ``INSERT`` (seed rows) goes through
  the Distributed table unchanged.

Sharding: rows of a table with a dedup key must always reach the same shard, so that a
replayed or retried row meets its first copy (ReplacingMergeTree collapses duplicates only
within a shard). ``events`` and ``payments`` are sharded by ``vid``: a visitor's events, and so
its ``visitors``/``sessions`` rows, live on one shard; the messaging tables by ``tid`` (one row
per thread, one per message of a thread); other tables by their dedup key, or
``rand()`` when they have none. Summing tables (``hits``, ``ltv`` ...) may hold one partial row
per shard: read them with ``sum()``/``GROUP BY``, as with any SummingMergeTree.
"""

from __future__ import annotations

import re

from sfpltracker.store.dedup import DEDUP_KEYS
from sfpltracker.store.schema import Statement, split_top_level

# agreed/agreements by vid too: "latest consent per visitor" (ReplacingMergeTree on vid in
# agreements_local, filled from agreed_local) only holds when a visitor lives on one shard.
SHARDING_KEYS = {
    "events": "cityHash64(vid)",
    "payments": "cityHash64(vid)",
    "agreed": "cityHash64(vid)",
    "agreements": "cityHash64(vid)",
    # a thread's rows (and a message's, keyed within its thread) meet on one shard, where
    # ReplacingMergeTree collapses them
    "mthreads": "cityHash64(tid)",
    "mstore": "cityHash64(tid)",
    "mtriage": "cityHash64(tid)",
}
LOCAL_SUFFIX = "_local"
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_CREATE_TABLE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\.(\w+)\s*", re.IGNORECASE
)
_CREATE_VIEW = re.compile(
    r"^\s*CREATE\s+(MATERIALIZED\s+VIEW|VIEW)\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\.(\w+)\s*",
    re.IGNORECASE,
)
_CREATE_DATABASE = re.compile(
    r"^\s*CREATE\s+DATABASE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s*", re.IGNORECASE
)
_ALTER_TABLE = re.compile(r"^\s*ALTER\s+TABLE\s+(\w+)\.(\w+)\s*", re.IGNORECASE)
_ENGINE = re.compile(r"\s*ENGINE\s*=\s*(\w+)", re.IGNORECASE)
_NOT_COLUMNS = ("INDEX", "PROJECTION", "CONSTRAINT")


class ClusterSchemaError(ValueError):
    """A statement the cluster rewrite does not understand."""


def check_cluster_name(name: str) -> str:
    if not _CLUSTER_NAME.match(name):
        raise ClusterSchemaError(f"cluster name {name!r}: use letters, digits, '_', '-', '.'")
    return name


def cluster_statements(statements: list[Statement], cluster: str) -> list[Statement]:
    """The cluster form of ``statements`` (see the module docstring)."""
    check_cluster_name(cluster)
    on = f"ON CLUSTER '{cluster}'"
    names = (_table_name(s) for s in statements if s.kind == "table" and _is_merge_tree(s.sql))
    local = {name for name in names if name is not None}
    out: list[Statement] = []
    for s in statements:
        kind = s.kind
        if kind == "database":
            out.append(Statement(s.file, _insert_after(_CREATE_DATABASE, s.sql, on)))
        elif kind == "table":
            out.extend(Statement(s.file, sql) for sql in _table(s.sql, cluster, on, local))
        elif kind == "materialized_view":
            sql = _replicate_inner_engine(_to_local(s.sql, local))
            out.append(Statement(s.file, _insert_after(_CREATE_VIEW, sql, on)))
        elif kind == "view":
            out.append(Statement(s.file, _insert_after(_CREATE_VIEW, s.sql, on)))
        elif _ALTER_TABLE.match(s.sql):
            out.extend(Statement(s.file, sql) for sql in _alter(s.sql, on, local))
        else:
            out.append(s)
    return out


# -- tables --------------------------------------------------------------------------------


def _table_name(s: Statement) -> tuple[str, str] | None:
    """(database, table) of a CREATE TABLE."""
    m = _CREATE_TABLE.match(s.sql)
    return (m.group(2), m.group(3)) if m else None


def _is_merge_tree(sql: str) -> bool:
    m = _ENGINE.search(sql)
    return (
        m is not None
        and m.group(1).endswith("MergeTree")
        and not m.group(1).startswith("Replicated")
    )


def _table(sql: str, cluster: str, on: str, local: set[tuple[str, str]]) -> list[str]:
    m = _CREATE_TABLE.match(sql)
    if not m:
        raise ClusterSchemaError(f"cannot read the table name of: {sql[:80]}")
    if_not_exists, db, name = m.group(1) or "", m.group(2), m.group(3)
    rest = sql[m.end() :]
    copy_of = re.match(r"AS\s+(\w+)\.(\w+)\s*", rest, re.IGNORECASE)
    if (db, name) not in local or not (rest.startswith("(") or copy_of):
        # Not a MergeTree table (Memory, Log, ...): one per node, as written.
        return [f"{sql[: m.end()].rstrip()} {on} {rest}"]
    if copy_of:  # CREATE TABLE db.t AS db.other ENGINE = ...: the columns of another table
        body = None
        source = (copy_of.group(1), copy_of.group(2))
        after = rest[copy_of.end() :]
    else:
        end = _closing_paren(rest, 0)
        body, after = rest[1:end], rest[end + 1 :]
    engine = _ENGINE.match(after)
    if not engine:
        raise ClusterSchemaError(f"{db}.{name}: ENGINE = must follow the column list")
    args, tail = "", after[engine.end() :]
    if tail.startswith("("):
        close = _closing_paren(tail, 0)
        args, tail = tail[1:close].strip(), tail[close + 1 :]
    local_name = name + LOCAL_SUFFIX
    replicated_args = [f"'/clickhouse/tables/{{shard}}/{db}/{local_name}'", "'{replica}'"]
    if args:
        replicated_args.append(args)
    tail = re.sub(
        r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", tail
    )
    create = "CREATE TABLE " + if_not_exists
    engine_sql = f"ENGINE = Replicated{engine.group(1)}({', '.join(replicated_args)}){tail}"
    distributed_engine = (
        f"ENGINE = Distributed('{cluster}', '{db}', '{local_name}', {_sharding_key(name)})"
    )
    if body is None:
        src_db, src = source
        src_local = f"{src_db}.{src}{LOCAL_SUFFIX}" if source in local else f"{src_db}.{src}"
        return [
            f"{create}{db}.{local_name} {on}\nAS {src_local}\n{engine_sql}",
            f"{create}{db}.{name} {on}\nAS {db}.{local_name}\n{distributed_engine}",
        ]
    local_sql = f"{create}{db}.{local_name} {on}\n({body})\n{engine_sql}"
    columns = ",\n".join("    " + c for c in _column_definitions(body))
    distributed_sql = f"{create}{db}.{name} {on}\n(\n{columns}\n)\n{distributed_engine}"
    return [local_sql, distributed_sql]


def _sharding_key(table: str) -> str:
    if table in SHARDING_KEYS:
        return SHARDING_KEYS[table]
    key = DEDUP_KEYS.get(table)
    return f"cityHash64({key})" if key else "rand()"


def _column_definitions(body: str) -> list[str]:
    """The column definitions of a column list, without indexes, projections, constraints
    and codecs (a Distributed table stores nothing, so it takes none of them)."""
    out = []
    for part in split_top_level(body):
        part = " ".join(part.split())
        if not part or part.split()[0].upper() in _NOT_COLUMNS:
            continue
        codec = re.search(r"\s+CODEC\s*\(", part, re.IGNORECASE)
        if codec:
            close = _closing_paren(part, codec.end() - 1)
            part = (part[: codec.start()] + part[close + 1 :]).rstrip()
        out.append(part)
    return out


# -- views and alters -----------------------------------------------------------------------


def _to_local(sql: str, local: set[tuple[str, str]]) -> str:
    """Every ``db.t`` of a split table ``t`` in a view's TO and SELECT -> ``db.t_local``."""

    def swap(m: re.Match) -> str:
        split = (m.group(1), m.group(2)) in local
        return f"{m.group(1)}.{m.group(2)}{LOCAL_SUFFIX}" if split else m.group(0)

    head = _CREATE_VIEW.match(sql)
    start = head.end() if head else 0  # never rename the view itself
    return sql[:start] + re.sub(r"\b(\w+)\.(\w+)\b", swap, sql[start:])


def _replicate_inner_engine(sql: str) -> str:
    """A view that keeps its rows itself (``ENGINE =`` instead of ``TO``) needs a Replicated
    engine too: it fires on one replica only, and replication must carry its rows."""
    view = _CREATE_VIEW.match(sql)
    head_end = re.search(r"\bAS\s+(SELECT|WITH)\b", sql, re.IGNORECASE)
    engine = _ENGINE.search(sql, 0, head_end.start() if head_end else len(sql))
    if not view or not engine or not _is_merge_tree(engine.group(0)):
        return sql
    db, name = view.group(3), view.group(4)
    args, tail_at = "", engine.end()
    if sql[tail_at : tail_at + 1] == "(":
        close = _closing_paren(sql, tail_at)
        args, tail_at = sql[tail_at + 1 : close].strip(), close + 1
    replicated = [f"'/clickhouse/tables/{{shard}}/{db}/{name}_inner'", "'{replica}'"]
    if args:
        replicated.append(args)
    engine_sql = f" ENGINE = Replicated{engine.group(1)}({', '.join(replicated)})"
    return sql[: engine.start()] + engine_sql + sql[tail_at:]


def _alter(sql: str, on: str, local: set[tuple[str, str]]) -> list[str]:
    m = _ALTER_TABLE.match(sql)
    assert m is not None  # cluster_statements sends only ALTER TABLE statements here
    db, name, rest = m.group(1), m.group(2), sql[m.end() :]
    if (db, name) not in local:
        return [f"ALTER TABLE {db}.{name} {on} {rest}"]
    return [
        f"ALTER TABLE {db}.{name}{LOCAL_SUFFIX} {on} {rest}",
        f"ALTER TABLE {db}.{name} {on} {rest}",
    ]


# -- text helpers ---------------------------------------------------------------------------


def _insert_after(pattern: re.Pattern, sql: str, clause: str) -> str:
    m = pattern.match(sql)
    if not m:
        raise ClusterSchemaError(f"cannot place ON CLUSTER in: {sql[:80]}")
    rest = sql[m.end() :].lstrip()
    return f"{sql[: m.end()].rstrip()} {clause}" + (f"\n{rest}" if rest else "")


def _closing_paren(text: str, open_at: int) -> int:
    """Index of the ``)`` matching ``text[open_at] == "("``, skipping quoted text."""
    depth, i, quote = 0, open_at, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ClusterSchemaError(f"unbalanced parentheses in: {text[:80]}")
