"""``python -m sfpltracker <command>``: the parser built from ``cli/commands.py``'s list.

A command that needs the store asks the running gateway (the owner of the store) over the
query listener; with no gateway running it opens the store itself. See ``admin.py``.
"""

from __future__ import annotations

import argparse
import sys

from sfpltracker import admin
from sfpltracker.cli.commands import COMMANDS
from sfpltracker.config import ConfigError, load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sfpltracker")
    parser.add_argument("--config", "-c", default="config.json", help="config file")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.arguments(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg = load(ns.config)
    except ConfigError as e:
        sys.stderr.write(f"sfpltracker: config error: {e}\n")
        return 2
    run = next(c.run for c in COMMANDS if c.name == ns.command)
    try:
        return run(cfg, ns)
    except admin.AdminError as e:
        sys.stderr.write(f"sfpltracker: {e}\n")
        return 1
