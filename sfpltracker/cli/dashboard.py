"""``python -m sfpltracker dashboard rebuild [--since DATE]``: the dashboard's rollups made
again from ``events`` (admin command ``dashboard-rebuild``, ``dashboard/rollups.py``), in the
running gateway while it keeps collecting, or offline on the store opened here."""

from __future__ import annotations

from sfpltracker.cli.client import run_command


def arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    rebuild = actions.add_parser(
        "rebuild", help="rebuild dash_* from events (the schema's tables and sort keys)"
    )
    rebuild.add_argument(
        "--since", default="", help="only days from this date (YYYY-MM-DD); older ones are kept"
    )


def run(cfg, ns) -> int:
    result = run_command(cfg, "dashboard-rebuild", {"since": ns.since})
    since = f" from {result['since']}" if result.get("since") else ""
    for table, done in result["tables"].items():
        print(f"{table}: rebuilt{since} from events, {done['rows']} rows, {done['seconds']} s")
    return 0
