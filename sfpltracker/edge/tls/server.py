"""The OpenSSL side of the HTTPS listener: one context per certificate, SNI picks it.

Every context is built the same way: TLS 1.2 minimum, forward-secret AEAD ciphers for TLS 1.2
(TLS 1.3 suites are OpenSSL's defaults, all modern), no compression or renegotiation, and ALPN
``http/1.1`` only (this server speaks HTTP/1.1). The SNI callback switches the connection to
the context of the name the client asked for; the ALPN callback answers a CA's tls-alpn-01
probe (``acme-tls/1``) with the validation certificate of a pending challenge.

Twisted runs it: ``TLSMemoryBIOFactory(SNIServer(...), False, site)`` wraps any HTTP factory.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from sfpltracker.edge.tls.alpn import ACME_TLS_1
from sfpltracker.edge.tls.certs import CertPair, CertStore

log = Logger()

HTTP_1_1 = b"http/1.1"

# Mozilla "intermediate" TLS 1.2 suites: ECDHE key exchange, AEAD only.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class AlpnChallenges:
    """Pending tls-alpn-01 validation certificates by domain (set from the ACME thread)."""

    def __init__(self):
        self.by_domain: dict[str, CertPair] = {}

    def add(self, domain: str, pair: CertPair) -> None:
        self.by_domain[domain.lower()] = pair

    def remove(self, domain: str) -> None:
        self.by_domain.pop(domain.lower(), None)


@implementer(IOpenSSLServerConnectionCreator)
class SNIServer:
    """Creates server-side ``SSL.Connection``s for Twisted; owns the certificate store."""

    def __init__(self, challenges: AlpnChallenges | None = None):
        self.challenges = challenges or AlpnChallenges()
        self.store = CertStore(self.context)

    def context(self, pair: CertPair) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(
            SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
        )
        ctx.set_cipher_list(TLS12_CIPHERS.encode())
        ctx.use_certificate(pair.leaf)
        for extra in pair.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(pair.key)
        ctx.check_privatekey()
        ctx.set_session_id(b"sfpltracker")
        ctx.set_tlsext_servername_callback(self._servername)
        ctx.set_alpn_select_callback(self._alpn)
        return ctx

    def serverConnectionForTLS(self, tlsProtocol):  # noqa: N802 - Twisted's interface
        return SSL.Connection(self.store.default_context(), None)

    def _servername(self, connection: SSL.Connection) -> None:
        context = self.store.context_for(connection.get_servername())
        if context is not None:
            connection.set_context(context)

    def _alpn(self, connection: SSL.Connection, offered: list[bytes]):
        if ACME_TLS_1 in offered:
            name = (connection.get_servername() or b"").decode("ascii", "replace").lower()
            pair = self.challenges.by_domain.get(name)
            if pair is None:
                log.info("tls-alpn-01 probe for {name} with no pending challenge", name=name)
                return SSL.NO_OVERLAPPING_PROTOCOLS
            # The certificate is chosen after ALPN, so the validation one can still replace
            # the host's; only this connection (the CA's probe) sees it.
            connection.use_certificate(pair.leaf)
            connection.use_privatekey(pair.key)
            log.info("tls-alpn-01: presented the validation certificate for {name}", name=name)
            return ACME_TLS_1
        if HTTP_1_1 in offered:
            return HTTP_1_1
        return SSL.NO_OVERLAPPING_PROTOCOLS


def tls_factory(server: SNIServer, wrapped):
    """A listening factory speaking TLS (per ``server``) in front of ``wrapped``."""
    # SNIServer provides IOpenSSLServerConnectionCreator (zope @implementer: mypy cannot see it)
    return TLSMemoryBIOFactory(server, False, wrapped)  # type: ignore[arg-type]
