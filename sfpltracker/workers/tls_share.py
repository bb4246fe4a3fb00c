"""ACME with workers: the store process obtains certificates, every worker serves them.

The store process runs the ACME client (account, orders, renewals, the files under
``DataDirectory/acme``), as it runs the other admin work (``tls renew`` reaches it through the
admin socket). The CA's validation connection reaches whichever worker the kernel gives it to,
so a challenge answer is pushed to every connected worker, and each has answered, before the CA
is told to validate (``TlsShare``). A new certificate is pushed the same way and installed live
in each worker's certificate store: the next handshake uses it, open connections keep theirs.

A worker that (re)connects gets everything current at once (``attach``); a worker that starts
also reads the stored certificates from ``DataDirectory/acme/certs`` before it listens, so it
serves the current one even while the store process is down.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp

from sfpltracker.edge.tls.certs import CertificateError, CertPair, CertStore, parse_pair
from sfpltracker.workers import protocol as cmds

log = Logger()

PUSH_TIMEOUT = 10.0  # seconds a worker has to take a challenge or certificate


class TlsShare:
    """Store process: what every worker's listeners must serve, sent to each connection."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.conns: set[amp.AMP] = set()
        self.http01: dict[str, tuple[str, str]] = {}  # token -> (domain, key authorization)
        self.alpn: dict[str, CertPair] = {}  # domain -> validation certificate
        self.certs: dict[str, CertPair] = {}  # domain -> certificate served
        self._waiting: list[tuple[int, defer.Deferred]] = []

    # -- connections --------------------------------------------------------------------------

    def attach(self, conn: amp.AMP) -> None:
        """A worker connected: send it everything current."""
        self.conns.add(conn)
        for token, (domain, keyauth) in self.http01.items():
            self._send(conn, cmds.AcmeHttp01, _http01(token, domain, keyauth, False))
        for domain, pair in self.alpn.items():
            self._send(conn, cmds.AcmeAlpn, _alpn(domain, pair, False))
        for domain, pair in self.certs.items():
            self._send(conn, cmds.TlsCertificate, _cert(domain, pair))
        for n, d in list(self._waiting):
            if len(self.conns) >= n:
                _fire(d)

    def detach(self, conn: amp.AMP) -> None:
        self.conns.discard(conn)

    def when_connected(self, n: int, timeout: float) -> defer.Deferred:
        """Fires once ``n`` workers are connected, or after ``timeout`` seconds anyway."""
        if len(self.conns) >= n:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        entry = (n, d)
        self._waiting.append(entry)
        call = self.reactor.callLater(timeout, _fire, d)

        def done(result):
            self._waiting.remove(entry)
            if call.active():
                call.cancel()
            return result

        return d.addBoth(done)

    # -- what the ACME client publishes (on the reactor; each fires once every worker has it) --

    def add_http01(self, token: str, domain: str, key_authorization: str) -> defer.Deferred:
        self.http01[token] = (domain, key_authorization)
        return self._broadcast(cmds.AcmeHttp01, _http01(token, domain, key_authorization, False))

    def remove_http01(self, token: str) -> defer.Deferred:
        domain, keyauth = self.http01.pop(token, ("", ""))
        return self._broadcast(cmds.AcmeHttp01, _http01(token, domain, keyauth, True))

    def add_alpn(self, domain: str, pair: CertPair) -> defer.Deferred:
        self.alpn[domain] = pair
        return self._broadcast(cmds.AcmeAlpn, _alpn(domain, pair, False))

    def remove_alpn(self, domain: str) -> defer.Deferred:
        pair = self.alpn.pop(domain, None)
        if pair is None:
            return defer.succeed(None)
        return self._broadcast(cmds.AcmeAlpn, _alpn(domain, pair, True))

    def install(self, domain: str, pair: CertPair) -> defer.Deferred:
        self.certs[domain] = pair
        return self._broadcast(cmds.TlsCertificate, _cert(domain, pair))

    def _broadcast(self, command, args: dict) -> defer.Deferred:
        # A worker that fails to take it (dying, stuck) does not stop the others: the CA's
        # validation may then fail on it, and the ACME client retries with backoff.
        calls = [self._send(conn, command, args) for conn in list(self.conns)]
        return defer.DeferredList(calls, consumeErrors=True)

    def _send(self, conn: amp.AMP, command, args: dict) -> defer.Deferred:
        d = conn.callRemote(command, **args)
        d.addTimeout(PUSH_TIMEOUT, self.reactor)
        d.addErrback(
            lambda f: log.warn(
                "ACME: a worker did not take {command}: {why}",
                command=command.__name__,
                why=f.getErrorMessage(),
            )
        )
        return d


def _fire(d: defer.Deferred) -> None:
    if not d.called:
        d.callback(None)


def _http01(token: str, domain: str, keyauth: str, remove: bool) -> dict:
    return {"token": token, "domain": domain, "key_authorization": keyauth, "remove": remove}


def _alpn(domain: str, pair: CertPair, remove: bool) -> dict:
    return {
        "domain": domain,
        "fullchain": pair.fullchain_pem,
        "key": pair.key_pem,
        "remove": remove,
    }


def _cert(domain: str, pair: CertPair) -> dict:
    return {"domain": domain, "fullchain": pair.fullchain_pem, "key": pair.key_pem}


class WorkerTls:
    """Worker: takes what the store process sends into its listeners' state."""

    def __init__(self, http01, alpn, store: CertStore):
        self.http01 = http01  # acme.Http01Tokens
        self.alpn = alpn  # server.AlpnChallenges
        self.store = store

    def take_http01(self, token, domain, key_authorization, remove) -> None:
        if remove:
            self.http01.remove(token)
        else:
            self.http01.add(token, domain, key_authorization)

    def take_alpn(self, domain, fullchain, key, remove) -> None:
        if remove:
            self.alpn.remove(domain)
        else:
            self.alpn.add(domain, parse_pair(fullchain, key, "acme-tls/1"))

    def take_certificate(self, domain, fullchain, key) -> None:
        try:
            pair = parse_pair(fullchain, key, "acme", where=f"{domain} (from the store process)")
        except CertificateError as e:
            log.error(
                "ACME: not serving the certificate sent for {domain}: {why}", domain=domain, why=e
            )
            raise
        current = self.store.pair_for(domain)
        if current is not None and current.source == "acme" and current.serial == pair.serial:
            return  # already served (sent again on reconnecting)
        pair.names = [domain]
        self.store.install(pair, [domain])
        log.info(
            "ACME: certificate for {domain} from the store process now served: {pair}",
            domain=domain,
            pair=pair.describe(),
        )
