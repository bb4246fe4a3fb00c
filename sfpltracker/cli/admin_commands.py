"""Every admin command, in one list: what ``POST /admin/<command>`` (``web/admin.py``) and the
CLI's offline path (``cli/client.py``) may run.

A command is ``fn(ctx: AdminContext, args: dict) -> result | Deferred``, written next to the
feature it belongs to; this list is the only place that names it, so what may run does not
depend on which modules happened to be imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from twisted.internet import defer

from sfpltracker import admin, export, migrate
from sfpltracker.dashboard import rollups
from sfpltracker.edge.tls import commands as tls
from sfpltracker.links import accounts
from sfpltracker.privacy import commands as privacy
from sfpltracker.store import deadletter_replay

AdminCommand = Callable[[admin.AdminContext, dict], Any]

ADMIN_COMMANDS: Mapping[str, AdminCommand] = MappingProxyType(
    {
        "schema": admin.load_schema,
        "ping": admin.ping,
        "account-create": accounts.account_create,
        "account-rotate": accounts.account_rotate,
        "account-list": accounts.account_list,
        "prune-plan": privacy.prune_plan,
        "prune-table": privacy.prune_table,
        "forget-plan": privacy.forget_plan,
        "forget-table": privacy.forget_table,
        "subject-rows": privacy.subject_rows,
        "deadletter-replay": deadletter_replay.replay_command,
        "tls-status": tls.tls_status,
        "tls-renew": tls.tls_renew,
        "migrate-page": migrate.migrate_page_command,
        "export-run": export.export_run,
        "dashboard-rebuild": rollups.rebuild_command,
    }
)


def run(ctx: admin.AdminContext, name: str, args: dict) -> defer.Deferred:
    """Run admin command ``name``; an unknown name fails with ``AdminError``."""
    fn = ADMIN_COMMANDS.get(name)
    if fn is None:
        return defer.fail(admin.AdminError(f"unknown command {name!r}"))
    return defer.maybeDeferred(fn, ctx, args)
