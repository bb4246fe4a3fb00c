"""Rebuilding the dashboard's rollups from ``events``, in the running gateway.

``python -m sfpltracker dashboard rebuild [--since DATE]`` (admin command
``dashboard-rebuild``; ``bench/dashboard.py --rebuild-rollups`` runs the same code on its own
store). The rollups are what the schema declares as such: each ``dash_*`` table filled by a
materialized view ``<table>_mv`` on ``events`` (``schema/09*_dashboard*.sql``). Each is made
again as the schema declares it now (so an older sort key is upgraded) and filled from
``events`` with its view's own SELECT: the rows the view would have written for every insert.

Events keep arriving meanwhile; none is counted twice or missed, because each rollup is
built in a new table and swapped in:

1. ``<t>__rebuild`` is created; merges of ``events`` (and of ``<t>``) stop, so their set of
   parts only grows while the rebuild reads them.
2. The cut, one run of statements: the active parts of ``events`` (and of ``<t>``) are
   listed, and the view ``<t>__rebuild_mv`` is created into the new table. Every insert after
   the cut reaches the new table through that view; every row before it is in a listed part.
3. The backfill: the view's SELECT over the listed parts of ``events`` only (from ``--since``
   on; the days before are copied from the listed parts of ``<t>``, which holds them as they
   were). Merges start again.
4. The swap, one run of statements: ``EXCHANGE TABLES`` (readers never miss the table), both
   views dropped, ``<t>_mv`` created as the schema declares it; the old table is dropped.

"One run of statements" is exact on the embedded store, whose writer session runs one job at
a time (``execute_together``: no insert runs between the statements). A ClickHouse server
runs inserts concurrently: an insert into ``events`` running on it at the instant of the cut
or the swap (milliseconds) may be missed or counted twice in the rebuilt tables. The DuckDB
store computes its ``dash_*`` as plain views: nothing to rebuild.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread, deferToThread

from sfpltracker import admin
from sfpltracker.store.interface import SerialStore, database_of
from sfpltracker.store.schema import REBUILD_SUFFIX, load_statements

SUFFIX = REBUILD_SUFFIX
PART_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

_rebuilding: set = set()  # the stores a rebuild runs on (one at a time each)

# Runs statements one after the other and returns each one's TabSeparated answer.
Run = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Rollup:
    table: str
    table_sql: str  # the schema's CREATE TABLE
    view_sql: str  # the schema's CREATE MATERIALIZED VIEW <table>_mv TO <table>

    @property
    def view(self) -> str:
        return f"{self.table}_mv"


def rollups(database: str, directory=None) -> list[Rollup]:
    """The schema's rollups: tables ``dash_*`` that a view ``<table>_mv`` fills."""
    statements = load_statements(database, directory)
    tables = {s.name: s.sql for s in statements if s.kind == "table"}
    found = []
    for s in statements:
        if s.kind == "materialized_view" and s.name and s.name.endswith("_mv"):
            table = s.name[: -len("_mv")]
            if table.startswith("dash_") and table in tables:
                found.append(Rollup(table, tables[table], s.sql))
    return found


def _renamed(sql: str, database: str, old: str, new: str) -> str:
    # \b: ``sfpla.dash_daily`` is not the start of ``sfpla.dash_daily_mv`` (``_`` is a word
    # character), so the table and its view are renamed independently.
    return re.sub(rf"\b{re.escape(database)}\.{re.escape(old)}\b", f"{database}.{new}", sql)


def _select(view_sql: str) -> str:
    m = re.search(r"\bAS\s+(SELECT\b.*)$", view_sql, re.IGNORECASE | re.DOTALL)
    if not m:
        raise admin.AdminError(f"no SELECT in the view: {view_sql[:80]}")
    return m.group(1)


def _parts(answer: str) -> list[str]:
    names = [line for line in answer.splitlines() if line]
    for name in names:
        if not PART_NAME.match(name):  # what ClickHouse names parts; never quoted otherwise
            raise admin.AdminError(f"unexpected part name {name[:80]!r}")
    return names


def _in_list(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def rebuild(run: Run, database: str, since: datetime.date | None = None, say=print) -> dict:
    """Rebuild every rollup (see the module's docstring); blocking, on a thread of its own.
    Answers per table the rows it holds after and the seconds it took."""
    done: dict[str, dict] = {}
    for rollup in rollups(database):
        began = time.monotonic()
        done[rollup.table] = {"rows": _rebuild_one(run, database, rollup, since)}
        done[rollup.table]["seconds"] = round(time.monotonic() - began, 2)
        say(f"{rollup.table}: rebuilt from events, {done[rollup.table]['rows']} rows")
    return done


PARTS = (
    "SELECT name FROM system.parts WHERE database = '{db}' AND table = '{t}' AND active "
    "ORDER BY name"
)


def _rebuild_one(run: Run, db: str, r: Rollup, since: datetime.date | None) -> int:
    table, new, new_view = f"{db}.{r.table}", f"{db}.{r.table}{SUFFIX}", f"{db}.{r.view}{SUFFIX}"
    # Left by a rebuild that was interrupted (its view still fills its table: both go).
    leftovers = [f"DROP TABLE IF EXISTS {new_view}", f"DROP TABLE IF EXISTS {new}"]
    run(leftovers)
    run([_renamed(r.table_sql, db, r.table, r.table + SUFFIX)])
    try:
        _fill(run, db, r, since)
        # EXCHANGE first: should it fail (a database that cannot), nothing has changed. The
        # views name their target table, so after it the old view fills the new data and the
        # new view the old: both go and the schema's view is made, with no insert between.
        run(
            [
                f"EXCHANGE TABLES {table} AND {new}",
                f"DROP TABLE IF EXISTS {table}_mv",
                f"DROP TABLE {new_view}",
                r.view_sql,
            ]
        )
    finally:
        run(leftovers)  # the old data after the swap; the half-built table after a failure
    return int(run([f"SELECT count() FROM {table}"])[0].strip() or 0)


def _fill(run: Run, db: str, r: Rollup, since: datetime.date | None) -> None:
    """The cut and the backfill of ``<t>__rebuild``, with merges stopped meanwhile."""
    table, new, events = f"{db}.{r.table}", f"{db}.{r.table}{SUFFIX}", f"{db}.events"
    view_sql = _renamed(_renamed(r.view_sql, db, r.view, r.view + SUFFIX), db, r.table,
                        r.table + SUFFIX)  # fmt: skip
    stopped = [events] + ([table] if since else [])
    run([f"SYSTEM STOP MERGES {t}" for t in stopped])
    try:
        cut = run(
            [
                PARTS.format(db=db, t="events"),
                PARTS.format(db=db, t=r.table) if since else "SELECT 1 WHERE 0",
                view_sql,
            ]
        )
        event_parts, kept_parts = _parts(cut[0]), _parts(cut[1])
        where = [f"_part IN ({_in_list(event_parts)})"]
        if since:
            day = f"toDate('{since.isoformat()}')"
            where.append(f"toDate(created_at) >= {day}")
            if kept_parts:
                (names,) = run(
                    [
                        f"SELECT name FROM system.columns WHERE database = '{db}' "
                        f"AND table = '{r.table}{SUFFIX}' ORDER BY position"
                    ]
                )
                columns = ", ".join(f"`{c}`" for c in names.splitlines())
                # A rollup of days has `day`; one of events' own rows (dash_funnel) their time.
                row_day = "day" if "day" in names.splitlines() else "toDate(created_at)"
                run(
                    [
                        f"INSERT INTO {new} ({columns}) SELECT {columns} FROM {table} "
                        f"WHERE {row_day} < {day} AND _part IN ({_in_list(kept_parts)})"
                    ]
                )
        if event_parts:
            select, n = re.subn(
                rf"\bFROM\s+{re.escape(events)}\b",
                f"FROM (SELECT * FROM {events} WHERE {' AND '.join(where)}) AS events",
                _select(r.view_sql),
            )
            if n != 1:
                raise admin.AdminError(f"{r.view} does not read {events} once")
            run([f"INSERT INTO {new} {select}"])
    finally:
        run([f"SYSTEM START MERGES {t}" for t in stopped])


# -- the admin command --------------------------------------------------------------------------


def parse_since(value) -> datetime.date | None:
    if value in (None, ""):
        return None
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        raise admin.AdminError(
            f"since must be a date (YYYY-MM-DD), not {str(value)[:40]!r}"
        ) from None


def store_runner(store) -> Run:
    """``Run`` for a store, called from a thread other than the reactor's: statements go to
    the store through the reactor, together (``SerialStore``) where the store can."""
    if isinstance(store, SerialStore):

        def together(statements: list[str]) -> defer.Deferred:
            return store.execute_together(statements)

    else:

        @defer.inlineCallbacks
        def together(statements: list[str]):
            out = []
            for sql in statements:
                out.append((yield store.execute(sql)))
            return out

    from twisted.internet import reactor  # the running one (never installed by an import)

    def run(statements: list[str]) -> list[str]:
        answers = blockingCallFromThread(reactor, together, statements)
        return [a.decode() if isinstance(a, bytes) else str(a or "") for a in answers]

    return run


def rebuild_command(ctx: admin.AdminContext, args: dict):
    """Admin command ``dashboard-rebuild``: ``{"since": "YYYY-MM-DD"}`` optional."""
    since = parse_since(args.get("since"))
    store = ctx.store
    if store.kind == "duckdb":
        raise admin.AdminError(
            "the DuckDB store computes the dashboard's rollups as views: nothing to rebuild"
        )
    if store.cluster:
        raise admin.AdminError("rebuilding the rollups of a cluster is not supported")
    if store in _rebuilding:  # a second one would drop the first one's new tables
        raise admin.AdminError("a rebuild of the dashboard's rollups is running already")
    _rebuilding.add(store)
    d = deferToThread(rebuild, store_runner(store), database_of(store), since, lambda _: None)

    def done(result):
        _rebuilding.discard(store)
        return result

    d.addBoth(done)
    d.addCallback(
        lambda tables: {
            "ok": True,
            "since": since.isoformat() if since else None,
            "tables": tables,
            "exclusive": isinstance(store, SerialStore),
        }
    )
    return d
