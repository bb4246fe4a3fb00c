"""``Sites``: which host is served from which static root and proxy routes.

A request's ``Host`` (lower-cased, port removed) picks its entry; an unknown host uses the
``*`` entry when there is one. Proxy routes match by path prefix, longest first: a prefix
ending in ``/`` matches everything under it, one without matches itself and everything under
``prefix/`` (so ``/api`` never matches ``/apix``). The upstream URL's path, when it has one,
replaces the prefix (``/api/`` -> ``http://up:3030/v2/`` sends ``/api/x`` to ``/v2/x``);
without one the path goes upstream unchanged, as the original tracker did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sfpltracker.config import ProxyRoute
from sfpltracker.ingest.request import host_only

__all__ = ["HostSite", "ProxyRoute", "SiteRouter"]  # ProxyRoute: parsed in config.py


@dataclass
class HostSite:
    host: str
    root: Path | None = None
    routes: list[ProxyRoute] = field(default_factory=list)
    cache_control: bytes = b""
    track_pages: bool = False
    url_filter: re.Pattern | None = None
    answer_options: bool = False
    daily_limit: int = 0

    def route_for(self, path: bytes) -> ProxyRoute | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None

    def track_proxied(self, path: str) -> bool:
        """The original's rule: track a proxied request when the filter is set and misses."""
        return self.url_filter is not None and not self.url_filter.search(path)


class SiteRouter:
    def __init__(self, sites: dict[str, HostSite]):
        self.sites = sites
        self.wildcard = sites.get("*")

    @classmethod
    def from_config(cls, cfg) -> SiteRouter:
        sites = {}
        for host, entry in cfg.Sites.items():
            routes = [ProxyRoute.parse(p, u) for p, u in entry.Proxy.items()]
            routes.sort(key=lambda r: len(r.prefix), reverse=True)
            sites[host.lower()] = HostSite(
                host=host.lower(),
                root=cfg.path(entry.Root).resolve() if entry.Root else None,
                routes=routes,
                cache_control=entry.CacheControl.encode(),
                track_pages=entry.TrackPages,
                url_filter=re.compile(entry.ProxyUrlFilter) if entry.ProxyUrlFilter else None,
                answer_options=entry.AnswerOptions,
                daily_limit=entry.DailyLimit,
            )
        return cls(sites)

    def __bool__(self) -> bool:
        return bool(self.sites)

    def site_for(self, host: bytes | str | None) -> HostSite | None:
        if isinstance(host, bytes):
            host = host.decode("latin-1")
        name = host_only(host or "")
        return self.sites.get(name, self.wildcard)

    def route_for(self, host, path: bytes) -> tuple[HostSite, ProxyRoute] | None:
        site = self.site_for(host)
        if site is None:
            return None
        route = site.route_for(path)
        return (site, route) if route is not None else None
