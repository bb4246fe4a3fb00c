"""``RateLimitPerDay``: requests per client IP per UTC day on the ingestion routes.

Counts live in memory only, keyed by a keyed hash of the IP (HMAC-SHA256 with a random key
made at start and never written anywhere), so neither memory dumps nor logs hold the raw IP.
IPv6 clients are counted per /64, the block one host usually owns, so address rotation
within it does not reset the count. The table is cleared when the UTC day changes; past
``max_entries`` distinct clients in one day, new clients are let through uncounted (and a
warning is logged once) rather than letting a flood of addresses exhaust memory.

With ``Workers`` > 1 the workers' limiters share one key (made by the supervisor, held in
memory only) and their counts: each worker sends the hits it counted since its last report
to the supervisor about once a second (``take_unsent``) and takes back the totals of those
clients and of every client over the limit (``merge``). A client spreading its requests over
the workers is so refused once the total passes the limit, within about a second.
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
        self._unsent: dict[bytes, int] = {}  # hits not reported yet (Workers > 1)

    def _digest(self, ip: str) -> bytes:
        return ip_digest(self._key, ip)

    def seconds_to_midnight(self) -> int:
        now = self.clock.seconds()
        return max(1, int(DAY - now % DAY))

    def hit(self, ip: str) -> bool:
        """Count one request from ``ip``; False when it is over today's limit."""
        self._roll()
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
        self._unsent[digest] = self._unsent.get(digest, 0) + 1
        return True

    def _roll(self) -> None:
        day = int(self.clock.seconds() // DAY)
        if day != self._day:
            self._day = day
            self._counts.clear()
            self._unsent.clear()
            self._warned_full = False

    def take_unsent(self) -> tuple[int, dict[str, int]]:
        """The day and the hits counted since the last call (hex digests), for the totals."""
        self._roll()
        unsent, self._unsent = self._unsent, {}
        return self._day, {d.hex(): n for d, n in unsent.items()}

    def merge(self, day: int, totals: dict[str, int]) -> None:
        """Totals over every worker (of ``day``): a count never goes below them."""
        self._roll()
        if day != self._day:
            return
        for hexdigest, total in totals.items():
            digest = bytes.fromhex(hexdigest)
            # plus what was counted here since the report those totals answer
            known = total + self._unsent.get(digest, 0)
            if known > self._counts.get(digest, 0):
                self._counts[digest] = known

    def __len__(self) -> int:
        return len(self._counts)
