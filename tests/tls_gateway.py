"""The gateway service plus an HTTPS listener on the same site, until the TLS edge lands.

    python tests/tls_gateway.py CONFIG.json CERT.pem KEY.pem PORT

``ProxyPortTLS`` is not served yet (certificates and ACME are another part); this serves the
very ``GatewaySite`` and ``GatewayRoot`` of the running service over TLS too, so the WebSocket
hand-over can be tested on a TLS transport (``TLSMemoryBIOProtocol``), as it will run there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor, ssl  # noqa: E402

from sfpltracker.config import load  # noqa: E402
from sfpltracker.service import GatewayService  # noqa: E402
from sfpltracker.web.site import GatewaySite  # noqa: E402

if __name__ == "__main__":
    from twisted.logger import globalLogBeginner, textFileLogObserver

    config, cert, key, port = sys.argv[1:5]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = GatewayService(load(config), reactor)
    service.startService()
    site = GatewaySite(service.gateway, service.root, reactor=reactor)
    reactor.listenSSL(
        int(port), site, ssl.DefaultOpenSSLContextFactory(key, cert), interface="127.0.0.1"
    )
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
