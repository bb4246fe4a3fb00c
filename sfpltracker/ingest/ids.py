"""Identifiers and the original tracker's short hashes."""

from __future__ import annotations

import functools
import os
import time
import uuid

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds then random bits, so eids sort by time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return str(uuid.UUID(int=value))


def uuid4() -> str:
    return str(uuid.uuid4())


def parse_uuid(value: object) -> str | None:
    """The canonical text of a UUID, or None when ``value`` is not one (then it is 'absent')."""
    if not isinstance(value, str) or not 32 <= len(value) <= 45:
        return None
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
