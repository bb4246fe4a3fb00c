"""What ingestion needs to know about the request an event came with.

Built once per HTTP request or WebSocket connection by the web layer; ingestion never sees a
Twisted request, so the same code serves HTTP, WebSocket and replays.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sfpltracker.ingest import bounds
from sfpltracker.ingest.ja4h import ja4h

# Paths of the tracking API itself are never taken as the page ``url`` of an event.
_INTERNAL = re.compile(r"/(tr|img|pub|str|rdr|xrdr|ltv|ppi|rpi)/v?\d*|/tr/v\d+/")


class _once:  # noqa: N801 - used as a decorator, like functools.cached_property
    """``functools.cached_property`` without its lock (Python 3.11 takes an ``RLock`` on every
    first read, three times per request here): the value is computed on first read and kept
    in the instance's ``__dict__``, which later reads find before this descriptor. Two threads
    reading a fresh ``RequestInfo`` at once would both compute the same value: harmless."""

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.fn(instance)
        return value


@dataclass
class RequestInfo:
    # (web/common.py request_info() passes these positionally, in this order)
    ip: str = ""  # the client's full IP (after TrustedProxies); never stored as is by default
    host: str = ""  # lower-cased, port stripped
    user_agent: str = ""
    uri: str = ""  # path and query as requested
    https: bool = False
    cookies: Mapping[str, str] = field(default_factory=dict)  # a dict or a view (web/common.py)
    # Lower-cased names, first value; a plain dict or a view read on demand (web/common.py).
    headers: Mapping[str, str] = field(default_factory=dict)
    now_ms: int = 0
    method: str = "GET"
    version: str = "HTTP/1.1"

    @_once
    def original_inputs(self) -> dict:
        """The original's lowest-priority event inputs, read once per request (a batch shares
        them): the ``User`` header's JSON object (keys lower-cased), then the ``ehash``
        cookie. Empty for nearly every request."""
        text = self.headers.get("user") if self.headers else None
        found = dict(_user_object(text)) if text else {}
        ehash = self.cookies.get("ehash") if self.cookies else None
        if ehash:
            found["ehash"] = ehash
        return found

    @_once
    def ja4h(self) -> str:
        """The request's JA4H fingerprint as the original computed it (``ingest/ja4h.py``),
        once per request (a batch's events share it)."""
        return ja4h(self.method, self.version, self.headers, self.headers)

    @property
    def day(self) -> str:
        """The UTC day of the request (YYYY-MM-DD), for daily-rotating ids."""
        return utc_day(self.now_ms // 86_400_000)

    @_once
    def page_url(self) -> str:
        """``uri`` when it can be an event's page ``url`` (not a path of the tracking API
        itself), else "". Worked out once per request, not once per event of a batch."""
        if self.uri:
            path = self.uri.split("?", 1)[0]
            internal = _internal if len(path) <= 512 else _internal.__wrapped__  # (kept small)
            if not internal(path):
                return self.uri
        return ""


@functools.lru_cache(maxsize=1024)
def _internal(path: str) -> bool:
    """Is ``path`` one of the tracking API's own? (Cached: every call of a tracking route asks,
    with the same few paths.)"""
    return _INTERNAL.search(path) is not None


@functools.lru_cache(maxsize=1024)
def _user_object(text: str) -> dict:
    """The ``User`` header as a dict of event fields, {} when it is not a JSON object."""
    try:
        parsed = bounds.json_in_text(text)
    except Exception:  # noqa: BLE001 - a bad header is ignored, as the original did
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(k).lower(): v for k, v in parsed.items()}


@functools.lru_cache(maxsize=4)
def utc_day(day_number: int) -> str:
    """``YYYY-MM-DD`` of a day counted from the epoch (cached: every request of a day asks)."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day_number)).isoformat()


@functools.lru_cache(maxsize=1024)
def host_only(host: str) -> str:
    """``Example.COM:8443`` -> ``example.com``; ``[::1]:80`` -> ``::1``. (Cached: a site's
    requests carry one or two Host values.)"""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host
