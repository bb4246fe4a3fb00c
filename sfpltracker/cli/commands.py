"""Every subcommand of ``python -m sfpltracker``, in one list, in the order ``--help`` shows.

Each command's options and code live in the module of its feature (``cli/store.py``,
``cli/links.py``, ...); this list is the only place that names them, so the command line is
the same whatever was imported first (tests/test_cli_registry.py). A command that needs the
store runs an admin command (``cli/admin_commands.py``) through ``cli/client.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from sfpltracker import migrate
from sfpltracker.cli import dashboard, deadletter, links, privacy, store, tls
from sfpltracker.config import Config


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]  # adds the command's options
    run: Callable[[Config, argparse.Namespace], int]  # the exit status


COMMANDS: tuple[Command, ...] = (
    Command("schema", "load the schema (idempotent)", store.schema_arguments, store.cmd_schema),
    Command(
        "query",
        "run a read-only query through the running gateway",
        store.query_arguments,
        store.cmd_query,
    ),
    Command("account", "API credentials of the short-link admin API", links.arguments, links.run),
    Command(
        "prune",
        "delete rows older than the retention (+ jurisdictions)",
        privacy.prune_arguments,
        privacy.cmd_prune,
    ),
    Command(
        "forget",
        "erase a visitor/user/e-mail hash from every table",
        privacy.forget_arguments,
        privacy.cmd_forget,
    ),
    Command(
        "export-subject",
        "a subject's rows as JSON",
        privacy.export_subject_arguments,
        privacy.cmd_export_subject,
    ),
    Command(
        "export",
        "tables as Parquet, Hive-partitioned by day",
        privacy.export_arguments,
        privacy.cmd_export,
    ),
    Command(
        "deadletter",
        "list or replay the rows the store refused",
        deadletter.arguments,
        deadletter.run,
    ),
    Command(
        "dashboard",
        "the dashboard's rollups: rebuild from events",
        dashboard.arguments,
        dashboard.run,
    ),
    Command("tls", "certificates of the running gateway: status, renew", tls.arguments, tls.run),
    Command(
        "migrate",
        "copy an original tracker's ClickHouse database here",
        migrate.arguments,
        migrate.cmd_migrate,
    ),
)
