"""Cookie policy and cookieless visitor ids (API.md section 4).

No cookie at all when the request carries ``Sec-GPC: 1`` (or ``DNT: 1`` with ``HonorDNT``) or
when ``RequireConsent`` is on and no ``CookieConsent`` cookie is present. Such visitors get a
visitor id that is a keyed hash of (site, IP, user agent) with a salt that changes every UTC day,
so no identifier outlives the day.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class CookiePolicy:
    require_consent: bool
    honor_dnt: bool

    def cookies_allowed(self, headers, cookies) -> bool:
        if headers.get("sec-gpc", "").strip() == "1":
            return False
        if self.honor_dnt and headers.get("dnt", "").strip() == "1":
            return False
        if self.require_consent and not cookies.get("CookieConsent"):
            return False
        return True


class CookielessIds:
    """Daily-rotating salted ids: the same visitor maps to the same id only within one day."""

    def __init__(self, secret: bytes):
        self.secret = secret

    def _salt(self, day: str) -> bytes:
        return hmac.new(self.secret, day.encode(), hashlib.sha256).digest()

    def visitor_id(self, day: str, site: str, ip: str, user_agent: str) -> str:
        digest = hmac.new(
            self._salt(day), f"{site}\x00{ip}\x00{user_agent}".encode(), hashlib.sha256
        ).digest()
        return _as_uuid(digest)

    def session_id(self, day: str, visitor_id: str) -> str:
        digest = hmac.new(self._salt(day), f"session\x00{visitor_id}".encode(), hashlib.sha256)
        return _as_uuid(digest.digest())


def _as_uuid(digest: bytes) -> str:
    """A UUIDv8 (custom) made of hash bytes, so it fits the UUID columns."""
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))
