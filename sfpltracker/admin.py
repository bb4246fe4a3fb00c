"""Administrative commands, run by the process that owns the store.

chDB lets only one process open a data directory, so while the gateway runs, ``python -m
sfpltracker <command>`` cannot open the store itself: it asks the running gateway instead, on
``POST /admin/<command>`` of the query listener (loopback by default), proving it may do so with
the token the gateway keeps in ``DataDirectory/admin.token`` (mode 0600: whoever can read the
data directory is an administrator anyway). With no gateway running, the CLI opens the store
itself and runs the very same function. Each command is written once, against the store
interface. Which commands exist, and what they run, is the list in
``cli/admin_commands.py``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from twisted.internet import defer

from sfpltracker.fsutil import write_atomic

TOKEN_FILE = "admin.token"


class AdminError(Exception):
    """A command refused its arguments; the message is shown to the operator."""


class AdminContext:
    """What a command may use: the config and the store (and, in the gateway, the gateway and
    its edge, given by the composition root)."""

    def __init__(self, cfg, store, gateway=None, edge=None):
        self.cfg = cfg
        self.store = store
        self.gateway = gateway
        self.edge = edge


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def create_token(data_dir: Path) -> str:
    """A fresh token for this gateway run, readable by the owner only."""
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    write_atomic(path, token, 0o600)
    return token


def load_schema(ctx: AdminContext, args: dict):
    """(Re)load the schema files; idempotent."""
    d = defer.maybeDeferred(ctx.store.load_schema)
    # A server store says which server answered (its version is checked against the schema).
    d.addCallback(
        lambda count: {
            "ok": True,
            "statements": count,
            "server": ctx.store.server_version,
        }
    )
    return d


def ping(ctx: AdminContext, args: dict):
    d = ctx.store.ping()
    d.addCallback(lambda _: {"ok": True, "store": ctx.store.kind})
    return d
