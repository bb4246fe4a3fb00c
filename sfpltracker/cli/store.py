"""``python -m sfpltracker schema | query``: the store's schema, and read-only queries."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from urllib.parse import urlencode

from sfpltracker.cli.client import listener_url, run_command
from sfpltracker.config import Config


def schema_arguments(parser) -> None:
    parser.add_argument(
        "--store",
        choices=["embedded", "clickhouse"],
        default=None,
        help="which configured store to load (default: the configured one)",
    )


def cmd_schema(cfg: Config, ns) -> int:
    if ns.store and ns.store != cfg.store_entry().Type:
        sys.stderr.write(f"sfpltracker: no {ns.store} store in {ns.config}\n")
        return 2
    result = run_command(cfg, "schema", {})
    server = f" ({result['server']})" if result.get("server") else ""
    print(f"schema loaded: {result['statements']} statements{server}")
    return 0


def query_arguments(parser) -> None:
    parser.add_argument("sql", help='the statement, or "-" to read it from stdin')
    parser.add_argument("--format", "-f", default="PrettyCompact")
    parser.add_argument("--database", "-d", default="")


def cmd_query(cfg: Config, ns) -> int:
    sql = ns.sql if ns.sql != "-" else sys.stdin.read()
    params = {"default_format": ns.format}
    if ns.database:
        params["database"] = ns.database
    request = urllib.request.Request(
        f"{listener_url(cfg)}/?{urlencode(params)}", data=sql.encode(), method="POST"
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
