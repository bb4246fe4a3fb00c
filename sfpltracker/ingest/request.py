"""What ingestion needs to know about the request an event came with.

Built once per HTTP request or WebSocket connection by the web layer; ingestion never sees a
Twisted request, so the same code serves HTTP, WebSocket and replays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class RequestInfo:
    ip: str = ""  # the client's full IP (after TrustedProxies); never stored as is by default
    host: str = ""  # lower-cased, port stripped
    user_agent: str = ""
    uri: str = ""  # path and query as requested
    https: bool = False
    cookies: Mapping[str, str] = field(default_factory=dict)  # a dict or a view (web/common.py)
    # Lower-cased names, first value; a plain dict or a view read on demand (web/common.py).
    headers: Mapping[str, str] = field(default_factory=dict)
    now_ms: int = 0

    @property
    def day(self) -> str:
        """The UTC day of the request (YYYY-MM-DD), for daily-rotating ids."""
        import datetime

        return datetime.datetime.fromtimestamp(self.now_ms / 1000, datetime.UTC).strftime(
            "%Y-%m-%d"
        )


def host_only(host: str) -> str:
    """``Example.COM:8443`` -> ``example.com``; ``[::1]:80`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host
