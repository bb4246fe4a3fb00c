"""Admin commands of the privacy tools, run by the process that owns the store.

Each command does one step, so the CLI (``cli/privacy.py``) can print progress between steps
and the same code runs inside the gateway (over ``POST /admin/<command>``) and offline:

- ``prune-plan`` / ``prune-table``: what retention deletes (with counts), then one table;
- ``forget-plan`` / ``forget-table``: the resolved subject and their rows per table, then one
  table (their rows deleted, other rows' ``ref`` to them cleared), verified afterwards;
- ``subject-rows``: one table's rows of a resolved subject (``export-subject``).
"""

from __future__ import annotations

import json
import time

from twisted.internet import defer

from sfpltracker.admin import AdminError
from sfpltracker.privacy import retention
from sfpltracker.privacy.catalogue import ZERO_REF, count, database_of, mutate, read_catalogue
from sfpltracker.privacy.subject import Subject, SubjectError, resolve


def _now_ms(ctx, args) -> int:
    if args.get("now_ms") is not None:
        return int(args["now_ms"])
    if ctx.gateway is not None:
        return ctx.gateway.now_ms()
    return int(time.time() * 1000)


def _days(ctx, args) -> int:
    days = args.get("days")
    days = ctx.cfg.DataRetentionDays if days is None else int(days)
    if days < 0:
        raise AdminError("retention days must be 0 (keep) or more")
    return days


@defer.inlineCallbacks
def _prune_steps(ctx, args):
    tables = yield read_catalogue(ctx.store)
    jurisdictions = []
    if "jurisdictions" in tables and not args.get("logs_only"):
        jurisdictions = yield retention.read_jurisdictions(ctx.store)
    now_ms = _now_ms(ctx, args)
    steps, skipped = retention.plan(
        tables, _days(ctx, args), jurisdictions, now_ms, bool(args.get("logs_only"))
    )
    return tables, steps, skipped, now_ms


@defer.inlineCallbacks
def prune_plan(ctx, args):
    """Which rows retention deletes in each table (counted, nothing deleted)."""
    tables, steps, skipped, now_ms = yield _prune_steps(ctx, args)
    planned = []
    for step in steps:
        rows = yield count(ctx.store, tables[step.table], step.where)
        planned.append({**step.as_dict(), "rows": rows})
    return {"now_ms": now_ms, "days": _days(ctx, args), "tables": planned, "skipped": skipped}


@defer.inlineCallbacks
def prune_table(ctx, args):
    """Delete one table's expired rows (same rules and instant as the plan)."""
    tables, steps, _, _ = yield _prune_steps(ctx, args)
    step = next((s for s in steps if s.table == args.get("table")), None)
    if step is None:
        raise AdminError(f"nothing to prune in table {args.get('table')!r}")
    table = tables[step.table]
    began = time.monotonic()
    rows = yield count(ctx.store, table, step.where)
    if rows:
        yield mutate(ctx.store, table, "DELETE", step.where, _reactor(ctx))
    left = yield count(ctx.store, table, step.where)
    return {
        "table": step.table,
        "deleted": rows - left,
        "left": left,
        "seconds": round(time.monotonic() - began, 3),
    }


def _subject(args, key="subject") -> Subject:
    try:
        return Subject.from_args(args.get(key) or args)
    except SubjectError as e:
        raise AdminError(str(e)) from None


@defer.inlineCallbacks
def forget_plan(ctx, args):
    """Resolve the subject and count their rows in every table that can hold them."""
    subject = _subject(args)
    if ctx.gateway is not None:
        yield ctx.gateway.batcher.flush_all()  # what was accepted is in the store first
    tables = yield read_catalogue(ctx.store)
    subject = yield resolve(ctx.store, tables, subject, ctx.cfg.IPMode, bool(args.get("linked")))
    planned = []
    for name in sorted(tables):
        table = tables[name]
        where = subject.condition(table)
        refs = subject.ref_condition(table)
        rows = (yield count(ctx.store, table, where)) if where else 0
        ref_rows = (yield count(ctx.store, table, refs)) if refs else 0
        if where or refs:
            planned.append({"table": name, "rows": rows, "refs": ref_rows})
    return {"subject": subject.as_dict(), "tables": planned}


@defer.inlineCallbacks
def forget_table(ctx, args):
    """Delete a resolved subject's rows from one table; clear other rows' ``ref`` to them."""
    subject = _subject(args)
    tables = yield read_catalogue(ctx.store)
    table = tables.get(args.get("table"))
    if table is None:
        raise AdminError(f"no table {args.get('table')!r}")
    began = time.monotonic()
    where = subject.condition(table)
    refs = subject.ref_condition(table)
    matched = left = referring = refs_left = 0
    if where:
        matched = yield count(ctx.store, table, where)
        if matched:
            yield mutate(ctx.store, table, "DELETE", where, _reactor(ctx))
        left = yield count(ctx.store, table, where)
    if refs:
        referring = yield count(ctx.store, table, refs)
        if referring:
            yield mutate(ctx.store, table, f"UPDATE `ref` = {ZERO_REF}", refs, _reactor(ctx))
        refs_left = yield count(ctx.store, table, refs)
    return {
        "table": table.name,
        "deleted": matched - left,
        "refs_cleared": referring - refs_left,
        "left": left + refs_left,
        "seconds": round(time.monotonic() - began, 3),
    }


@defer.inlineCallbacks
def subject_rows(ctx, args):
    """One table's rows of a resolved subject, as JSON objects."""
    subject = _subject(args)
    tables = yield read_catalogue(ctx.store)
    table = tables.get(args.get("table"))
    if table is None:
        raise AdminError(f"no table {args.get('table')!r}")
    where = subject.condition(table)
    if not where:
        return {"table": table.name, "rows": []}
    db = database_of(ctx.store)
    order = f" ORDER BY `{table.time_column}`" if table.time_column else ""
    raw = yield ctx.store.query(
        f"SELECT * FROM {db}.`{table.name}`{table.final} WHERE {where}{order}", "JSONEachRow"
    )
    rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return {"table": table.name, "rows": rows}


def _reactor(ctx):
    return ctx.gateway.reactor if ctx.gateway is not None else None
