"""``python -m sfpltracker tls status|renew [DOMAIN]``: ask the running gateway.

``status`` lists the certificates served (name, source, serial, expiry) and the ACME state of
each of ``LetsEncryptDomains`` (failures, last error); ``renew DOMAIN`` obtains a new
certificate for it at once and puts it in service without a restart.
"""

from __future__ import annotations

import json
import sys

from sfpltracker.cli.client import GatewayNotRunning, call_running_gateway


def arguments(tls) -> None:
    tls.add_argument("action", choices=["status", "renew"])
    tls.add_argument("domain", nargs="?", default="", help="for renew: one of LetsEncryptDomains")


def run(cfg, ns) -> int:
    if ns.action == "renew" and not ns.domain:
        sys.stderr.write("sfpltracker: tls renew needs a DOMAIN\n")
        return 2
    try:
        result = call_running_gateway(cfg, f"tls-{ns.action}", {"domain": ns.domain})
    except GatewayNotRunning:
        sys.stderr.write("sfpltracker: tls needs the running gateway (twistd sfpltracker)\n")
        return 1
    print(json.dumps(result, indent=2))
    return 0
