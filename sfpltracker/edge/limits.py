"""``RateLimitPerDay``: requests per client IP per UTC day on the ingestion routes.

Counts live in memory only, keyed by a keyed hash of the IP (HMAC-SHA256 with a random key
made at start and never written anywhere), so neither memory dumps nor logs hold the raw IP.
IPv6 clients are counted per /64, the block one host usually owns, so address rotation
within it does not reset the count. The table is cleared when the UTC day changes; past
``max_entries`` distinct clients in one day, new clients are let through uncounted (and a
warning is logged once) rather than letting a flood of addresses exhaust memory.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from twisted.logger import Logger

log = Logger()

DAY = 86400


def client_key(ip: str) -> str:
    """The part of the IP a limit applies to: the address (IPv4) or its /64 (IPv6)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def ip_digest(key: bytes, ip: str) -> bytes:
    """What a limit keeps instead of an IP: a keyed hash of its ``client_key`` (16 bytes)."""
    return hmac.new(key, client_key(ip).encode(), hashlib.sha256).digest()[:16]


class DailyLimiter:
    def __init__(self, limit: int, clock, max_entries: int = 500_000, key: bytes | None = None):
        self.limit = limit
        self.clock = clock
        self.max_entries = max_entries
        self._key = key or secrets.token_bytes(32)
        self._day = -1
        self._counts: dict[bytes, int] = {}
        self._warned_full = False
        self.refused = 0

    def _digest(self, ip: str) -> bytes:
        return ip_digest(self._key, ip)

    def seconds_to_midnight(self) -> int:
        now = self.clock.seconds()
        return max(1, int(DAY - now % DAY))

    def hit(self, ip: str) -> bool:
        """Count one request from ``ip``; False when it is over today's limit."""
        day = int(self.clock.seconds() // DAY)
        if day != self._day:
            self._day = day
            self._counts.clear()
            self._warned_full = False
        digest = self._digest(ip)
        count = self._counts.get(digest)
        if count is None:
            if len(self._counts) >= self.max_entries:
                if not self._warned_full:
                    self._warned_full = True
                    log.warn(
                        "RateLimitPerDay: {n} distinct clients today; new ones are not counted "
                        "until midnight UTC",
                        n=len(self._counts),
                    )
                return True
            count = 0
        if count >= self.limit:
            self.refused += 1
            return False
        self._counts[digest] = count + 1
        return True

    def __len__(self) -> int:
        return len(self._counts)
