"""Cookie policy, consent flags and cookieless visitor ids (API.md section 4).

No cookie at all when the request carries ``Sec-GPC: 1`` (or ``DNT: 1`` with ``HonorDNT``), when
``RequireConsent`` is on and no ``CookieConsent`` cookie is present, or when the ``CookieConsent``
cookie records a refusal of analytics. Such visitors get a visitor id that is a keyed hash of
(site, IP, user agent) with a salt that changes every UTC day, so no identifier outlives the day.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from sfpltracker.fsutil import create_atomic, write_atomic

# Consent flags (``cflags``, the ``CookieConsent`` cookie): one bit per consent category. The
# values keep the original tracker's conventions: its examples send 1024 for analytics consent
# and its ``CFlagsMarketing`` default is 4096, so ``cflags >= 4096`` still means "marketing
# allowed" for every value a current client sends. Bits 0-7 are left to the site.
CFLAGS: dict[str, int] = {
    "essential": 1 << 8,  # 256: strictly necessary (always on; storing the choice itself)
    "preferences": 1 << 9,  # 512: functional / "comfort" (language, UI settings)
    "analytics": 1 << 10,  # 1024: audience measurement: the vid/sid cookies of this gateway
    "personalization": 1 << 11,  # 2048: content personalisation, experiments tied to a person
    "marketing": 1 << 12,  # 4096: advertising, conversion APIs, retargeting
    "sale_sharing": 1 << 13,  # 8192: CCPA/CPRA "sale or sharing" of personal information
}
ANALYTICS = CFLAGS["analytics"]

_REFUSALS = frozenset({"", "0", "false", "no", "deny", "denied", "reject", "rejected", "none"})


def consent_flags(value: str | None) -> int | None:
    """The ``CookieConsent`` cookie as flags: a number, or None when it is not one."""
    if value is None:
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        try:
            return int(text)
        except ValueError:
            return None
    return None


def analytics_consented(value: str | None) -> bool:
    """Does the ``CookieConsent`` cookie allow the analytics (vid/sid) cookies?

    A number must carry the analytics bit (so ``256``, "essential only", is a refusal); any other
    text counts as consent unless it says no (``false``, ``deny``, ...). Absent: no consent.
    """
    if value is None:
        return False
    flags = consent_flags(value)
    if flags is not None:
        return bool(flags & ANALYTICS)
    return value.strip().lower() not in _REFUSALS


@dataclass(frozen=True)
class CookiePolicy:
    require_consent: bool
    honor_dnt: bool

    def header_refusal(self, headers) -> str | None:
        """``gpc`` / ``dnt`` when the browser itself asks not to be tracked, else None."""
        if headers.get("sec-gpc", "").strip() == "1":
            return "gpc"
        if self.honor_dnt and headers.get("dnt", "").strip() == "1":
            return "dnt"
        return None

    def refusal(self, headers, cookies) -> str | None:
        """Why no cookie may be set (``gpc``, ``dnt``, ``consent``), or None when they may."""
        signal = self.header_refusal(headers)
        if signal:
            return signal
        consent = cookies.get("CookieConsent")
        if consent is not None and not analytics_consented(consent):
            return "consent"  # an explicit refusal counts whether consent is required or not
        if self.require_consent and consent is None:
            return "consent"
        return None

    def cookies_allowed(self, headers, cookies) -> bool:
        return self.refusal(headers, cookies) is None


class DailySalts:
    """One salt per UTC day.

    With ``CookielessSalt`` configured the day's salt is derived from it (every node of a
    cluster computes the same ids). Without it, each day gets a random salt kept in
    ``directory`` (so the processes sharing a data directory agree) and the salts of earlier
    days are deleted: once a day is over nobody, the operator included, can recompute its ids.
    """

    def __init__(self, directory: Path | None = None, secret: bytes = b""):
        if directory is None and not secret:
            raise ValueError("DailySalts needs a directory or a secret")
        self.directory = Path(directory) if directory is not None else None
        self.secret = secret
        self._day = ""
        self._salt = b""

    def salt(self, day: str) -> bytes:
        if day != self._day:
            self._salt = self._derive(day) if self.secret else self._stored(day)
            self._day = day
        return self._salt

    def _derive(self, day: str) -> bytes:
        return hmac.new(self.secret, f"cookieless\x00{day}".encode(), hashlib.sha256).digest()

    def _stored(self, day: str) -> bytes:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / day
        try:
            stored = path.read_bytes()
        except FileNotFoundError:
            stored = None
        if stored is not None and len(stored) == 32:
            return stored
        value = secrets.token_bytes(32)
        if stored is None:
            # Created, never replaced: a process that lost the race reads the winner's salt,
            # so every process sharing the directory computes the same ids.
            if not create_atomic(path, value, 0o600):
                return path.read_bytes()
        else:
            write_atomic(path, value, 0o600)  # short: torn by an older version's write
        self._forget_before(day)
        return value

    def _forget_before(self, day: str) -> None:
        """Delete the salts of days before yesterday (yesterday stays for clock skew)."""
        import datetime

        keep_from = (datetime.date.fromisoformat(day) - datetime.timedelta(days=1)).isoformat()
        for old in self.directory.iterdir():
            if len(old.name) == 10 and old.name < keep_from:
                try:
                    old.unlink()
                except OSError:
                    pass


class CookielessIds:
    """Daily-rotating salted ids: the same visitor maps to the same id only within one day."""

    def __init__(self, salts: DailySalts):
        self.salts = salts
        self._day_key: tuple[str, bytes] = ("", b"")

    def visitor_id(self, day: str, site: str, ip: str, user_agent: str) -> str:
        digest = hmac.new(
            self.salts.salt(day), f"{site}\x00{ip}\x00{user_agent}".encode(), hashlib.sha256
        ).digest()
        return _as_uuid(digest)

    def session_id(self, day: str, visitor_id: str) -> str:
        digest = hmac.new(self.salts.salt(day), f"session\x00{visitor_id}".encode(), hashlib.sha256)
        return _as_uuid(digest.digest())

    def day_key(self, day: str) -> bytes:
        """A key that only lives for ``day`` (keys the IP hash of cookieless visitors)."""
        if self._day_key[0] != day:
            self._day_key = (day, hmac.new(self.salts.salt(day), b"ip", hashlib.sha256).digest())
        return self._day_key[1]


def _as_uuid(digest: bytes) -> str:
    """A UUIDv8 (custom) made of hash bytes, so it fits the UUID columns."""
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))
