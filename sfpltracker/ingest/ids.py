"""Identifiers and the original tracker's short hashes."""

from __future__ import annotations

import functools
import os
import re
import time
import uuid

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


_MS48 = (1 << 48) - 1
# The hex digit that holds a UUID's variant (bits 10xx): the random digit's low two bits kept.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class _Entropy:
    """Random ids made 128 at a time from 4 KiB of the OS's random bytes.

    Every request mints ids; one ``getrandom`` call per 128 UUIDs instead of one each costs
    far less, and the bytes are as unpredictable as ``os.urandom``'s. Each batch is formatted
    in one list comprehension and handed out by ``list.pop()``, which the GIL makes atomic:
    no lock, and no two callers (threads included) ever get the same one.
    """

    def __init__(self, chunk: int = 4096):
        self.chunk = chunk
        self.v4: list[str] = []
        self.v7_tails: list[str] = []

    def _hex32(self) -> list[str]:
        digits = os.urandom(self.chunk).hex()
        return [digits[i : i + 32] for i in range(0, len(digits), 32)]

    def uuid4(self) -> str:
        while True:
            try:
                return self.v4.pop()
            except IndexError:
                self.v4 = [
                    f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
                    for h in self._hex32()
                ]

    def v7_tail(self) -> str:
        """What follows the 48 bits of time in a UUIDv7: ``7xxx-Vxxx-xxxxxxxxxxxx``."""
        while True:
            try:
                return self.v7_tails.pop()
            except IndexError:
                # 19 of the 20 hex digits after the time (the first would be the version's
                # place): the version digit and the variant digit leave 74 random bits.
                self.v7_tails = [
                    f"7{h[1:4]}-{_VARIANT[h[4]]}{h[5:8]}-{h[8:20]}" for h in self._hex32()
                ]


_entropy = _Entropy()


# The time part of the last UUIDv7 made (``(ms, "xxxxxxxx-xxxx-")``): a request's ids share
# their millisecond, so it is formatted once per millisecond. Replaced whole (atomic).
_v7_prefix: tuple[int, str] = (-1, "")


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds then random bits, so eids sort by time.

    Built as text: the hex of the time, then 74 random bits with the version digit (7) and
    the variant digit (8-b) in their places (text costs less than integer arithmetic).
    """
    global _v7_prefix
    ms = (int(time.time() * 1000) if now_ms is None else now_ms) & _MS48
    last, prefix = _v7_prefix
    if last != ms:
        prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-"
        _v7_prefix = (ms, prefix)
    try:
        return prefix + _entropy.v7_tails.pop()
    except IndexError:
        return prefix + _entropy.v7_tail()


def uuid4() -> str:
    """A random UUIDv4."""
    try:
        return _entropy.v4.pop()
    except IndexError:
        return _entropy.uuid4()


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


# Real hosts and user agents are well under this; a client's 16 KiB header is hashed but not
# kept (4,096 of those would hold 64 MiB in the cache).
SHORT_HASH_CACHED_CHARS = 512


def short_hash(text: str) -> str:
    """The original's ``b36(FNV-1a-32(text))``: hhash of a host, bhash of a user agent.

    Cached: hosts and user agents repeat, and FNV in pure Python costs ~10 us for a user agent.
    """
    if len(text) > SHORT_HASH_CACHED_CHARS:
        return b36(fnv1a32(text))
    return _short_hash_cached(text)


@functools.lru_cache(maxsize=4096)
def _short_hash_cached(text: str) -> str:
    return b36(fnv1a32(text))
