"""Administrative commands, run by the process that owns the store.

chDB lets only one process open a data directory, so while the gateway runs, ``python -m
sfpltracker <command>`` cannot open the store itself: it asks the running gateway instead, on
``POST /admin/<command>`` of the query listener (loopback by default), proving it may do so with
the token the gateway keeps in ``DataDirectory/admin.token`` (mode 0600: whoever can read the
data directory is an administrator anyway). With no gateway running, the CLI opens the store
itself and runs the very same function. Each command is written once, against the store
interface.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

COMMANDS: dict[str, Callable[..., Any]] = {}

TOKEN_FILE = "admin.token"


class AdminError(Exception):
    """A command refused its arguments; the message is shown to the operator."""


def command(name: str):
    """Register ``fn(ctx, args: dict) -> result | Deferred`` as admin command ``name``."""

    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


class AdminContext:
    """What a command may use: the config and the store (and, in the gateway, the gateway and
    its edge, given by the composition root)."""

    def __init__(self, cfg, store, gateway=None, edge=None):
        self.cfg = cfg
        self.store = store
        self.gateway = gateway
        self.edge = edge


def run(ctx: AdminContext, name: str, args: dict) -> defer.Deferred:
    fn = COMMANDS.get(name)
    if fn is None:
        return defer.fail(AdminError(f"unknown command {name!r}"))
    return defer.maybeDeferred(fn, ctx, args)


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def create_token(data_dir: Path) -> str:
    """A fresh token for this gateway run, readable by the owner only."""
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(token)
    tmp.replace(path)
    return token


@command("schema")
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


@command("ping")
def ping(ctx: AdminContext, args: dict):
    d = ctx.store.ping()
    d.addCallback(lambda _: {"ok": True, "store": ctx.store.kind})
    return d
