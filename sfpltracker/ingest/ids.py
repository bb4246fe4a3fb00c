"""Identifiers and the original tracker's short hashes."""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import uuid

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


class _Entropy:
    """Random bytes from the OS, fetched 4 KiB at a time, handed out as hex digits.

    Every request mints ids; one ``getrandom`` call per 256 UUIDs instead of one each costs
    far less, and the bytes are as unpredictable as ``os.urandom``'s. Kept as hex text: ids
    are text, so each is a slice instead of a slice and a ``.hex()``.
    """

    def __init__(self, chunk: int = 4096):
        self.chunk = chunk
        self.digits = ""
        self.pos = 0
        self.lock = threading.Lock()

    def take_hex(self, n: int) -> str:
        """``n`` random hex digits (``n / 2`` random bytes)."""
        with self.lock:
            pos = self.pos
            if pos + n > len(self.digits):
                self.digits = os.urandom(self.chunk).hex()
                pos = 0
            self.pos = pos + n
            return self.digits[pos : pos + n]


_entropy = _Entropy()


_MS48 = (1 << 48) - 1
# The hex digit that holds a UUID's variant (bits 10xx): the random digit's low two bits kept.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds then random bits, so eids sort by time.

    Built as text from the hex of the time and of 10 random bytes: the version digit (7) and
    the variant digit (8-b) replace two of the random digits, leaving the 74 random bits
    RFC 9562 asks for. (Text slicing costs less than the integer arithmetic it replaced.)
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    h = f"{ms & _MS48:012x}" + _entropy.take_hex(20)
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def uuid4() -> str:
    """A random UUIDv4."""
    h = _entropy.take_hex(32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# The canonical text of a UUID (what every id this gateway mints and every cookie it sets looks
# like): already its own canonical form, so ``uuid.UUID`` (~5 us here) is only needed for others.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_uuid(value: object) -> str | None:
    """The canonical text of a UUID, or None when ``value`` is not one (then it is 'absent')."""
    if not isinstance(value, str) or not 32 <= len(value) <= 45:
        return None
    if len(value) == 36 and _CANONICAL.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def fnv1a32(text: str) -> int:
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def b36(n: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(reversed(out))


@functools.lru_cache(maxsize=4096)
def short_hash(text: str) -> str:
    """The original's ``b36(FNV-1a-32(text))``: hhash of a host, bhash of a user agent.

    Cached: hosts and user agents repeat, and FNV in pure Python costs ~10 us for a user agent.
    """
    return b36(fnv1a32(text))
