"""How a command reaches the store: through the running gateway, else on a store opened here.

chDB lets one process open a data directory, so while the gateway runs it is asked over the
query listener (``POST /admin/<command>`` with the token in ``DataDirectory``); with no gateway
running the store is opened in this process and the same admin command runs here. See
``admin.py``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import cast

from sfpltracker import admin
from sfpltracker.cli import admin_commands
from sfpltracker.config import Config, parse_listen


def listener_url(cfg: Config) -> str:
    host, port = parse_listen(cfg.QueryPort)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


class GatewayNotRunning(Exception):
    pass


def call_running_gateway(cfg: Config, name: str, args: dict) -> dict:
    """Run an admin command in the running gateway; ``GatewayNotRunning`` when there is none."""
    token_file = admin.token_path(cfg.data_dir)
    if not cfg.QueryPort or not token_file.exists():
        raise GatewayNotRunning
    request = urllib.request.Request(
        f"{listener_url(cfg)}/admin/{name}",
        data=json.dumps(args).encode(),
        headers={"X-Sfpl-Admin-Token": token_file.read_text().strip()},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", str(e))
        except ValueError:
            message = str(e)
        raise admin.AdminError(message) from None
    except (urllib.error.URLError, ConnectionError):
        raise GatewayNotRunning from None


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
