"""``python -m sfpltracker deadletter list [--table T] | replay --table T [--dry-run]``.

``list`` reads the files in ``DataDirectory/deadletter/`` itself (no store needed). ``replay``
is admin command ``deadletter-replay`` (``store/deadletter_replay.py``): run by the running gateway,
which owns the store and the files' append lock, or offline on the store opened here.
"""

from __future__ import annotations

import json

from sfpltracker.cli.client import run_command
from sfpltracker.store.deadletter_replay import list_files


def arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="per table: rows, oldest/newest, reasons")
    listing.add_argument("--table", "-t", default="")
    listing.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay = actions.add_parser("replay", help="insert a table's dead letters again")
    replay.add_argument("--table", "-t", required=True)
    replay.add_argument("--dry-run", action="store_true", help="count only, change nothing")


def run(cfg, ns) -> int:
    return cmd_list(cfg, ns) if ns.action == "list" else cmd_replay(cfg, ns)


def cmd_list(cfg, ns) -> int:
    summaries = list_files(cfg.data_dir / "deadletter", ns.table)
    if ns.json:
        print(json.dumps(summaries, indent=2, ensure_ascii=False))
        return 0
    if not summaries:
        print(f"no dead letters{' for ' + ns.table if ns.table else ''}")
        return 0
    for s in summaries:
        unreadable = f", {s['unreadable']} unreadable line(s)" if s["unreadable"] else ""
        print(
            f"{s['table']}: {s['rows']} row(s) ({s['unique']} unique){unreadable}, "
            f"oldest {s['oldest'] or '-'}, newest {s['newest'] or '-'}"
        )
        for r in s["reasons"]:
            print(f"  {r['rows']:>8}  {r['reason']}")
    return 0


def cmd_replay(cfg, ns) -> int:
    result = run_command(cfg, "deadletter-replay", {"table": ns.table, "dry_run": ns.dry_run})
    table = result["table"]
    duplicates = result["duplicates_in_file"]
    unreadable = f", {result['unreadable']} unreadable line(s) kept" if result["unreadable"] else ""
    if result["dry_run"]:
        stored = result.get("already_stored")
        known = "unknown" if stored is None else stored
        print(
            f"dry run: {table}: {result['rows']} row(s), {duplicates} duplicate(s) in the file, "
            f"{known} already stored, {result['to_insert']} would be inserted{unreadable}"
        )
        return 0
    print(
        f"replayed {result['replayed']} row(s) of {table}; "
        f"still refused {result['still_refused']} (kept in the file with their new reason); "
        f"duplicates skipped {duplicates + result['already_stored']} "
        f"({duplicates} in the file, {result['already_stored']} already stored){unreadable}"
    )
    return 0
