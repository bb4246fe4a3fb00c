"""``python -m sfpltracker prune | forget | export-subject | export``.

Each command drives the admin steps of ``privacy/commands.py`` one at a time, printing progress
between them, through a *session*: the running gateway (admin commands over its admin
socket's ``POST /admin/<cmd>``, reads over the query listener) or, when no gateway
runs, the store opened in this process (chDB allows one process per data directory). Files
(exports) are written by this process, never by the gateway.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from sfpltracker import admin
from sfpltracker.cli import admin_commands
from sfpltracker.cli.client import (
    GatewayNotRunning,
    call_running_gateway,
    listener_url,
    run_command,
    run_with_store,
)
from sfpltracker.fsutil import write_atomic
from sfpltracker.ingest.event import hash_private
from sfpltracker.privacy.catalogue import valid_ehash
from sfpltracker.store.schema import DEFAULT_DATABASE

DEFAULT_EXPORT_TABLES = ("events",)


# -- sessions ----------------------------------------------------------------------------------


class GatewaySession:
    """Talks to the running gateway."""

    def __init__(self, cfg):
        self.cfg = cfg

    def admin(self, name: str, args: dict) -> dict:
        return call_running_gateway(self.cfg, name, args)

    def query(self, sql: str, fmt: str) -> bytes:
        request = urllib.request.Request(
            f"{listener_url(self.cfg)}/?{urlencode({'default_format': fmt})}",
            data=sql.encode(),
            method="POST",
        )
        if self.cfg.QueryUser or self.cfg.QueryPassword:
            request.add_header("X-ClickHouse-User", self.cfg.QueryUser)
            request.add_header("X-ClickHouse-Key", self.cfg.QueryPassword)
        try:
            with urllib.request.urlopen(request, timeout=600) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise admin.AdminError(e.read().decode(errors="replace").strip()) from None


class OfflineSession:
    """Owns the store: the reactor runs in the main thread, the command in a worker thread."""

    def __init__(self, cfg, store, reactor):
        self.ctx = admin.AdminContext(cfg, store)
        self.store = store
        self.reactor = reactor

    def admin(self, name: str, args: dict) -> dict:
        from twisted.internet.threads import blockingCallFromThread

        return blockingCallFromThread(self.reactor, admin_commands.run, self.ctx, name, args)

    def query(self, sql: str, fmt: str) -> bytes:
        from twisted.internet.threads import blockingCallFromThread

        return blockingCallFromThread(self.reactor, self.store.query, sql, fmt)


def with_session(cfg, driver) -> int:
    """Run ``driver(session) -> int`` against the running gateway, else offline."""
    try:
        call_running_gateway(cfg, "ping", {})
    except GatewayNotRunning:
        return _offline(cfg, driver)
    return driver(GatewaySession(cfg))


def _offline(cfg, driver) -> int:
    from twisted.internet import reactor, threads

    return run_with_store(
        cfg, lambda store: threads.deferToThread(driver, OfflineSession(cfg, store, reactor))
    )


def _say(text: str = "") -> None:
    print(text, flush=True)


# -- prune -------------------------------------------------------------------------------------


def cmd_prune(cfg, ns) -> int:
    args = {"logs_only": ns.logs_only}
    if ns.days is not None:
        args["days"] = ns.days

    def drive(session) -> int:
        plan = session.admin("prune-plan", args)
        args["now_ms"] = plan["now_ms"]
        as_of = datetime.datetime.fromtimestamp(plan["now_ms"] / 1000, datetime.UTC)
        scope = "log tables" if ns.logs_only else "all data tables"
        _say(
            f"prune: {scope}, DataRetentionDays={plan['days'] or 'keep forever'}, "
            f"as of {as_of:%Y-%m-%d %H:%M:%S} UTC"
        )
        for t in plan["tables"]:
            _say(f"  {t['table']:<20} {t['rows']:>10} rows older than ({', '.join(t['rules'])})")
        for t in plan["skipped"]:
            _say(f"  {t['table']:<20} {'-':>10}      skipped: {t['why']}")
        todo = [t for t in plan["tables"] if t["rows"]]
        total = sum(t["rows"] for t in todo)
        if ns.dry_run:
            _say(f"dry run: {total} rows in {len(todo)} tables would be deleted")
            return 0
        deleted = 0
        for n, t in enumerate(todo, 1):
            _say(f"  [{n}/{len(todo)}] {t['table']}: deleting {t['rows']} rows ...")
            done = session.admin("prune-table", {**args, "table": t["table"]})
            deleted += done["deleted"]
            _say(
                f"  [{n}/{len(todo)}] {t['table']}: {done['deleted']} deleted in {done['seconds']} s"
            )
        _say(f"prune: {deleted} rows deleted from {len(todo)} tables")
        return 0

    return with_session(cfg, drive)


# -- subjects: forget / export-subject ------------------------------------------------------------


def _hash_key(cfg) -> bytes:
    """The key e-mail hashes are made with (``PrefixPrivateHash``, else the data secret)."""
    if cfg.PrefixPrivateHash:
        return cfg.PrefixPrivateHash.encode()
    path = cfg.data_dir / "secret.key"
    try:
        return path.read_bytes().strip()
    except OSError:
        raise admin.AdminError(
            f"--email needs the hashing secret ({path} or PrefixPrivateHash)"
        ) from None


def _subject_args(cfg, ns) -> dict:
    ehashes = list(ns.ehash or [])
    if ns.email:
        key = _hash_key(cfg)
        ehashes += [hash_private(key, e) for e in ns.email]
    for value in ehashes:
        if not valid_ehash(value):
            raise admin.AdminError(f"--ehash {value!r} is not an e-mail hash")
    subject = {"vids": ns.vid or [], "uids": ns.uid or [], "ehashes": ehashes}
    if not any(subject.values()):
        raise admin.AdminError("name the subject with --vid, --uid, --ehash or --email")
    return subject


def _describe(subject: dict) -> str:
    parts = [f"{len(subject[k])} {k}" for k in ("vids", "uids", "ehashes", "sids", "orids")]
    if subject.get("ips"):
        parts.append(f"{len(subject['ips'])} stored ips")
    return ", ".join(parts)


def _export_subject(session, plan: dict, out: str | None) -> int:
    subject = plan["subject"]
    tables = {}
    total = 0
    for t in plan["tables"]:
        if not t["rows"]:
            continue
        got = session.admin("subject-rows", {"subject": subject, "table": t["table"]})
        tables[t["table"]] = got["rows"]
        total += len(got["rows"])
    document = {
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "subject": {k: v for k, v in subject.items() if k != "ips"},
        "tables": tables,
    }
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if out in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        _write_atomically(Path(out), text.encode())
        print(f"export-subject: {total} rows from {len(tables)} tables -> {out}", file=sys.stderr)
    return total


def cmd_export_subject(cfg, ns) -> int:
    subject = _subject_args(cfg, ns)

    def drive(session) -> int:
        plan = session.admin("forget-plan", {"subject": subject, "linked": ns.linked})
        _export_subject(session, plan, ns.out)
        return 0

    return with_session(cfg, drive)


def cmd_forget(cfg, ns) -> int:
    subject = _subject_args(cfg, ns)

    def drive(session) -> int:
        plan = session.admin("forget-plan", {"subject": subject, "linked": ns.linked})
        _say(f"forget: subject resolved to {_describe(plan['subject'])}")
        for t in plan["tables"]:
            refs = f", {t['refs']} rows referring to them" if t["refs"] else ""
            _say(f"  {t['table']:<20} {t['rows']:>10} rows{refs}")
        todo = [t for t in plan["tables"] if t["rows"] or t["refs"]]
        if ns.export:
            _export_subject(session, plan, ns.export)
        if ns.dry_run:
            _say(f"dry run: {sum(t['rows'] for t in todo)} rows in {len(todo)} tables would go")
            return 0
        deleted = left = 0
        for n, t in enumerate(todo, 1):
            done = session.admin("forget-table", {"subject": plan["subject"], "table": t["table"]})
            deleted += done["deleted"]
            left += done["left"]
            cleared = f", {done['refs_cleared']} refs cleared" if done["refs_cleared"] else ""
            _say(f"  [{n}/{len(todo)}] {t['table']}: {done['deleted']} deleted{cleared}")
        if left:
            _say(f"forget: {left} rows still match; run it again (new events arrived?)")
            return 1
        _say(f"forget: {deleted} rows deleted from {len(todo)} tables; 0 rows left")
        return 0

    return with_session(cfg, drive)


# -- export (Parquet, Hive layout) -------------------------------------------------------------


def _day(text: str, option: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise admin.AdminError(f"{option}: expected a day YYYY-MM-DD, got {text!r}") from None


def cmd_export(cfg, ns) -> int:
    if ns.to:
        return _export_to(cfg, ns)
    missing = [
        o for o, v in (("--since", ns.since), ("--until", ns.until), ("--out", ns.out)) if not v
    ]
    if missing:
        raise admin.AdminError(f"export: {', '.join(missing)} needed (or --to TARGET)")
    since, until = _day(ns.since, "--since"), _day(ns.until, "--until")
    if until < since:
        raise admin.AdminError("--until is before --since")
    out = Path(ns.out).resolve()
    names = _tables(ns.tables or ",".join(DEFAULT_EXPORT_TABLES))

    def drive(session) -> int:
        db = cfg.store_entry().Database or DEFAULT_DATABASE
        catalogue = _catalogue(session, db)
        total = 0
        for name in names:
            table = catalogue.get(name)
            if table is None:
                raise admin.AdminError(f"no table {name!r} in {db}")
            column = table.time_column
            if column is None:
                raise admin.AdminError(f"table {name!r} has no date column to partition by")
            rows = _export_table(session, db, table, column, since, until, out)
            total += rows
        _say(f"export: {total} rows -> {out} (Hive layout: <table>/day=YYYY-MM-DD/*.parquet)")
        return 0

    return with_session(cfg, drive)


def _tables(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _export_to(cfg, ns) -> int:
    """``--to``: the rows new since the last export to that target (sfpltracker/export.py),
    written by the process that owns the store (the running gateway, else this one)."""
    if ns.since or ns.until or ns.out:
        raise admin.AdminError(
            "export: --to exports what is new; --since/--until/--out are not for it"
        )
    to = ns.to if "://" in ns.to else str(Path(ns.to).resolve())
    args: dict = {"to": to}
    if ns.tables:
        args["tables"] = _tables(ns.tables)
    done = run_command(cfg, "export-run", args)
    per_table = ", ".join(f"{t} {n}" for t, n in done["tables"].items())
    _say(
        f"export: {done['rows']} new rows -> {done['target']} ({per_table}) in {done['seconds']} s"
    )
    return 0


def _catalogue(session, db: str) -> dict:
    from sfpltracker.privacy.catalogue import Table, refuse_duckdb

    refuse_duckdb(getattr(session, "store", None))

    raw = session.query(
        "SELECT t.name AS table, t.engine AS engine, c.name AS column, c.type AS type "
        "FROM system.tables AS t INNER JOIN system.columns AS c "
        "ON c.database = t.database AND c.table = t.name "
        f"WHERE t.database = '{db}' AND t.engine LIKE '%MergeTree%' ORDER BY t.name, c.position",
        "JSONEachRow",
    )
    tables: dict = {}
    for line in raw.decode().splitlines():
        if line.strip():
            rec = json.loads(line)
            t = tables.setdefault(rec["table"], Table(rec["table"], rec["engine"]))
            t.columns[rec["column"]] = rec["type"]
    return tables


def _export_table(session, db, table, column, since, until, out: Path) -> int:
    start = f"toDate('{since.isoformat()}')"
    end = f"toDate('{(until + datetime.timedelta(days=1)).isoformat()}')"
    counts = session.query(
        f"SELECT toString(toDate(`{column}`)) AS day, count() AS n "
        f"FROM {db}.`{table.name}`{table.final} "
        f"WHERE toDate(`{column}`) >= {start} AND toDate(`{column}`) < {end} "
        "GROUP BY day ORDER BY day",
        "TabSeparated",
    )
    days = [line.split("\t") for line in counts.decode().splitlines() if line.strip()]
    _say(f"  {table.name}: {len(days)} days with rows between {since} and {until}")
    total = 0
    for day, n in days:
        began = time.monotonic()
        data = session.query(
            f"SELECT * FROM {db}.`{table.name}`{table.final} "
            f"WHERE toDate(`{column}`) = toDate('{day}') ORDER BY `{column}`",
            "Parquet",
        )
        target = out / table.name / f"day={day}" / "part-00000.parquet"
        _write_atomically(target, data)
        total += int(n)
        _say(f"    day={day}: {n} rows, {len(data)} bytes ({time.monotonic() - began:.2f} s)")
    return total


def _write_atomically(path: Path, data: bytes) -> None:
    # Owner-only: an export holds personal data (a subject's rows, whole tables).
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o600)


# -- options ------------------------------------------------------------------------------------


def _subject_options(parser) -> None:
    parser.add_argument("--vid", action="append", help="visitor id (repeatable)")
    parser.add_argument("--uid", action="append", help="user id (repeatable)")
    parser.add_argument("--ehash", action="append", help="e-mail hash as stored (repeatable)")
    parser.add_argument("--email", action="append", help="e-mail address, hashed like events")
    parser.add_argument(
        "--linked",
        action="store_true",
        help="also the vids/uids seen together with these in events (a user's devices)",
    )


def prune_arguments(prune) -> None:
    prune.add_argument("--logs-only", action="store_true", help="only the log tables")
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.add_argument("--days", type=int, default=None, help="override DataRetentionDays")


def forget_arguments(forget) -> None:
    _subject_options(forget)
    forget.add_argument("--export", metavar="FILE", help="export-subject to FILE first")
    forget.add_argument("--dry-run", action="store_true", help="count, delete nothing")


def export_subject_arguments(export_subject) -> None:
    _subject_options(export_subject)
    export_subject.add_argument("--out", metavar="FILE", help="write to FILE (default stdout)")


def export_arguments(export) -> None:
    export.add_argument("--since", help="first day, YYYY-MM-DD (UTC)")
    export.add_argument("--until", help="last day, YYYY-MM-DD (UTC, included)")
    export.add_argument("--out", metavar="DIR", help="output directory")
    export.add_argument(
        "--to",
        metavar="s3://BUCKET/PREFIX|DIR",
        help="instead: the rows new since the last export to this target (docs/export.md)",
    )
    export.add_argument(
        "--tables",
        default=None,
        help="comma-separated (events; with --to: Export.Tables)",
    )
