"""The short-link parts of one gateway: repository, cache, accounts and their counters.

Built once by the gateway (the composition root) and shared by the admin API and the serving
path; the gateway lists it among its components (the cache loads once the store is ready and
stops polling before the store closes) and its metric sources (``/metrics``).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer

from sfpltracker.config import Config
from sfpltracker.links.accounts import Accounts, AuthFailed, Credentials
from sfpltracker.links.cache import LinkCache
from sfpltracker.links.policy import RedirectPolicy
from sfpltracker.links.repository import LinkRepository
from sfpltracker.links.throttle import LoginThrottle
from sfpltracker.store.interface import Store


class ShortLinkService:
    def __init__(self, cfg: Config, store: Store, reactor, **cache_options):
        self.repo = LinkRepository(store, reactor, cfg.IgnoreQueryParamsKey)
        self.cache = LinkCache(self.repo, reactor, **cache_options)
        self.accounts = Accounts(store, reactor)
        self.policy = RedirectPolicy(cfg.Domains, cfg.RedirectAllowHosts)
        self.throttle = (
            LoginThrottle(cfg.LoginFailureLimit, cfg.LoginFailureWindowSeconds, reactor)
            if cfg.LoginFailureLimit > 0
            else None
        )
        self.counters = {
            "hits": 0,  # short-link redirects answered
            "misses": 0,  # requests on a link host that matched no live link
            "untracked": 0,  # redirects (short links, /rdr/, /xrdr/) whose click was refused
            "auth_failures": 0,  # admin API calls with missing or wrong credentials
            "auth_throttled": 0,  # admin API calls refused (429) after too many failed logins
            "changes": 0,  # links created, updated or deleted through this process
        }

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    @defer.inlineCallbacks
    def authenticate(self, creds: Credentials | None, ip: str, now_ms: int):
        """The account of ``creds``, behind the login throttle (the admin API and the dashboard
        sign-in share it): ``Throttled`` before any password check once ``ip`` or the uid
        failed too often, ``AuthFailed`` for missing or wrong credentials."""
        attempt = None
        if self.throttle is not None and creds is not None and creds.secret:  # a check will run
            attempt = self.throttle.attempt(ip, creds.uid)
        try:
            account = yield self.accounts.authenticate(creds, now_ms)
        except AuthFailed:
            if attempt is not None:
                attempt.failed()
            raise
        except Exception:
            if attempt is not None:
                attempt.abandoned()
            raise
        if attempt is not None:
            attempt.succeeded()
        return account

    def start(self):
        return self.cache.start()

    def stop(self):
        return self.cache.stop()

    def metrics(self):
        c = self.counters
        cache = self.cache
        yield CounterMetricFamily("sfpl_shortlink_hits", "Short-link redirects answered", c["hits"])
        yield CounterMetricFamily(
            "sfpl_shortlink_misses", "Requests on a link host matching no live link", c["misses"]
        )
        yield CounterMetricFamily(
            "sfpl_shortlink_untracked",
            "Redirects (short links, /rdr/, /xrdr/) whose click event the intake refused",
            c["untracked"],
        )
        yield CounterMetricFamily(
            "sfpl_shortlink_store_queries",
            "Statements the short-link module sent to the store (lookups, polls, reloads, lists)",
            self.repo.queries,
        )
        yield CounterMetricFamily(
            "sfpl_shortlink_store_lookups", "Serving lookups that had to ask the store",
            cache.lookups,
        )  # fmt: skip
        yield CounterMetricFamily("sfpl_shortlink_reloads", "Link table reloads", cache.reloads)
        yield CounterMetricFamily(
            "sfpl_rpi_auth_failures", "Admin API calls refused for credentials", c["auth_failures"]
        )
        yield CounterMetricFamily(
            "sfpl_rpi_auth_throttled",
            "Admin API calls refused without a password check after too many failed logins",
            c["auth_throttled"],
        )
        yield CounterMetricFamily(
            "sfpl_rpi_password_checks", "Admin API password checks run (scrypt)",
            self.accounts.checks,
        )  # fmt: skip
        yield CounterMetricFamily(
            "sfpl_shortlink_changes", "Links changed through this process", c["changes"]
        )
        size = GaugeMetricFamily("sfpl_shortlink_cached", "Links held in memory", labels=["mode"])
        size.add_metric([cache.mode], len(cache.index if cache.index is not None else cache.lru))
        yield size
