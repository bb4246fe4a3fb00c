"""Where ``/tr/v1/rdr/`` and ``/tr/v1/xrdr/`` may send a visitor (no open redirect).

Allowed: a path on the tracker itself (``/welcome``), or an absolute http(s) URL whose host is
one of ``Domains`` or matches a ``RedirectAllowHosts`` pattern (``shop.example.com``,
``*.example.com``: shell-style, case-insensitive; ``*.example.com`` does not match the bare
``example.com``, list it too). URLs that browsers and Python parse differently (backslashes,
control characters, user info before the host) are refused outright.
"""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import urlsplit

from sfpltracker.ingest.request import host_only

_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


class RedirectPolicy:
    def __init__(self, domains: list[str], patterns: list[str]):
        self.hosts = {host_only(d) for d in domains if d.strip()}
        self.patterns = [p.strip().lower() for p in patterns if p.strip()]

    def allows_host(self, host: str) -> bool:
        host = host_only(host)
        if not host:
            return False
        if host in self.hosts:
            return True
        return any(fnmatch.fnmatchcase(host, p) for p in self.patterns)

    def refusal(self, url: str) -> str | None:
        """None when ``url`` may be redirected to, else the reason it may not."""
        if _UNSAFE.search(url):
            return "url contains characters that are not allowed"
        if url.startswith("/") and not url.startswith("//"):
            return None  # a path on this host
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            return "url is not a valid URL"
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return "url must be an http(s) URL or a path"
        if "@" in parts.netloc:
            return "url must not contain user info"
        if not self.allows_host(parts.hostname):
            return f"redirects to {parts.hostname} are not allowed"
        return None
