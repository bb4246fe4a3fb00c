"""``python -m sfpltracker <command>``: schema, query, and the admin commands.

A command that needs the store asks the running gateway (the owner of the store) over the
query listener; with no gateway running it opens the store itself. See ``admin.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from urllib.parse import urlencode

from sfpltracker import admin
from sfpltracker.cli import links as links_cli
from sfpltracker.config import Config, ConfigError, load, parse_listen
from sfpltracker.links import accounts as _accounts  # noqa: F401 - registers the account-* admin commands


def _listener_url(cfg: Config) -> str:
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
        f"{_listener_url(cfg)}/admin/{name}",
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
    reactor.run(installSignalHandlers=False)
    result = outcome[0]
    if isinstance(result, Failure):
        if result.check(admin.AdminError):
            raise result.value
        raise admin.AdminError(result.getErrorMessage())
    return result


def run_offline(cfg: Config, name: str, args: dict) -> dict:
    """Run admin command ``name`` on a store opened in this process."""
    return run_with_store(cfg, lambda store: admin.run(admin.AdminContext(cfg, store), name, args))


def run_command(cfg: Config, name: str, args: dict) -> dict:
    try:
        return call_running_gateway(cfg, name, args)
    except GatewayNotRunning:
        return run_offline(cfg, name, args)


def cmd_query(cfg: Config, ns) -> int:
    sql = ns.sql if ns.sql != "-" else sys.stdin.read()
    params = {"default_format": ns.format}
    if ns.database:
        params["database"] = ns.database
    request = urllib.request.Request(
        f"{_listener_url(cfg)}/?{urlencode(params)}", data=sql.encode(), method="POST"
    )
    if cfg.QueryUser or cfg.QueryPassword:
        request.add_header("X-ClickHouse-User", cfg.QueryUser)
        request.add_header("X-ClickHouse-Key", cfg.QueryPassword)
    try:
        with urllib.request.urlopen(request, timeout=600) as resp:
            sys.stdout.buffer.write(resp.read())
        return 0
    except urllib.error.HTTPError as e:
        sys.stderr.write(e.read().decode(errors="replace"))
        return 1
    except urllib.error.URLError as e:
        sys.stderr.write(
            f"sfpltracker: cannot reach the query listener {cfg.QueryPort}: {e.reason}\n"
        )
        sys.stderr.write("Is the gateway running? (twistd -n sfpltracker --config ...)\n")
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sfpltracker")
    parser.add_argument("--config", "-c", default="config.json", help="config file")
    sub = parser.add_subparsers(dest="command", required=True)

    schema = sub.add_parser("schema", help="load the schema (idempotent)")
    schema.add_argument(
        "--store",
        choices=["embedded", "clickhouse"],
        default=None,
        help="which configured store to load (default: the configured one)",
    )

    query = sub.add_parser("query", help="run a read-only query through the running gateway")
    query.add_argument("sql", help='the statement, or "-" to read it from stdin')
    query.add_argument("--format", "-f", default="PrettyCompact")
    query.add_argument("--database", "-d", default="")
    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


# Feature modules add their subcommands here: fn(subparsers) registering a parser whose
# defaults carry ``handler=fn(cfg, namespace) -> int``.
EXTRA_COMMANDS: list = []
EXTRA_COMMANDS.append(links_cli.register)

from sfpltracker.cli.privacy import register as _register_privacy  # noqa: E402 - prune, forget, export

EXTRA_COMMANDS.append(_register_privacy)

from sfpltracker.migrate import register as _register_migrate  # noqa: E402 - migrate --from

EXTRA_COMMANDS.append(_register_migrate)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg = load(ns.config)
    except ConfigError as e:
        sys.stderr.write(f"sfpltracker: config error: {e}\n")
        return 2
    try:
        if ns.command == "query":
            return cmd_query(cfg, ns)
        if ns.command == "schema":
            if ns.store and ns.store != cfg.store_entry().Type:
                sys.stderr.write(f"sfpltracker: no {ns.store} store in {ns.config}\n")
                return 2
            result = run_command(cfg, "schema", {})
            server = f" ({result['server']})" if result.get("server") else ""
            print(f"schema loaded: {result['statements']} statements{server}")
            return 0
        return ns.handler(cfg, ns)
    except admin.AdminError as e:
        sys.stderr.write(f"sfpltracker: {e}\n")
        return 1


# Subcommands of feature modules (imported last: they append to EXTRA_COMMANDS above).
from sfpltracker.cli import deadletter as _deadletter_cli  # noqa: E402, F401
from sfpltracker.cli import tls as _tls_cli  # noqa: E402, F401
