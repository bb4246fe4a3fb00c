"""The gateway with its WebSocket messages echoed instead of ingested, for the Autobahn cases.

    python tests/ws_echo_gateway.py CONFIG.json

The Autobahn testsuite judges most cases by the echo of what it sent; an ingestion endpoint
never echoes. This runs the real service (``makeService``: listeners, ``GatewaySite``,
``GatewayRoot``, the ``/tr/v1/ws`` resource with its origin/limit checks, hand-over, Autobahn
factory options, idle timeout, close codes) and replaces only what the protocol does with a
complete message: it sends it back. Everything the suite tests (framing, fragmentation, UTF-8,
control frames, closing handshake, permessage-deflate, limits) is the gateway's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402

from sfpltracker.config import load  # noqa: E402
from sfpltracker.service import GatewayService  # noqa: E402


def echo_service(config_path: str) -> GatewayService:
    service = GatewayService(load(config_path), reactor)
    ws = service.root.api[b"ws"]
    base = ws.factory.protocol

    class EchoProtocol(base):
        def onMessage(self, payload, isBinary):
            self.sendMessage(payload, isBinary)

    ws.factory.protocol = EchoProtocol
    return service


if __name__ == "__main__":
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = echo_service(sys.argv[1])
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
