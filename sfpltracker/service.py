"""``makeService(config)``: the gateway as a Twisted service tree (used by twistd and the .tac).

Start-up order: open the store and load the schema, then listen; so the first request a
client can make already finds the store ready. Shutdown (SIGTERM) runs it backwards: stop
listening, flush what was accepted, close the store.
"""

from __future__ import annotations

import socket

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from sfpltracker.config import Config, parse_listen
from sfpltracker.edge.assembly import Edge
from sfpltracker.gateway import Gateway
from sfpltracker.tuning import load_lazy_imports, tune_gc
from sfpltracker.web.admin import AdminListener
from sfpltracker.web.query import query_site
from sfpltracker.web.site import GatewayRoot
from sfpltracker.workers import SINGLE, Role

log = Logger()


def tcp_endpoint(reactor, listen: str, backlog: int = 1024):
    interface, port = parse_listen(listen)
    return (
        endpoints.TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=interface)
        if ":" not in interface
        else endpoints.TCP6ServerEndpoint(reactor, port, backlog=backlog, interface=interface)
    )


def listen(reactor, listen: str, factory, fd: int | None = None) -> defer.Deferred:
    """Listen on ``listen``, or on the listening socket ``fd`` a supervisor bound (Workers)."""
    if fd is None:
        return tcp_endpoint(reactor, listen).listen(factory)
    family = socket.AF_INET6 if ":" in parse_listen(listen)[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, fileno=fd)
    # A worker's socket may be bound but not yet listening (workers/supervisor.py: a slot's
    # new sockets join the kernel's SO_REUSEPORT group once served); on a listening socket
    # listen() only sets the backlog again.
    sock.listen(1024)
    port = reactor.adoptStreamPort(sock.fileno(), family, factory)
    sock.close()  # the port holds its own copy
    return defer.succeed(port)


def build_front(gateway: Gateway, reactor) -> tuple[GatewayRoot, Edge]:
    """The web root and the edge (TLS, ACME, Sites, limits) of ``gateway``: the edge's
    fallbacks go after the short links; their metrics join the gateway's."""
    root = GatewayRoot(gateway)
    edge = Edge(gateway, root, reactor)
    root.fallbacks.extend(edge.fallbacks())
    gateway.metric_sources += [root.websocket.metrics, edge.metrics]
    return root, edge


class GatewayService(service.Service):
    """Runs the gateway and its listeners; ``ports`` holds what is listening (for tests)."""

    name = "sfpltracker"  # type: ignore[assignment]  # Twisted's stubs declare None only

    def __init__(self, cfg: Config, reactor=None, role: Role = SINGLE):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.cfg = cfg
        self.reactor = reactor
        self.role = role
        # The composition root, as twisted's web tap: build the parts, then the listeners.
        self.gateway = Gateway(cfg, reactor, role=role)
        self.root, self.edge = build_front(self.gateway, reactor)
        self.ports: dict[str, object] = {}
        self.admin = AdminListener(self.gateway, self.edge, reactor)  # the CLI's channel
        self._starting: defer.Deferred | None = None

    def listeners(self) -> list[tuple[str, str, object]]:
        """(name, address, factory) for every configured listener."""
        cfg = self.cfg
        out: list[tuple[str, str, object]] = []
        if cfg.ProxyPort:
            # ForceHTTPS redirects this listener only (ACME http-01 challenges excepted).
            out.append(("ProxyPort", cfg.ProxyPort, self.edge.site(force_https=cfg.ForceHTTPS)))
        if cfg.ProxyExceptHTTP:
            out.append(("ProxyExceptHTTP", cfg.ProxyExceptHTTP, self.edge.site()))
        if cfg.ProxyPortTLS:
            out.append(("ProxyPortTLS", cfg.ProxyPortTLS, self.edge.tls_site()))
        if cfg.QueryPort and self.role.kind != "worker":
            out.append(("QueryPort", cfg.QueryPort, query_site(self.gateway)))
        if self.role.kind != "single":  # the supervisor's sockets: the edge's to workers
            out = [entry for entry in out if entry[0] in self.role.fds]
        return out

    def startService(self):
        super().startService()
        self._starting = self._start()
        self._starting.addErrback(self._start_failed)

    @defer.inlineCallbacks
    def _start(self):
        yield self.gateway.start()
        load_lazy_imports()  # before the listeners: see tuning.py
        if self.role.kind != "worker":  # admin commands run where the store is
            self.admin.start()
        for name, address, factory in self.listeners():
            port = yield listen(self.reactor, address, factory, self.role.fds.get(name))
            self.ports[name] = port
            log.info("{name} listening on {address}", name=name, address=_address(port))
        self.edge.start()
        tune_gc()  # start-up is done: see tuning.py
        log.info("sfpltracker {version} ready", version=self.gateway.version)

    def _start_failed(self, failure):
        log.critical("start-up failed: {why}", why=failure.getErrorMessage())
        if self.reactor.running:
            self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        yield self.edge.stop()
        for port in self.ports.values():
            yield port.stopListening()
        self.ports.clear()
        yield self.admin.stop()
        yield self.gateway.stop()
        log.info("sfpltracker stopped; everything accepted was flushed")


def _address(port) -> str:
    host = port.getHost()
    return f"{host.host}:{host.port}"


def makeService(cfg: Config, reactor=None, role: Role = SINGLE) -> service.MultiService:
    top = service.MultiService()
    GatewayService(cfg, reactor, role).setServiceParent(top)
    return top
