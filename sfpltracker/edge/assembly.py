"""The front door, built from the config: TLS (SNI, ACME), sites (proxy, static), limits.

``GatewayService`` asks it for its listeners' factories and starts/stops it; everything else
here is wiring of the modules that do the work:

- ``tls/``: the certificate store and SNI server, the self-signed default, ACME renewal;
- ``edge/front.py``: connection cap, ACME http-01, ForceHTTPS, HSTS, RateLimitPerDay, read
  deadline;
- ``edge/hosts.py``, ``edge/proxy.py``, ``edge/static_site.py``: the ``Sites`` fallbacks, which
  the service appends to ``GatewayRoot.fallbacks`` after the short links.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import threads
from twisted.logger import Logger

from sfpltracker.config import ConfigError, parse_listen, worker_count
from sfpltracker.edge.front import EdgeFront, EdgeSite
from sfpltracker.edge.hosts import SiteRouter
from sfpltracker.edge.http import FastHTTPFactory
from sfpltracker.edge.proxy import ProxyFallback
from sfpltracker.edge.sitetrack import make_tracker
from sfpltracker.edge.static_site import StaticFallback
from sfpltracker.edge.tls.acme import (
    HTTP01,
    TLSALPN01,
    AcmeIssuer,
    AcmeManager,
    Http01Tokens,
    Publisher,
    load_stored,
)
from sfpltracker.edge.tls.certs import CertificateError, load_or_create_self_signed, load_pair
from sfpltracker.edge.tls.server import SNIServer, tls_factory
from sfpltracker.workers.tls_share import TlsShare, WorkerTls
from sfpltracker.workers.worker_side import RemoteStore

if TYPE_CHECKING:
    from sfpltracker.gateway import Gateway
    from sfpltracker.web.site import GatewayRoot

log = Logger()

WORKERS_WAIT = 60.0  # seconds the store process waits for its workers before ordering


class Edge:
    """Built by ``GatewayService`` (the composition root), which also lists ``metrics`` among
    the gateway's metric sources and hands the edge to the admin commands (``tls-status``)."""

    def __init__(self, gateway: Gateway, root: GatewayRoot, reactor):
        cfg = gateway.cfg
        self.gateway = gateway
        self.root = root
        self.reactor = reactor
        self.router = SiteRouter.from_config(cfg)
        track = make_tracker(gateway)
        self.proxy = ProxyFallback(
            gateway,
            self.router,
            reactor,
            connect_timeout=cfg.ProxyConnectTimeoutSeconds,
            read_timeout=cfg.ProxyTimeoutSeconds,
            track=track,
        )
        self.static = StaticFallback(self.router, reactor, track=track)
        self.http01 = Http01Tokens()
        self.limiter = gateway.limiter  # RateLimitPerDay: built by the gateway (shared by workers)
        self.sni: SNIServer | None = None
        self.acme: AcmeManager | None = None
        self.share: TlsShare | None = None  # the store process's link to the workers' TLS
        self._stopped = False
        if cfg.ProxyPortTLS:
            self._setup_tls()

    # -- assembly ----------------------------------------------------------------------------

    def fallbacks(self) -> list:
        """The ``Sites`` fallbacks, in order: proxy routes, then static files."""
        return [self.proxy, self.static] if self.router else []

    def site(self, *, force_https: bool = False):
        cfg = self.gateway.cfg
        https_port = parse_listen(cfg.ProxyPortTLS)[1] if cfg.ProxyPortTLS else None
        if cfg.ProxyPortRedirect:  # the original's key: where the redirect points
            https_port = int(cfg.ProxyPortRedirect[1:])
        front = EdgeFront(
            self.gateway,
            self.root,
            http01=self.http01,
            limiter=self.limiter,
            force_https=force_https,
            https_port=https_port,
            hsts=cfg.HSTS,
        )
        site = EdgeSite(self.gateway, front, edge=self, reactor=self.reactor)
        if cfg.HTTPServer == "fast":
            return FastHTTPFactory(site)  # edge/http.py: httptools, hot routes without twisted.web
        return site

    def tls_site(self):
        """The factory for ``ProxyPortTLS``: TLS with SNI in front of an edge site."""
        return tls_factory(self.sni, self.site())

    def wants_stream(self, host: bytes | None, path: bytes) -> bool:
        """Only proxy routes stream bodies; paths the gateway itself serves never do."""
        if not self.router or path in self.root.ops:
            return False
        prefix = self.root.prefix + b"/"
        if path.startswith(prefix) and path[len(prefix) :].split(b"/", 1)[0] in self.root.api:
            return False
        return self.proxy.wants_stream(host, path)

    def _setup_tls(self) -> None:
        cfg = self.gateway.cfg
        self.sni = SNIServer()
        if cfg.TLSCert or cfg.TLSKey:
            if not (cfg.TLSCert and cfg.TLSKey):
                raise ConfigError("TLSCert and TLSKey: give both or neither")
            try:
                default = load_pair(cfg.path(cfg.TLSCert), cfg.path(cfg.TLSKey), "local")
            except CertificateError as e:
                raise ConfigError(f"TLSCert/TLSKey: {e}") from None
            log.info("TLS: default certificate {pair}", pair=default.describe())
        else:
            names = ["localhost", "127.0.0.1", "::1", *cfg.Domains]
            names += [h for h in cfg.Sites if h != "*"] + list(cfg.LetsEncryptDomains)
            default = load_or_create_self_signed(cfg.data_dir / "tls", names)
        self.sni.store.set_default(default)
        if cfg.LetsEncryptDomains:
            self._setup_acme()

    def _setup_acme(self) -> None:
        cfg = self.gateway.cfg
        sni = self.sni
        assert sni is not None  # _setup_tls made it just before
        role = self.gateway.role.kind
        if role == "worker":
            self._serve_acme_from_store()
            return
        challenge = cfg.ACMEChallenge
        if challenge == "auto":
            challenge = HTTP01 if cfg.ProxyPort else TLSALPN01
        install = self._install_acme
        publisher = Publisher(self.reactor, self.http01, sni.challenges)
        if role == "store" and self.gateway.store_server is not None:
            # Workers > 1: the workers serve what this process obtains
            share = self.share = self.gateway.store_server.tls
            install = self._install_shared
            publisher = Publisher(
                self.reactor,
                SimpleNamespace(add=share.add_http01, remove=share.remove_http01),
                SimpleNamespace(add=share.add_alpn, remove=share.remove_alpn),
            )
        issuer = AcmeIssuer(cfg.ACMEDirectory, cfg.ACMEEmail, cfg.data_dir / "acme", publisher)
        pool = self.reactor.getThreadPool()

        def issue(domain):
            return threads.deferToThreadPool(self.reactor, pool, issuer.issue, domain, challenge)

        self.acme = AcmeManager(
            self.reactor,
            list(cfg.LetsEncryptDomains),
            cfg.ACMERenewDays,
            issue=issue,
            load=issuer.load_stored,
            install=install,
            describe=f"from {cfg.ACMEDirectory} via {challenge}",
            count=self.gateway.count if self.share is not None else None,
        )
        self.acme.load()

    def _install_acme(self, domain: str, pair) -> None:
        assert self.sni is not None
        self.sni.store.install(pair, [domain])

    def _install_shared(self, domain: str, pair):
        self._install_acme(domain, pair)  # what `tls status` shows
        assert self.share is not None
        return self.share.install(domain, pair)

    def _serve_acme_from_store(self) -> None:
        """A worker: serve the stored certificates now (before listening), then what the
        store process sends (workers/tls_share.py)."""
        cfg = self.gateway.cfg
        assert self.sni is not None
        for domain in cfg.LetsEncryptDomains:
            pair = load_stored(cfg.data_dir / "acme", domain.lower())
            if pair is not None:
                self._install_acme(domain.lower(), pair)
        store = self.gateway.store
        if isinstance(store, RemoteStore):
            store.link.tls = WorkerTls(self.http01, self.sni.challenges, self.sni.store)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Called once the listeners are up (ACME validation needs them)."""
        if self.acme is None:
            return
        if self.share is None:
            self.acme.start()
            return
        # The store process: the workers answer the CA, so wait for them to be connected
        # (a worker still missing then answers after it connects; a failed order is retried).
        d = self.share.when_connected(worker_count(self.gateway.cfg), WORKERS_WAIT)
        d.addCallback(self._start_acme)

    def _start_acme(self, _=None) -> None:
        if self.acme is not None and not self._stopped:
            self.acme.start()

    def stop(self):
        self._stopped = True
        if self.acme is not None:
            self.acme.stop()
        self.proxy.close()

    # -- reporting ---------------------------------------------------------------------------

    def metrics(self):
        gw = self.gateway
        if self.sni is not None:
            expiry = GaugeMetricFamily(
                "sfpl_tls_certificate_expiry_days",
                "Days until the served certificate expires (name empty: the default one)",
                labels=["name", "source"],
            )
            for name, pair in self.sni.store.served():
                expiry.add_metric([name, pair.source], pair.days_left())
            yield expiry
        acme = None
        if self.acme is not None:
            acme = {"acme_certificates_issued": self.acme.issued, "acme_failures": self.acme.failed}
        elif gw.role.kind == "worker" and gw.cfg.LetsEncryptDomains:
            acme = gw.total_counters()  # the store process's ACME, via the supervisor's totals
        if acme is not None:
            yield CounterMetricFamily(
                "sfpl_acme_certificates_issued",
                "Certificates obtained via ACME",
                acme.get("acme_certificates_issued", 0),
            )
            yield CounterMetricFamily(
                "sfpl_acme_failures",
                "Failed ACME attempts (each is retried)",
                acme.get("acme_failures", 0),
            )
        totals = gw.total_counters()  # Workers > 1: over every process
        for key, name, doc in (
            ("connections_refused", "sfpl_connections_refused", "Answered 503 over MaxConnections"),
            (
                "requests_rate_limited",
                "sfpl_requests_rate_limited",
                "Answered 429 (RateLimitPerDay)",
            ),
            ("requests_timed_out", "sfpl_requests_timed_out", "Answered 408 (ReadTimeoutSeconds)"),
            (
                "http_fast_answers",
                "sfpl_http_fast_answers",
                "Requests answered by HTTPServer fast without a twisted.web Request",
            ),
        ):
            yield CounterMetricFamily(name, doc, totals.get(key, 0))
        errors = CounterMetricFamily(
            "sfpl_proxy_upstream_errors", "Proxy answers 502/504", labels=["status"]
        )
        for status, count in sorted(self.proxy.errors.items()):
            errors.add_metric([status], count)
        yield errors
        yield CounterMetricFamily(
            "sfpl_proxy_request_body_bytes",
            "Request body bytes streamed to upstreams",
            self.proxy.stats["streamed_bytes"],
        )
        yield GaugeMetricFamily(
            "sfpl_proxy_request_body_pending_peak_bytes",
            "Most request body bytes ever held waiting for an upstream",
            self.proxy.stats["peak_pending"],
        )

    def tls_status(self) -> dict:
        certs = []
        if self.sni is not None:
            for name, pair in self.sni.store.served():
                certs.append(
                    {
                        "name": name or "(default)",
                        "source": pair.source,
                        "serial": f"{pair.serial:x}",
                        "not_after": pair.not_after.isoformat(),
                        "days_left": round(pair.days_left(), 3),
                    }
                )
        return {"certificates": certs, "acme": self.acme.status() if self.acme else []}
