"""Failed-login throttling of the short-link admin API (``LoginFailureLimit``).

The logic (windows, resets, checks in flight, the memory cap) runs on a ``MemoryReactorClock``
moved by hand; the HTTP behaviour through a real gateway process, with clients coming from
different loopback addresses (127.0.0.x) so that each is a different client IP.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from twisted.internet.testing import MemoryReactorClock

from sfpltracker.links.throttle import LoginThrottle, Throttled
from tests.edge_helpers import request
from tests.gateway_process import GatewayProcess
from tests.test_shortlinks import create_account

LIMIT = 3
WINDOW = 10  # seconds, in the gateway; the unit tests use their own clock

# -- unit: the throttle on a hand-moved clock --------------------------------------------------


def throttle(limit=3, window=900, **kw) -> tuple[LoginThrottle, MemoryReactorClock]:
    clock = MemoryReactorClock()
    clock.advance(1_000_000)
    return LoginThrottle(limit, window, clock, **kw), clock


def fail(t: LoginThrottle, ip: str, uid: str = "") -> None:
    t.attempt(ip, uid).failed()


def test_failures_throttle_until_the_window_ends():
    t, clock = throttle(limit=3, window=900)
    for _ in range(3):
        fail(t, "198.51.100.7")
    clock.advance(100)
    with pytest.raises(Throttled) as refused:
        t.attempt("198.51.100.7", "")
    assert refused.value.retry_after == 800  # the window started with the first failure
    assert t.refused == 1
    clock.advance(799)
    with pytest.raises(Throttled) as refused:
        t.attempt("198.51.100.7", "")
    assert refused.value.retry_after == 1
    clock.advance(1)
    t.attempt("198.51.100.7", "").failed()  # a new window: this failure is its first
    t.attempt("198.51.100.7", "").failed()
    t.attempt("198.51.100.7", "").succeeded()


def test_success_clears_the_keys_of_the_attempt():
    t, _ = throttle(limit=3)
    fail(t, "198.51.100.7", "u1")
    fail(t, "198.51.100.7", "u1")
    t.attempt("198.51.100.7", "u1").succeeded()
    assert len(t) == 0  # nothing kept for a client that logged in
    fail(t, "198.51.100.7", "u1")
    fail(t, "198.51.100.7", "u1")
    t.attempt("198.51.100.7", "u1").failed()  # the third failure since the success
    with pytest.raises(Throttled):
        t.attempt("198.51.100.7", "u1")


def test_ip_and_uid_are_counted_apart():
    t, _ = throttle(limit=2)
    fail(t, "198.51.100.1", "victim")
    fail(t, "198.51.100.2", "victim")
    with pytest.raises(Throttled):
        t.attempt("198.51.100.3", "victim")  # the uid, from a third address
    t.attempt("198.51.100.1", "other").succeeded()  # one failure from .1: still allowed
    fail(t, "198.51.100.9", "a")
    fail(t, "198.51.100.9", "b")
    with pytest.raises(Throttled):
        t.attempt("198.51.100.9", "c")  # the address, whatever uid it tries
    # IPv6 clients are counted per /64, as RateLimitPerDay does.
    fail(t, "2001:db8:1:2::1")
    fail(t, "2001:db8:1:2:ffff::9")
    with pytest.raises(Throttled):
        t.attempt("2001:db8:1:2::abcd", "")
    t.attempt("2001:db8:1:3::1", "").succeeded()


def test_checks_in_flight_count_against_the_limit():
    t, _ = throttle(limit=3)
    running = [t.attempt("198.51.100.7", "") for _ in range(3)]
    with pytest.raises(Throttled) as refused:
        t.attempt("198.51.100.7", "")
    assert refused.value.retry_after == 1  # no failure yet: one of them ends soon
    running[0].abandoned()  # e.g. the store was down: neither failure nor success
    extra = t.attempt("198.51.100.7", "")
    for attempt in (*running[1:], extra):
        attempt.failed()
    running[1].failed()  # ending twice counts once
    with pytest.raises(Throttled) as refused:
        t.attempt("198.51.100.7", "")
    assert refused.value.retry_after == 900


def test_memory_is_bounded_and_holds_no_raw_address():
    t, _ = throttle(limit=3, max_entries=50)
    for i in range(1000):
        fail(t, f"10.0.{i // 256}.{i % 256}", str(uuid.uuid4()))
        assert len(t) <= 50
    assert all(len(key) == 16 for key in t._entries)
    assert not any(b"10.0." in key for key in t._entries)
    # A key dropped by the cap just counts afresh.
    t.attempt("10.0.0.0", "").failed()


# -- a real gateway over HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    config = {
        "Debug": True,
        "Domains": ["localhost"],
        "LoginFailureLimit": LIMIT,
        "LoginFailureWindowSeconds": WINDOW,
    }
    with GatewayProcess(tmp_path_factory.mktemp("throttle"), config) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def accounts(gw):
    return [create_account(gw, f"org{i}") for i in range(3)]


def metric(gw, name: str) -> float:
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    m = re.search(rf"^{name}(?:_total)? ([\d.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def save(gw, ip: str, uid: str, secret: str, urlfrom: str, urlto: str):
    body = json.dumps({"urlfrom": urlfrom, "urlto": urlto}).encode()
    return request(
        gw.port,
        "POST",
        f"/tr/v1/rpi/redirect/{uid}/{secret}",
        body=body,
        headers={"Content-Type": "application/json"},
        source_ip=ip,
    )


def links_of(gw, account: dict, host: str, ip: str = "127.0.0.1") -> dict:
    r = request(
        gw.port,
        "GET",
        f"/tr/v1/rpi/redirects/{host}",
        headers={"Authorization": f"Bearer {account['token']}"},
        source_ip=ip,
    )
    assert r.status == 200, r
    return {link["urlfrom"]: link["urlto"] for link in r.json()["results"]}


def history_rows(gw, host: str) -> int:
    rows = gw.query(f"SELECT count() AS n FROM sfpla.redirect_history WHERE hostfrom = '{host}'")
    return int(rows[0]["n"])


def assert_throttled(r) -> int:
    assert r.status == 429, r
    assert r.json() == {"error": "too many failed logins; try again later"}
    retry_after = int(r.header("retry-after"))
    assert 1 <= retry_after <= WINDOW
    return retry_after


def test_wrong_logins_from_one_ip_get_429_without_a_password_check(gw, accounts):
    owner = accounts[0]
    host = "ip.throttle.test"
    ip = "127.0.0.2"
    r = save(gw, "127.0.0.1", owner["uid"], owner["secret"], f"{host}/a", "https://a.example/")
    assert r.status == 200, r
    rows_before = history_rows(gw, host)
    checks = metric(gw, "sfpl_rpi_password_checks")
    throttled = metric(gw, "sfpl_rpi_auth_throttled")

    for _ in range(LIMIT):  # a different unknown uid each time: only the address adds up
        r = save(gw, ip, str(uuid.uuid4()), "guess", f"{host}/a", "https://evil.example/")
        assert r.status == 401 and r.json() == {"error": "bad credentials"}, r
    assert metric(gw, "sfpl_rpi_password_checks") == checks + LIMIT

    r = save(gw, ip, str(uuid.uuid4()), "guess", f"{host}/a", "https://evil.example/")
    assert_throttled(r)
    assert r.header("www-authenticate") is None
    # The right secret from that address is refused too, in every form of the API.
    r = save(gw, ip, owner["uid"], owner["secret"], f"{host}/a", "https://evil.example/")
    retry_after = assert_throttled(r)
    auth = {"Authorization": f"Bearer {owner['token']}"}
    assert_throttled(request(gw.port, "GET", f"/tr/v1/rpi/redirects/{host}", headers=auth,
                             source_ip=ip))  # fmt: skip
    assert_throttled(request(gw.port, "DELETE", f"/tr/v1/rpi/redirect?urlfrom={host}/a",
                             headers=auth, source_ip=ip))  # fmt: skip
    assert metric(gw, "sfpl_rpi_password_checks") == checks + LIMIT  # none of them was checked
    assert metric(gw, "sfpl_rpi_auth_throttled") == throttled + 4
    assert history_rows(gw, host) == rows_before  # nothing changed in the store
    assert links_of(gw, owner, host) == {f"{host}/a": "https://a.example/"}

    # Another address with the same account is not affected.
    r = save(gw, "127.0.0.3", owner["uid"], owner["secret"], f"{host}/b", "https://b.example/")
    assert r.status == 200, r

    # Once the window has passed, the address may log in again.
    time.sleep(retry_after)
    deadline = time.monotonic() + 30
    while (r := save(gw, ip, owner["uid"], owner["secret"], f"{host}/c", "https://c.example/"))\
            .status == 429:  # fmt: skip
        assert time.monotonic() < deadline, r
        time.sleep(0.5)
    assert r.status == 200, r
    assert links_of(gw, owner, host) == {
        f"{host}/a": "https://a.example/",
        f"{host}/b": "https://b.example/",
        f"{host}/c": "https://c.example/",
    }


def test_wrong_secrets_for_one_uid_get_429_from_any_ip(gw, accounts):
    victim, other = accounts[1], accounts[2]
    host = "uid.throttle.test"
    checks = metric(gw, "sfpl_rpi_password_checks")
    for i in range(LIMIT):  # one guess from each of several addresses
        r = save(gw, f"127.0.0.{10 + i}", victim["uid"], "guess", f"{host}/x", "https://e.example/")
        assert r.status == 401, r
    r = save(gw, "127.0.0.20", victim["uid"], "guess", f"{host}/x", "https://e.example/")
    assert_throttled(r)
    r = save(gw, "127.0.0.21", victim["uid"], victim["secret"], f"{host}/x", "https://e.example/")
    assert_throttled(r)
    assert metric(gw, "sfpl_rpi_password_checks") == checks + LIMIT
    assert history_rows(gw, host) == 0
    # Another account, from an address that failed once, logs in.
    r = save(gw, "127.0.0.10", other["uid"], other["secret"], f"{host}/y", "https://y.example/")
    assert r.status == 200, r


def test_a_successful_login_resets_the_count(gw, accounts):
    owner = accounts[2]
    ip = "127.0.0.30"
    host = "reset.throttle.test"
    for _ in range(LIMIT - 1):
        assert save(gw, ip, str(uuid.uuid4()), "guess", f"{host}/a", "https://a.example/").status \
            == 401  # fmt: skip
    assert save(gw, ip, owner["uid"], owner["secret"], f"{host}/a", "https://a.example/").status \
        == 200  # fmt: skip
    for _ in range(LIMIT):  # without the reset the last of these would be refused
        r = save(gw, ip, str(uuid.uuid4()), "guess", f"{host}/a", "https://a.example/")
        assert r.status == 401, r
    assert_throttled(save(gw, ip, owner["uid"], owner["secret"], f"{host}/a", "https://a.ex/"))


def test_a_burst_of_concurrent_guesses_runs_at_most_limit_checks(gw):
    ip = "127.0.0.40"
    checks = metric(gw, "sfpl_rpi_password_checks")

    def guess(_):
        return save(gw, ip, str(uuid.uuid4()), "guess", "burst.test/a", "https://a.example/")

    with ThreadPoolExecutor(16) as pool:
        statuses = sorted(r.status for r in pool.map(guess, range(32)))
    assert statuses == [401] * LIMIT + [429] * (32 - LIMIT)
    assert metric(gw, "sfpl_rpi_password_checks") == checks + LIMIT


def test_missing_credentials_are_not_counted(gw):
    ip = "127.0.0.50"
    checks = metric(gw, "sfpl_rpi_password_checks")
    for _ in range(LIMIT * 3):
        r = request(gw.port, "POST", "/tr/v1/rpi/redirect", body=b"{}", source_ip=ip)
        assert r.status == 401 and r.header("www-authenticate"), r
    assert metric(gw, "sfpl_rpi_password_checks") == checks
    # The address, and the log, hold no trace of the client.
    after_start = re.split(r"sfpltracker \S+ ready", gw.log_text(), maxsplit=1)[1]
    assert "127.0.0.2" not in after_start and "127.0.0.40" not in after_start
