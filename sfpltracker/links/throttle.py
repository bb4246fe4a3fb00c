"""Failed-login throttling of the short-link admin API (``LoginFailureLimit`` per window).

Each password check is a scrypt (tens of milliseconds of CPU on a worker thread), so an
attacker guessing at full speed both tries many secrets and burns the gateway's CPU. This
counts failed checks per *key* (the client IP, and the account uid tried) in a fixed window
that starts with a key's first failure: once a key has ``limit`` failures, every further
attempt naming it is refused with a ``Retry-After`` until the window ends, *before* the
password is checked -- even a correct one, so a guess that happens to be right is not
confirmed. A successful login clears its keys (an account holder can already spend a check
per request with valid logins, so this gives nothing away).

Checks still running count against the limit too (``limit`` failures-or-checks-in-flight per
key): without that, a burst of concurrent guesses would all start before the first one
failed. A legitimate client may thus run up to ``limit`` concurrent logins per IP and uid.

Keys are HMAC-SHA256 digests with a random key made at start (as ``RateLimitPerDay``,
``edge/limits.py``): no raw IP or uid is kept. Memory is bounded: at most ``max_entries``
keys, the least recently used dropped first (a dropped key just starts counting afresh).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import OrderedDict

from sfpltracker.edge.limits import ip_digest


class Throttled(Exception):
    """Too many failed logins: try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: int, reason: str):
        super().__init__(reason)
        self.retry_after = retry_after
        self.reason = reason


class _Entry:
    __slots__ = ("failures", "in_flight", "since")

    def __init__(self, since: float):
        self.failures = 0
        self.in_flight = 0
        self.since = since  # when the current window started (its first failure)


class LoginThrottle:
    def __init__(
        self,
        limit: int,
        window: float,
        clock,
        max_entries: int = 100_000,
        key: bytes | None = None,
    ):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_entries = max_entries
        self._key = key or secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.refused = 0

    def keys(self, ip: str, uid: str) -> tuple[bytes, ...]:
        """The digests an attempt from ``ip`` on ``uid`` is counted under."""
        keys = [ip_digest(self._key, ip)]
        if uid:
            uid_key = b"uid:" + uid.strip().lower().encode("utf-8", "replace")
            keys.append(hmac.new(self._key, uid_key, hashlib.sha256).digest()[:16])
        return tuple(keys)

    def attempt(self, ip: str, uid: str) -> LoginAttempt:
        """Start a password check, or raise ``Throttled`` when one of its keys is over."""
        now = self.clock.seconds()
        keys = self.keys(ip, uid)
        wait = 0
        for digest in keys:
            entry = self._current(digest, now)
            if entry is None:
                continue
            if entry.failures >= self.limit:
                wait = max(wait, math.ceil(entry.since + self.window - now))
            elif entry.failures + entry.in_flight >= self.limit:
                wait = max(wait, 1)  # only checks in flight: one will end soon
        if wait:
            self.refused += 1
            raise Throttled(max(1, wait), "too many failed logins; try again later")
        for digest in keys:
            entry = self._current(digest, now)
            if entry is None:
                entry = self._add(digest, now)
            entry.in_flight += 1
        return LoginAttempt(self, keys)

    def _current(self, digest: bytes, now: float) -> _Entry | None:
        """The entry of ``digest`` with an ended window reset; None when there is none."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        self._entries.move_to_end(digest)
        if entry.failures and now - entry.since >= self.window:
            entry.failures = 0
            entry.since = now
        return entry

    def _add(self, digest: bytes, now: float) -> _Entry:
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        entry = self._entries[digest] = _Entry(now)
        return entry

    def _end(self, keys: tuple[bytes, ...], outcome: bool | None) -> None:
        now = self.clock.seconds()
        for digest in keys:
            entry = self._entries.get(digest)
            if entry is None:  # dropped meanwhile (memory cap)
                if outcome is not False:
                    continue
                entry = self._add(digest, now)
                entry.in_flight = 1
            entry.in_flight -= 1
            if outcome is True:
                entry.failures = 0
            elif outcome is False:
                if entry.failures == 0 or now - entry.since >= self.window:
                    entry.failures, entry.since = 0, now
                entry.failures += 1
            if entry.failures == 0 and entry.in_flight == 0:
                del self._entries[digest]

    def __len__(self) -> int:
        return len(self._entries)


class LoginAttempt:
    """One password check in flight: end it with ``succeeded``, ``failed`` or ``abandoned``."""

    def __init__(self, throttle: LoginThrottle, keys: tuple[bytes, ...]):
        self._throttle = throttle
        self._keys = keys
        self._open = True

    def _end(self, outcome: bool | None) -> None:
        if self._open:
            self._open = False
            self._throttle._end(self._keys, outcome)

    def succeeded(self) -> None:
        self._end(True)

    def failed(self) -> None:
        self._end(False)

    def abandoned(self) -> None:
        """The check could not be made (store unavailable): neither success nor failure."""
        self._end(None)
