"""How a command reaches the store: through the running gateway, else on a store opened here.

chDB lets one process open a data directory, so while the gateway runs it is asked over its
admin socket (``POST /admin/<command>`` on ``DataDirectory/admin/admin.sock``, served to this
user only); with no gateway running the store is opened in this process and the same admin
command runs here. See ``admin.py``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import cast

from sfpltracker import admin
from sfpltracker.cli import admin_commands
from sfpltracker.config import Config, parse_listen

ADMIN_TIMEOUT_SECONDS = 600  # a command may copy or export a lot (migrate-page, export)


def listener_url(cfg: Config) -> str:
    host, port = parse_listen(cfg.QueryPort)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


class GatewayNotRunning(Exception):
    pass


class _AdminConnection(http.client.HTTPConnection):
    """HTTP over the gateway's admin socket."""

    def __init__(self, path):
        super().__init__("localhost", timeout=ADMIN_TIMEOUT_SECONDS)
        self.socket_path = path

    def connect(self):
        address, fd = admin.socket_address(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        finally:
            if fd is not None:
                os.close(fd)
        self.sock = sock


def call_running_gateway(cfg: Config, name: str, args: dict) -> dict:
    """Run an admin command in the running gateway; ``GatewayNotRunning`` when there is none."""
    path = admin.socket_path(cfg.data_dir)
    if not path.exists():
        raise GatewayNotRunning
    conn = _AdminConnection(path)
    try:
        conn.request(
            "POST",
            f"/admin/{name}",
            body=json.dumps(args).encode(),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read()
    except (ConnectionRefusedError, FileNotFoundError):
        raise GatewayNotRunning from None  # a socket left by a gateway that was killed
    except (OSError, http.client.HTTPException) as e:
        raise admin.AdminError(f"the running gateway did not answer: {e}") from None
    finally:
        conn.close()
    try:
        answer = json.loads(body)
    except ValueError:
        raise admin.AdminError(f"the running gateway answered {resp.status}") from None
    if resp.status != 200:
        message = answer.get("error") if isinstance(answer, dict) else None
        raise admin.AdminError(message or f"the running gateway answered {resp.status}")
    return answer


def run_with_store(cfg: Config, work):
    """Open the store in this process, run ``work(store) -> Deferred``, close the store.

    For commands that need the store while no gateway runs (chDB: one process at a time).
    """
    from twisted.internet import reactor
    from twisted.internet.base import ReactorBase
    from twisted.python.failure import Failure

    from sfpltracker.gateway import make_store

    outcome: list = []

    def main():
        store = make_store(cfg, reactor)
        d = store.start()
        d.addCallback(lambda _: work(store))

        def close(result):
            return store.stop().addBoth(lambda _: result)

        d.addBoth(close)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    # Every installed reactor is a ReactorBase; Twisted types the global as IReactorCore, whose
    # run() lacks installSignalHandlers.
    cast(ReactorBase, reactor).run(installSignalHandlers=False)
    result = outcome[0]
    if isinstance(result, Failure):
        if result.check(admin.AdminError):
            raise result.value
        raise admin.AdminError(result.getErrorMessage())
    return result


def run_offline(cfg: Config, name: str, args: dict) -> dict:
    """Run admin command ``name`` on a store opened in this process."""
    return run_with_store(
        cfg, lambda store: admin_commands.run(admin.AdminContext(cfg, store), name, args)
    )


def run_command(cfg: Config, name: str, args: dict) -> dict:
    try:
        return call_running_gateway(cfg, name, args)
    except GatewayNotRunning:
        return run_offline(cfg, name, args)
