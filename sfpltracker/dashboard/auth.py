"""Dashboard sign-in: the short-link admin accounts, a session cookie and a CSRF token.

A login is checked exactly as the admin API checks one (``links/accounts.py``: scrypt on a
worker thread, a dummy check for unknown uids) behind the same ``LoginThrottle``, so the
dashboard is no second door for guessing secrets. A good login gets a random session token in
a cookie (HttpOnly, SameSite=Strict, Path=/dashboard, Secure when the request came over TLS)
and a CSRF token the page sends back in ``X-CSRF-Token`` with every POST: SameSite keeps other
sites' requests from carrying the cookie, the token covers browsers and proxies that do not.

Sessions live in memory (a restart signs everyone out): only the SHA-256 of a token is kept, at
most ``MAX_SESSIONS`` (the oldest dropped first), each for at most ``SESSION_SECONDS`` and
``IDLE_SECONDS`` without a request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet import defer

from sfpltracker.links.accounts import AuthFailed, Credentials
from sfpltracker.links.throttle import Throttled

COOKIE = b"sfpl_dashboard"
SESSION_SECONDS = 12 * 3600
IDLE_SECONDS = 2 * 3600
MAX_SESSIONS = 10_000


class LoginRefused(Exception):
    def __init__(self, status: int, reason: str, retry_after: int | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class Session:
    uid: str
    org: str
    csrf: str
    created: float
    seen: float


class Sessions:
    def __init__(self, clock):
        self.clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def create(self, uid: str, org: str) -> tuple[str, Session]:
        now = self.clock.seconds()
        token = secrets.token_urlsafe(32)
        session = Session(uid, org, secrets.token_urlsafe(32), now, now)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        self._sessions[self._key(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        key = self._key(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.created > SESSION_SECONDS or now - session.seen > IDLE_SECONDS:
            del self._sessions[key]
            return None
        session.seen = now
        return session

    def end(self, token: str) -> None:
        self._sessions.pop(self._key(token), None)

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_ok(session: Session, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())


@defer.inlineCallbacks
def login(links, ip: str, creds: Credentials | None, now_ms: int):
    """The ``Account`` of good credentials; ``LoginRefused`` (401, 429) otherwise."""
    if creds is None or not creds.uid or not creds.secret:
        raise LoginRefused(401, "uid and secret required")
    try:
        account = yield links.authenticate(creds, ip, now_ms)
    except Throttled as e:
        links.count("auth_throttled")
        raise LoginRefused(429, e.reason, e.retry_after) from None
    except AuthFailed:
        links.count("auth_failures")
        raise LoginRefused(401, "bad credentials") from None
    return account
