"""Administrative commands, run by the process that owns the store.

chDB lets only one process open a data directory, so while the gateway runs, ``python -m
sfpltracker <command>`` cannot open the store itself: it asks the running gateway instead, on
``POST /admin/<command>`` over the Unix-domain socket ``DataDirectory/admin/admin.sock``
(``web/admin.py``). Who may connect is decided by the file system and the kernel, not by a
secret: the socket's directory is 0700, the socket 0600, and the gateway accepts only a peer
of its own user (or root), as ``SO_PEERCRED`` tells. There is no token, so there is none to
read: a query that reached a file (chDB reads any path the process can, which only the query
guard prevents) could not learn how to run a command; a socket cannot be read as a file. The
query listener (TCP) runs no admin command. With no gateway running, the CLI opens the store
itself and runs the very same function. Each command is written once, against the store
interface. Which commands exist, and what they run, is the list in ``cli/admin_commands.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet import defer

SOCKET_DIR = "admin"
SOCKET_FILE = "admin.sock"
# Left by versions that authorised the CLI with a bearer token: removed at start.
OLD_TOKEN_FILE = "admin.token"
# sockaddr_un holds a path of at most 107 bytes (Linux); a longer one is reached through
# the directory's descriptor (``socket_address``).
MAX_SOCKET_PATH = 107


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


def socket_path(data_dir: Path) -> Path:
    """The admin socket of the gateway whose ``DataDirectory`` is ``data_dir``."""
    return Path(data_dir) / SOCKET_DIR / SOCKET_FILE


def prepare_socket_dir(data_dir: Path) -> Path:
    """The socket's directory, owner-only (also when an older one was made otherwise), with
    no stale socket and no token of an older version left; returns the socket's path."""
    path = socket_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    for stale in (path, Path(data_dir) / OLD_TOKEN_FILE):
        # The store is open (chDB's lock): no other gateway uses this data directory.
        stale.unlink(missing_ok=True)
    return path


def socket_address(path: Path) -> tuple[str, int | None]:
    """``(address, fd)`` to bind or connect ``path``: the path itself, or for a path longer
    than a socket address holds, ``/proc/self/fd/<fd>/admin.sock`` through a descriptor of
    its directory (the caller closes ``fd`` once bound or connected)."""
    text = str(path)
    if len(os.fsencode(text)) <= MAX_SOCKET_PATH:
        return text, None
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


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
