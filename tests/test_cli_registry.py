"""The command line and the admin commands come from one explicit list each.

``python -m sfpltracker --help`` shows exactly ``cli/commands.py``'s ``COMMANDS``, in that
order, and which commands exist (CLI and ``POST /admin/<command>``) does not depend on which
modules a process imported first: before the lists, modules appended themselves on import, and
importing ``cli/deadletter.py`` first put ``tls`` before ``deadletter``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The admin commands the CLI's subcommands run (each named in a cli/ module).
EXPECTED_ADMIN = {
    "schema",
    "ping",
    "migrate-page",
    "account-create",
    "account-rotate",
    "account-list",
    "prune-plan",
    "prune-table",
    "forget-plan",
    "forget-table",
    "subject-rows",
    "deadletter-replay",
    "tls-status",
    "tls-renew",
    "export-run",
    "dashboard-rebuild",
}

# Modules that registered commands as an import side effect, or import the lists.
MODULES = [
    "sfpltracker.cli.tls",
    "sfpltracker.cli.deadletter",
    "sfpltracker.cli.privacy",
    "sfpltracker.cli.links",
    "sfpltracker.cli.store",
    "sfpltracker.cli.main",
    "sfpltracker.web.query",
    "sfpltracker.gateway",
    "sfpltracker.edge.assembly",
    "sfpltracker.privacy.commands",
    "sfpltracker.links.accounts",
    "sfpltracker.store.deadletter_replay",
]

# Prints what a fresh process sees after importing the modules in argv order: the parser's
# subcommands and the admin commands the query listener would run.
PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from sfpltracker.cli.main import build_parser
parser = build_parser()
sub = next(a for a in parser._actions if a.dest == "command")
from sfpltracker.cli.admin_commands import ADMIN_COMMANDS
print(json.dumps({"cli": list(sub.choices), "admin": sorted(ADMIN_COMMANDS)}))
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )


def _listed(help_text: str) -> list[str]:
    """The subcommands of the usage line's ``{a,b,...}``."""
    match = re.search(r"\{([a-z,-]+)\}", help_text)
    assert match, help_text
    return match.group(1).split(",")


def test_help_lists_exactly_the_explicit_commands():
    from sfpltracker.cli.commands import COMMANDS

    names = [c.name for c in COMMANDS]
    done = _python("-m", "sfpltracker", "--help")
    assert done.returncode == 0, done.stderr
    assert _listed(done.stdout) == names
    for command in COMMANDS:  # each with its help line
        assert re.search(
            rf"^\s+{re.escape(command.name)}\s+{re.escape(command.help)}$", done.stdout, re.M
        ), command.name

    # The `sfpltracker` script (pyproject) runs the same parser.
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = entry["sfpltracker"].split(":")
    script = _python("-c", f"import {module} as m; raise SystemExit(m.{func}(['--help']))")
    assert script.returncode == 0, script.stderr
    assert _listed(script.stdout) == names


def test_commands_do_not_depend_on_import_order():
    from sfpltracker.cli.commands import COMMANDS

    # cli/tls first put it before deadletter (it imported cli/main, which imported deadletter);
    # cli/deadletter first the other way; web/query and gateway first: the gateway's view.
    firsts = ["sfpltracker.cli.deadletter", "sfpltracker.web.query", "sfpltracker.gateway"]
    orders = [MODULES, *([first] + [m for m in MODULES if m != first] for first in firsts)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE, *order],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order in orders
    ]
    seen = []
    for order, proc in zip(orders, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"importing {order} failed:\n{err}"
        seen.append((order[0], json.loads(out)))
    for first, got in seen:
        assert got["cli"] == [c.name for c in COMMANDS], f"{first} imported first"
        assert set(got["admin"]) == EXPECTED_ADMIN, f"{first} imported first"
