"""API accounts of the short-link admin API: stored hashed, checked in constant time.

An account is a ``uid`` (UUID) and a generated secret. Callers present them as path segments
(``/rpi/redirect/{uid}/{secret}``, the original's form), as ``Authorization: Bearer
{uid}.{secret}`` (the *token*), or as Basic auth (``uid:secret``). The store keeps only
``scrypt`` of the secret with a random salt (``hashlib.scrypt``, N=2^14, r=8, p=1: about 16 MiB
and tens of milliseconds per check, run on a thread, never on the reactor). An unknown uid
costs the same work as a wrong secret, so timing does not reveal which uids exist.

Accounts migrated from the original tracker carry its unsalted SHA-1 hash: such a hash is still
accepted once and replaced by an scrypt hash on that first successful use, except the
original's seeded demo login (``password``), which is refused for good.

Admin commands (``python -m sfpltracker account create|rotate|list``) run in the gateway or
offline; see ``admin.py``. No account is ever created implicitly and no default secret exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

from twisted.internet import defer, threads

from sfpltracker import admin
from sfpltracker.ingest.ids import ZERO_UUID, parse_uuid, uuid4
from sfpltracker.store.interface import database_of

SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
SCRYPT_MAXMEM = 64 * 1024 * 1024
# The original seeded this account (uid 14fb0860-...) with the password "password".
DEMO_LEGACY_HASH = "W6ph5Mm5Pz8GgiULbPgzG37mj9g="
MIN_SECRET_LENGTH = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, n: int = SCRYPT_N) -> str:
    """``scrypt$N$r$p$salt$hash`` of ``secret`` with a fresh random salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM,
        dklen=SCRYPT_LEN,
    )  # fmt: skip
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def legacy_hash(secret: str) -> str:
    """The original tracker's ``base64url(SHA1(password))`` (no salt)."""
    return base64.urlsafe_b64encode(hashlib.sha1(secret.encode()).digest()).decode()


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a stored hash (scrypt, or the legacy SHA-1)."""
    if stored.startswith("scrypt$"):
        try:
            _, n, r, p, salt, digest = stored.split("$")
            expected = _unb64(digest)
            actual = hashlib.scrypt(
                secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                maxmem=SCRYPT_MAXMEM, dklen=len(expected),
            )  # fmt: skip
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(actual, expected)
    if len(stored) == 28 and stored != DEMO_LEGACY_HASH:
        return hmac.compare_digest(legacy_hash(secret).encode(), stored.encode())
    return False


# Verifying against this costs what a real check costs; used for unknown uids.
_DUMMY_HASH = hash_secret(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Account:
    uid: str
    oid: str
    org: str


@dataclass(frozen=True)
class Credentials:
    uid: str
    secret: str

    @classmethod
    def from_token(cls, token: str) -> Credentials | None:
        """``{uid}.{secret}`` (what ``account create`` prints as the token)."""
        uid, sep, secret = token.strip().partition(".")
        return cls(uid, secret) if sep and uid and secret else None


class AuthFailed(Exception):
    """Wrong or missing credentials (answered 401 without saying which part was wrong)."""


class Accounts:
    """Account rows in the store: authenticate, create, rotate, list."""

    def __init__(self, store, reactor=None):
        self.store = store
        self.reactor = reactor
        self.database = database_of(store)
        self.checks = 0  # password checks run (each a scrypt): /metrics

    def _hash_off_reactor(self, fn, *args):
        if self.reactor is None:
            return defer.maybeDeferred(fn, *args)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    @defer.inlineCallbacks
    def get(self, uid: str):
        """The stored row of ``uid`` (a dict), or None."""
        data = yield self.store.query(
            "SELECT toString(uid) AS uid, pwd, toString(oid) AS oid, toString(org) AS org, "
            "toUnixTimestamp64Milli(expires) AS expires, "
            "toUnixTimestamp64Milli(created_at) AS created_at, "
            "toUnixTimestamp64Milli(updated_at) AS updated_at, toString(owner) AS owner "
            f"FROM {self.database}.accounts AS a FINAL WHERE a.uid = {{uid:UUID}} LIMIT 1",
            "JSONEachRow",
            params={"uid": uid},
        )
        lines = data.decode().splitlines()
        return json.loads(lines[0]) if lines else None

    @defer.inlineCallbacks
    def authenticate(self, creds: Credentials | None, now_ms: int):
        """The ``Account`` of valid credentials; ``AuthFailed`` otherwise."""
        if creds is None or not creds.secret:
            raise AuthFailed("credentials required")
        uid = parse_uuid(creds.uid)
        row = (yield self.get(uid)) if uid else None
        stored = row["pwd"] if row else _DUMMY_HASH
        self.checks += 1
        ok = yield self._hash_off_reactor(verify_secret, creds.secret, stored)
        if not ok or row is None:
            raise AuthFailed("bad credentials")
        expires = int(row.get("expires") or 0)  # JSON 64-bit ints may come quoted
        if expires and expires <= now_ms:
            raise AuthFailed("bad credentials")
        if not stored.startswith("scrypt$"):  # a migrated SHA-1 hash: upgrade it now
            yield self._write(
                row, (yield self._hash_off_reactor(hash_secret, creds.secret)), now_ms
            )
        return Account(uid=row["uid"], oid=row["oid"], org=row["org"])

    def _write(self, row: dict, pwd: str, now_ms: int):
        return self.store.insert(
            "accounts",
            [
                {
                    "uid": row["uid"],
                    "pwd": pwd,
                    "oid": row["oid"],
                    "org": row["org"],
                    "expires": int(row.get("expires") or 0),
                    "created_at": int(row.get("created_at") or now_ms),
                    "updated_at": now_ms,
                    "owner": row.get("owner") or ZERO_UUID,
                }
            ],
        )

    @defer.inlineCallbacks
    def create(self, org: str, oid: str | None, now_ms: int, secret: str | None = None):
        """A new account; fires with ``{"uid", "oid", "org", "secret", "token"}``."""
        secret = secret or secrets.token_urlsafe(24)
        row = {"uid": uuid4(), "oid": oid or uuid4(), "org": org}
        yield self._write(row, (yield self._hash_off_reactor(hash_secret, secret)), now_ms)
        return {**row, "secret": secret, "token": f"{row['uid']}.{secret}"}

    @defer.inlineCallbacks
    def rotate(self, uid: str, now_ms: int, secret: str | None = None):
        """A new secret for ``uid``; the old one stops working at once."""
        row = yield self.get(uid)
        if row is None:
            raise admin.AdminError(f"no account {uid}")
        secret = secret or secrets.token_urlsafe(24)
        yield self._write(row, (yield self._hash_off_reactor(hash_secret, secret)), now_ms)
        return {"uid": uid, "oid": row["oid"], "org": row["org"], "secret": secret,
                "token": f"{uid}.{secret}"}  # fmt: skip

    @defer.inlineCallbacks
    def list(self):
        data = yield self.store.query(
            "SELECT toString(uid) AS uid, toString(oid) AS oid, toString(org) AS org, "
            "toUnixTimestamp64Milli(created_at) AS created_at, "
            "toUnixTimestamp64Milli(updated_at) AS updated_at, "
            "toUnixTimestamp64Milli(expires) AS expires "
            f"FROM {self.database}.accounts FINAL ORDER BY org, created_at",
            "JSONEachRow",
        )
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


# -- admin commands (CLI: python -m sfpltracker account ...) ------------------------------------


def _now_ms(ctx) -> int:
    if ctx.gateway is not None:
        return ctx.gateway.now_ms()
    import time

    return int(time.time() * 1000)


def _reactor(ctx):
    if ctx.gateway is not None:
        return ctx.gateway.reactor
    from twisted.internet import reactor

    return reactor


def _secret_arg(args: dict) -> str | None:
    secret = args.get("secret")
    if secret is None:
        return None
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        raise admin.AdminError(f"a chosen secret must have at least {MIN_SECRET_LENGTH} characters")
    if secret.strip() != secret:
        raise admin.AdminError("a chosen secret must not start or end with spaces")
    return secret


def account_create(ctx, args: dict):
    org = args.get("org")
    if not isinstance(org, str) or not org.strip():
        raise admin.AdminError("an organisation name is required (--org NAME)")
    oid = args.get("oid")
    if oid is not None and parse_uuid(oid) is None:
        raise admin.AdminError(f"--oid must be a UUID, got {oid!r}")
    return Accounts(ctx.store, _reactor(ctx)).create(
        org.strip(), parse_uuid(oid) if oid else None, _now_ms(ctx), _secret_arg(args)
    )


def account_rotate(ctx, args: dict):
    uid = parse_uuid(args.get("uid"))
    if uid is None:
        raise admin.AdminError(f"expected an account uid (a UUID), got {args.get('uid')!r}")
    return Accounts(ctx.store, _reactor(ctx)).rotate(uid, _now_ms(ctx), _secret_arg(args))


def account_list(ctx, args: dict):
    d = Accounts(ctx.store).list()
    d.addCallback(lambda rows: {"accounts": rows})
    return d
