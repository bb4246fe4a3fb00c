"""JA4H, the HTTP client fingerprint, computed as the original tracker's library does.

The original fills ``events.ja4h`` with lum8rjack/go-ja4h (@3a989c6), which departs from the
JA4H spec in two ways kept here so fingerprints stay comparable with the original's rows
(reference a.13, i.32): header names are sorted (Go's header map has no order) and the fourth
part repeats the third (cookie values are never hashed). So the fingerprint holds no cookie
value, only names.

``a_b_c_d``:
  a = method's first 2 letters (lower) + ``20``/``11`` + ``c``/``n`` (cookies) + ``r``/``n``
      (Referer) + two-digit count of header names other than Cookie/Referer + the first 4
      characters of Accept-Language without ``-``, lower-cased, padded with ``0``;
  b = 12 hex of SHA-256 of the sorted canonical header names, concatenated;
  c = d = 12 hex of SHA-256 of the sorted cookie names (``000000000000`` when none).
Go's request header map has neither ``Host`` nor ``Transfer-Encoding``: left out here too.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NOT_IN_GO_MAP = frozenset({"host", "transfer-encoding"})
NO_COOKIES = "0" * 12


@functools.lru_cache(maxsize=1024)
def canonical_name(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``accept-language`` -> ``Accept-Language``."""
    if not _TOKEN.match(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def cookie_names(cookie_header: str) -> list[str]:
    """The names of a ``Cookie`` header, as Go's ``readCookies`` keeps them (valid tokens)."""
    names = []
    for part in cookie_header.split(";"):
        name = part.strip().split("=", 1)[0].strip()
        if name and _TOKEN.match(name):
            names.append(name)
    return names


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode("latin-1", "replace")).hexdigest()[:12]


def _language(accept_language: str) -> str:
    if not accept_language:
        return "0000"
    return (accept_language.replace("-", "").lower().split(",")[0] + "0000")[:4]


@functools.lru_cache(maxsize=4096)
def _fingerprint(
    method: str, version: str, names: tuple[str, ...], cookie_header: bool,
    cookies: tuple[str, ...], referer: bool, accept_language: str,
) -> str:  # fmt: skip
    counted = len(names) - (1 if cookie_header else 0) - (1 if referer else 0)
    method_part = method.lower()[:2]
    version_part = "20" if version.split("/")[-1] in ("2", "2.0") else "11"
    a = (
        f"{method_part}{version_part}{'c' if cookies else 'n'}{'r' if referer else 'n'}"
        f"{counted:02d}{_language(accept_language)}"
    )
    b = _sha12("".join(sorted(names)))
    c = _sha12("".join(sorted(cookies))) if cookies else NO_COOKIES
    return f"{a}_{b}_{c}_{c}"


@functools.lru_cache(maxsize=1024)
def _go_names(header_names: tuple[str, ...]) -> tuple[str, ...]:
    """The canonical names Go's header map holds for these names (cached: clients send the
    same headers in the same order on every request)."""
    return tuple(canonical_name(n) for n in header_names if n.lower() not in _NOT_IN_GO_MAP)


def ja4h(method: str, version: str, header_names: Iterable[str], headers: Mapping[str, str]) -> str:
    """The fingerprint of a request: its method (``GET``), protocol (``HTTP/1.1``), the names of
    its headers (any case, each once) and a mapping of lower-cased names to first values."""
    cookie = headers.get("cookie") or ""
    # (a long Cookie header is not kept: the cache stays small whatever clients send)
    fingerprint = _ja4h if len(cookie) <= _CACHED_COOKIE else _ja4h.__wrapped__
    return fingerprint(
        method, version, tuple(header_names), cookie,
        bool(headers.get("referer")), headers.get("accept-language") or "",
    )  # fmt: skip


_CACHED_COOKIE = 1024


@functools.lru_cache(maxsize=4096)
def _ja4h(
    method: str, version: str, header_names: tuple[str, ...], cookie: str, referer: bool,
    accept_language: str,
) -> str:  # fmt: skip
    """``ja4h()`` of what it reads of a request, cached: a client sends the same header names
    (and, within a session, the same Cookie header) with each of its events."""
    cookies = tuple(cookie_names(cookie)) if cookie else ()
    return _fingerprint(
        method, version, _go_names(header_names), bool(cookie), cookies, referer, accept_language
    )
