"""Certificates from an ACMEv2 CA (Let's Encrypt by default), obtained and renewed in-process.

Two halves:

- ``AcmeIssuer`` is blocking code on certbot's maintained ``acme`` library and runs on a
  reactor thread: account (key in ``DataDirectory/acme/account.key``), order, challenge,
  finalize, download; the certificate and its key are written to
  ``DataDirectory/acme/certs/<domain>/``.
- ``AcmeManager`` lives on the reactor: it loads the stored certificates at start, asks the
  issuer for a certificate when one is missing or within ``ACMERenewDays`` of expiry, installs
  the result in the certificate store (the TLS listener serves it to the next connection, no
  restart), retries failures with exponential backoff while the old certificate keeps being
  served, and reports days-to-expiry as a metric.

txacme (the Twisted ACME client) is not used: its only release speaks the retired ACMEv1
protocol and pins ``acme<1.0``, so it cannot obtain a certificate from any CA today.

Challenges: http-01 is answered by the gateway's HTTP listener (``Http01Tokens``, served at
``/.well-known/acme-challenge/<token>``), tls-alpn-01 by its TLS listener
(``server.AlpnChallenges``). The ``acme`` library 5.x has no tls-alpn-01 classes any more, so
the validation certificate is built in ``alpn.py`` and the challenge is answered with the
library's generic ``KeyAuthorizationChallengeResponse`` (its JSON is ``{}``, as RFC 8555 asks).
"""

from __future__ import annotations

import datetime
import json
import random
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import defer
from twisted.logger import Logger

from sfpltracker import __version__
from sfpltracker.edge.tls.alpn import validation_pair
from sfpltracker.edge.tls.certs import (
    CertificateError,
    CertPair,
    key_to_pem,
    load_pair,
    new_key,
    parse_pair,
    write_private,
)

log = Logger(namespace="sfpltracker.acme")

HTTP01 = "http-01"
TLSALPN01 = "tls-alpn-01"

CHECK_INTERVAL = 12 * 3600.0  # re-check every stored certificate at least this often
FIRST_RETRY = 2.0  # seconds; doubles per failure up to MAX_RETRY
MAX_RETRY = 3600.0
ORDER_DEADLINE = 90.0  # seconds for the CA to validate and issue


class RenewalFailed(Exception):
    """A requested renewal did not succeed; the message is the reason."""


class Http01Tokens:
    """Pending http-01 answers: token -> (domain, key authorization)."""

    def __init__(self):
        self.by_token: dict[str, tuple[str, str]] = {}

    def add(self, token: str, domain: str, key_authorization: str) -> None:
        self.by_token[token] = (domain.lower(), key_authorization)

    def remove(self, token: str) -> None:
        self.by_token.pop(token, None)

    def answer(self, token: str, host: str) -> str | None:
        found = self.by_token.get(token)
        if found is None or (host and host != found[0]):
            return None
        return found[1]


class Publisher:
    """What the issuer thread uses to put challenge answers in place on the reactor.

    Each call blocks the thread until the reactor has done it, so the CA is told to validate
    only once the answer is being served. ``http01`` and ``alpn`` may return a Deferred (with
    workers: fires once every worker has the answer, ``workers/tls_share.py``); it is waited for.
    """

    def __init__(self, reactor, http01, alpn):
        self.reactor = reactor
        self.http01 = http01
        self.alpn = alpn

    def _on_reactor(self, fn, *args, timeout: float = 30.0):
        # Not blockingCallFromThread: if the reactor stops meanwhile, that would block this
        # thread for good, and the thread pool's join at shutdown with it.
        done = threading.Event()

        def run():
            d = defer.maybeDeferred(fn, *args)
            d.addErrback(lambda f: log.failure("ACME: publishing a challenge answer", f))
            d.addBoth(lambda _: done.set())

        self.reactor.callFromThread(run)
        if not done.wait(timeout):
            raise RuntimeError("the gateway did not take the challenge answer (stopping?)")

    def add_http01(self, token, domain, key_authorization):
        self._on_reactor(self.http01.add, token, domain, key_authorization)

    def remove_http01(self, token):
        self._on_reactor(self.http01.remove, token)

    def add_alpn(self, domain, pair):
        self._on_reactor(self.alpn.add, domain, pair)

    def remove_alpn(self, domain):
        self._on_reactor(self.alpn.remove, domain)


def key_authorization(token: str, account_key: jose.JWK) -> str:
    thumbprint = account_key.thumbprint(hash_function=hashes.SHA256)
    return f"{token}.{jose.b64encode(thumbprint).decode()}"


def _challenge_type(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", ""))
    return str(chall.typ)


def _challenge_token(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("token", ""))
    return chall.encode("token")


def describe_error(failure_or_exc) -> str:
    """One line an operator can act on, for whatever the ACME exchange raised."""
    exc = getattr(failure_or_exc, "value", failure_or_exc)
    import requests

    if isinstance(exc, errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    parts.append(
                        f"{authzr.body.identifier.value}: {_challenge_type(challb)} failed: "
                        f"{challb.error.detail or challb.error.typ}"
                    )
        return "; ".join(parts) or "validation failed"
    if isinstance(exc, messages.Error):
        return f"CA refused: {exc.detail or exc.typ}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"cannot reach the ACME server: {_root_cause(exc)}"
    if isinstance(exc, requests.exceptions.Timeout):
        return "the ACME server did not answer in time"
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish validating/issuing in time"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _root_cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        exc, cause = cause, cause.__cause__ or cause.__context__
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def cert_paths(acme_dir: Path, domain: str) -> tuple[Path, Path]:
    folder = Path(acme_dir) / "certs" / domain
    return folder / "fullchain.pem", folder / "privkey.pem"


def load_stored(acme_dir: Path, domain: str) -> CertPair | None:
    """The certificate stored for ``domain`` (None: none, or unusable)."""
    cert_path, key_path = cert_paths(acme_dir, domain)
    if not cert_path.exists():
        return None
    try:
        return load_pair(cert_path, key_path, "acme")
    except CertificateError as e:
        log.warn("ACME: stored certificate for {domain} unusable: {why}", domain=domain, why=e)
        return None


class AcmeIssuer:
    """Blocking ACMEv2 client for one directory; call ``issue`` from a thread."""

    def __init__(
        self,
        directory_url: str,
        email: str,
        acme_dir: Path,
        publisher: Publisher,
        timeout: float = 30.0,
    ):
        self.directory_url = directory_url
        self.email = email
        self.acme_dir = Path(acme_dir)
        self.publisher = publisher
        self.timeout = timeout

    # -- storage -----------------------------------------------------------------------------

    def cert_paths(self, domain: str) -> tuple[Path, Path]:
        return cert_paths(self.acme_dir, domain)

    def load_stored(self, domain: str) -> CertPair | None:
        return load_stored(self.acme_dir, domain)

    def _store(self, domain: str, pair: CertPair) -> None:
        cert_path, key_path = self.cert_paths(domain)
        write_private(key_path, pair.key_pem)
        write_private(cert_path, pair.fullchain_pem, mode=0o644)

    def _account_key(self) -> jose.JWKEC:
        path = self.acme_dir / "account.key"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        else:
            key = new_key()
            write_private(path, key_to_pem(key))
            log.info("ACME: created account key {path}", path=path)
        return jose.JWKEC(key=key)

    # -- protocol ----------------------------------------------------------------------------

    def _client(self, account_key: jose.JWK) -> client.ClientV2:
        net = client.ClientNetwork(
            account_key,
            alg=jose.ES256,
            user_agent=f"sfpltracker/{__version__}",
            timeout=int(self.timeout),
        )
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.email or None, terms_of_service_agreed=True
        )
        try:
            regr = acme.new_account(registration)
        except errors.ConflictError as e:  # the key already has an account with this CA
            regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
            net.account = regr
        info = {"directory": self.directory_url, "account": regr.uri}
        write_private(self.acme_dir / "account.json", json.dumps(info).encode(), mode=0o644)
        return acme

    def issue(self, domain: str, challenge_type: str) -> CertPair:
        """Obtain a certificate for ``domain`` (blocking); stores and returns it."""
        account_key = self._account_key()
        acme = self._client(account_key)
        key = new_key()
        key_pem = key_to_pem(key)
        order = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
        undo: list[Callable[[], None]] = []
        try:
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # the CA still remembers an earlier validation
                challb = self._pick(authzr, challenge_type)
                token = _challenge_token(challb)
                keyauth = key_authorization(token, account_key)
                name = authzr.body.identifier.value
                if challenge_type == HTTP01:
                    self.publisher.add_http01(token, name, keyauth)
                    undo.append(partial(self.publisher.remove_http01, token))
                else:
                    self.publisher.add_alpn(name, validation_pair(name, keyauth))
                    undo.append(partial(self.publisher.remove_alpn, name))
                # Generic key-authorization response: serialises to {} for any type.
                response = challenges.KeyAuthorizationChallengeResponse(key_authorization=keyauth)
                acme.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for step in undo:
                step()
        pair = parse_pair(order.fullchain_pem.encode(), key_pem, "acme", where=f"{domain} (CA)")
        pair.names = [domain]
        self._store(domain, pair)
        return pair

    @staticmethod
    def _pick(authzr: messages.AuthorizationResource, challenge_type: str):
        for challb in authzr.body.challenges:
            if _challenge_type(challb) == challenge_type:
                return challb
        offered = ", ".join(_challenge_type(c) for c in authzr.body.challenges)
        raise errors.Error(f"the CA offers no {challenge_type} challenge (offered: {offered})")


class _DomainState:
    def __init__(self, domain: str):
        self.domain = domain
        self.pair: CertPair | None = None
        self.failures = 0
        self.last_error = ""
        self.timer = None
        self.running = False


class AcmeManager:
    """Keeps a valid certificate installed for every domain; all methods run on the reactor.

    ``issue(domain) -> Deferred[CertPair]`` does the work (a thread in production, a fake in
    unit tests); ``load(domain) -> CertPair | None`` reads what is stored; ``install(domain,
    pair)`` puts a certificate in service.
    """

    def __init__(
        self,
        reactor,
        domains: list[str],
        renew_days: float,
        issue: Callable[[str], defer.Deferred],
        load: Callable[[str], CertPair | None],
        install: Callable[[str, CertPair], defer.Deferred | None],
        describe: str = "",
        count: Callable[[str], None] | None = None,
    ):
        self.reactor = reactor
        self.renew_days = renew_days
        self._issue = issue
        self._load = load
        self._install = install
        self.describe = describe
        self._count = count  # with workers: the gateway's counters, totalled by the supervisor
        self.domains = {d.lower(): _DomainState(d.lower()) for d in domains}
        self.lock = defer.DeferredLock()  # one order at a time
        self.issued = 0
        self.failed = 0
        self.stopped = False

    def load(self) -> None:
        """Serve the stored certificates (before the listeners open)."""
        for state in self.domains.values():
            state.pair = self._load(state.domain)
            if state.pair is not None:
                self._install(state.domain, state.pair)
                log.info(
                    "ACME: serving stored certificate for {domain}: {pair}",
                    domain=state.domain,
                    pair=state.pair.describe(),
                )

    def start(self) -> None:
        """Obtain what is missing or due now, and check again on a timer."""
        self.stopped = False
        for state in self.domains.values():
            self._check(state)

    def stop(self) -> None:
        self.stopped = True
        for state in self.domains.values():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            state.timer = None

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.UTC)

    def due_in(self, state: _DomainState) -> float:
        """Seconds until ``state`` needs a new certificate (0 or less: now)."""
        if state.pair is None:
            return 0.0
        renew_at = state.pair.not_after - datetime.timedelta(days=self.renew_days)
        return (renew_at - self._now()).total_seconds()

    def _schedule(self, state: _DomainState, delay: float) -> None:
        if self.stopped:
            return
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = self.reactor.callLater(max(delay, 0.0), self._check, state)

    def _check(self, state: _DomainState) -> None:
        state.timer = None
        if self.stopped or state.running:
            return
        due = self.due_in(state)
        if due > 0:
            self._schedule(state, min(due, CHECK_INTERVAL))
            return
        state.running = True
        d = self.lock.run(self._attempt, state)
        d.addBoth(lambda _: setattr(state, "running", False))

    def renew_now(self, domain: str) -> defer.Deferred:
        """Obtain a new certificate for ``domain`` at once (``tls renew``); fires with it.

        Fails with ``RenewalFailed`` (the reason) when the attempt fails; the usual retries
        are scheduled as for any failure.
        """
        state = self.domains.get(domain.lower())
        if state is None:
            return defer.fail(RenewalFailed(f"{domain!r} is not in LetsEncryptDomains"))
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        before = self.failed
        state.running = True  # the timer's check waits for this attempt

        def outcome(_):
            state.running = False
            if self.failed != before:
                raise RenewalFailed(state.last_error)
            return state.pair

        return self.lock.run(self._attempt, state).addCallback(outcome)

    def _attempt(self, state: _DomainState) -> defer.Deferred:
        why = (
            "none stored"
            if state.pair is None
            else (
                f"{state.pair.days_left(self._now()):.1f} days left, renewing at "
                f"{self.renew_days:g}"
            )
        )
        log.info(
            "ACME: requesting a certificate for {domain} ({why}) {describe}",
            domain=state.domain,
            why=why,
            describe=self.describe,
        )
        d = defer.maybeDeferred(self._issue, state.domain)
        d.addCallbacks(self._issued, self._failed, callbackArgs=(state,), errbackArgs=(state,))
        return d

    def _issued(self, pair: CertPair, state: _DomainState) -> defer.Deferred | None:
        old = state.pair
        state.pair = pair
        state.failures = 0
        state.last_error = ""
        self.issued += 1
        if self._count is not None:
            self._count("acme_certificates_issued")
        # With workers a Deferred: fires once every worker serves it (``tls renew`` waits).
        installed = self._install(state.domain, pair)
        log.info(
            "ACME: certificate for {domain} issued and now served: {pair}{replaced}",
            domain=state.domain,
            pair=pair.describe(),
            replaced=f" (replaces serial {old.serial:x})" if old is not None else "",
        )
        due = self.due_in(state)
        if due <= 0:
            log.warn(
                "ACME: the new certificate for {domain} is already within ACMERenewDays "
                "({days:g}) of expiry; next renewal attempt in {hours:g} h",
                domain=state.domain,
                days=self.renew_days,
                hours=CHECK_INTERVAL / 3600,
            )
            due = CHECK_INTERVAL
        self._schedule(state, min(due, CHECK_INTERVAL))
        return installed if isinstance(installed, defer.Deferred) else None

    def _failed(self, failure, state: _DomainState) -> None:
        state.failures += 1
        self.failed += 1
        if self._count is not None:
            self._count("acme_failures")
        state.last_error = describe_error(failure)
        delay = retry_delay(state.failures)
        serving = (
            f"still serving the previous certificate ({state.pair.days_left(self._now()):.1f} "
            "days left)"
            if state.pair is not None
            else "serving the default certificate meanwhile"
        )
        log.error(
            "ACME: certificate for {domain} failed (attempt {n}): {why}; retrying in "
            "{delay:.0f} s; {serving}",
            domain=state.domain,
            n=state.failures,
            why=state.last_error,
            delay=delay,
            serving=serving,
        )
        self._schedule(state, delay)
        return None

    def status(self) -> list[dict]:
        out = []
        for state in self.domains.values():
            pair = state.pair
            out.append(
                {
                    "domain": state.domain,
                    "serial": f"{pair.serial:x}" if pair else None,
                    "not_after": pair.not_after.isoformat() if pair else None,
                    "days_left": round(pair.days_left(self._now()), 3) if pair else None,
                    "failures": state.failures,
                    "last_error": state.last_error,
                }
            )
        return out


def retry_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``failures + 1``: 2, 4, 8 ... capped at an hour, +-10% jitter."""
    base = min(FIRST_RETRY * 2 ** (failures - 1), MAX_RETRY)
    jitter = (rng or random).uniform(-0.1, 0.1)
    return base * (1 + jitter)
