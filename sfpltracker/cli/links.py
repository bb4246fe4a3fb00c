"""``python -m sfpltracker account create|rotate|list``: credentials of the short-link API.

The secret is generated (or, for a migration, read from stdin with ``--secret-stdin``), shown
once, and stored only as a salted scrypt hash. The commands run inside the running gateway or,
when none runs, against the store directly (``admin.py``).
"""

from __future__ import annotations

import datetime
import sys

from sfpltracker.cli.client import run_command


def arguments(account) -> None:
    actions = account.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an account (prints its secret once)")
    create.add_argument("--org", required=True, help="organisation name")
    create.add_argument("--oid", help="organisation id (UUID) to share with other accounts")
    create.add_argument(
        "--secret-stdin", action="store_true", help="read the secret from stdin (default: random)"
    )
    rotate = actions.add_parser("rotate", help="replace an account's secret (prints it once)")
    rotate.add_argument("uid", help="the account's uid")
    rotate.add_argument("--secret-stdin", action="store_true", help="read the secret from stdin")
    actions.add_parser("list", help="list accounts (never their secrets)")


def run(cfg, ns) -> int:
    args: dict = {}
    if getattr(ns, "secret_stdin", False):
        args["secret"] = sys.stdin.readline().rstrip("\r\n")
    if ns.action == "create":
        args.update(org=ns.org, oid=ns.oid)
        result = run_command(cfg, "account-create", args)
    elif ns.action == "rotate":
        args["uid"] = ns.uid
        result = run_command(cfg, "account-rotate", args)
    else:
        rows = run_command(cfg, "account-list", {})["accounts"]
        print(f"{'uid':36}  {'oid':36}  {'created':20}  {'secret changed':20}  org")
        for row in rows:
            print(
                f"{row['uid']:36}  {row['oid']:36}  {_when(row['created_at']):20}  "
                f"{_when(row['updated_at']):20}  {row['org']}"
            )
        return 0
    print(f"uid:    {result['uid']}")
    print(f"oid:    {result['oid']}")
    print(f"org:    {result['org']}")
    print(f"secret: {result['secret']}")
    print(f"token:  {result['token']}")
    print(
        "Shown once, stored hashed. Use the token as 'Authorization: Bearer <token>', or uid "
        "and secret in /tr/v1/rpi/redirect/<uid>/<secret>.",
        file=sys.stderr,
    )
    return 0


def _when(ms) -> str:
    ms = int(ms or 0)
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
