"""Short-link logic: validation, the redirect allow-list, credentials, and the link cache.

The cache and account tests run against a real embedded store (chDB) in this process; time
for TTLs and polling is a ``task.Clock`` moved by hand, never the real clock.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

from sfpltracker.config import load_dict
from sfpltracker.gateway import Gateway
from sfpltracker.ingest.ids import uuid4
from sfpltracker.links.accounts import (
    DEMO_LEGACY_HASH,
    Accounts,
    AuthFailed,
    Credentials,
    hash_secret,
    legacy_hash,
    verify_secret,
)
from sfpltracker.links.cache import LinkCache
from sfpltracker.links.model import (
    Link,
    LinkInvalid,
    ascii_url,
    normalize_path,
    parse_link_input,
    resolve_tracked,
)
from sfpltracker.links.policy import RedirectPolicy
from sfpltracker.links.repository import LinkRepository
from sfpltracker.web.site import GatewayRoot

NOW = 1_800_000_000_000

# -- model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("/Spring", "/spring"),
        ("/spring/", "/spring"),
        ("/spr%69ng", "/spring"),
        ("/caf%C3%A9", "/café"),
        ("/a/b//", "/a/b"),
        ("/", "/"),
        ("", "/"),
    ],
)
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected
    assert normalize_path(raw.encode()) == expected


def test_parse_link_input_normalises_and_keeps_what_was_given():
    given = parse_link_input(
        {"URLFrom": " HTTP://Go.Example:8080/Spring/ ", "urlto": "https://shop.example/A?b=C"},
        ["localhost"],
        NOW,
    )
    assert (given.host, given.path, given.key) == ("go.example", "/spring", "go.example/spring")
    assert given.urlfrom == "http://go.example/spring"
    assert given.urlto == "https://shop.example/A?b=C"  # the destination keeps its case
    assert (given.status, given.expires_ms, given.forward_query, given.given) == (
        302,
        0,
        False,
        set(),
    )
    full = parse_link_input(
        {
            "urlfrom": "go.example/x",
            "urlto": "https://shop.example/",
            "status": "308",
            "expires": "2030-01-01T00:00:00",
            "forward_query": "true",
            "org": " Acme ",
        },
        [],
        NOW,
    )
    assert (full.status, full.forward_query, full.org) == (308, True, "Acme")
    assert full.expires_ms == 1_893_456_000_000  # naive ISO time = UTC
    assert full.given == {"status", "expires", "forward_query"}
    assert (
        parse_link_input(
            {"urlfrom": "go.example/x", "urlto": "https://a.example/", "expires": 1_900_000_000},
            [],
            NOW,
        ).expires_ms
        == 1_900_000_000_000
    )


@pytest.mark.parametrize(
    "body, reason",
    [
        ("text", "Bad request (data)"),
        ({"urlfrom": ["x"], "urlto": "https://a.example/"}, "Bad request (urlfrom and urlto must be strings)"),
        ({"urlfrom": "", "urlto": "https://a.example/"}, "Bad URL (null)"),
        ({"urlfrom": "https://a.example/x", "urlto": "https://A.example/X"}, "Bad URL (equal)"),
        ({"urlfrom": "go.example/x", "urlto": "mailto:a@b.example"}, "Bad URL (destination)"),
        ({"urlfrom": "go.example/x", "urlto": "https://u:p@a.example/"}, "Bad URL (destination)"),
        ({"urlfrom": "go.example/x", "urlto": "https://a.example:99999/"}, "Bad URL (destination)"),
        ({"urlfrom": "go.example/x", "urlto": "https://a.example\\@b.example/"}, "Bad URL (destination)"),
        ({"urlfrom": "go.example/x", "urlto": "https://Tracker.Example/x"}, "Bad URL (self-referential)"),
        ({"urlfrom": "go.example/x#f", "urlto": "https://a.example/"}, "Bad URL (from)"),
        ({"urlfrom": "go.example/%2F", "urlto": "https://a.example/"}, "Bad URL (from path)"),
        ({"urlfrom": "go.example/ping", "urlto": "https://a.example/"}, "Bad URL (from path): reserved for the tracker"),
        ({"urlfrom": "go.example/x", "urlto": "https://go.example/X/"}, "Bad URL (equal)"),
        ({"urlfrom": "go.example/x", "urlto": "https://a.example/", "status": True}, "Bad status (use 301, 302, 307 or 308)"),
        ({"urlfrom": "go.example/x", "urlto": "https://a.example/", "expires": NOW / 1000 - 1}, "Bad expires (in the past)"),
    ],
)  # fmt: skip
def test_parse_link_input_refusals(body, reason):
    with pytest.raises(LinkInvalid) as e:
        parse_link_input(body, ["tracker.example"], NOW)
    assert str(e.value) == reason


def test_tracked_destination_resolves_in_one_hop():
    location, fields = resolve_tracked(
        "https://t.example/tr/v1/rdr/?url=%2Fsale%3Fa%3D1&utm_source=Mail&oid=x&igqp="
    )
    # igqp switches query ingestion off, as on the /rdr/ route itself
    assert (location, fields) == ("https://t.example/sale?a=1", ())
    location, fields = resolve_tracked(
        "https://t.example/tr/v2/xrdr/?url=https%3A%2F%2Fshop.example%2F&utm_source=Mail"
    )
    assert location == "https://shop.example/"
    assert fields == (("source", "Mail"),)
    assert resolve_tracked("https://a.example/rdr/?url=x") == ("https://a.example/rdr/?url=x", ())
    assert resolve_tracked("https://t.example/tr/v1/rdr/") == ("https://t.example/tr/v1/rdr/", ())


def test_ascii_url_for_location_headers():
    assert ascii_url("https://bücher.example/straße?q=ä#ü") == (
        "https://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%A4#%C3%BC"
    )
    assert ascii_url("https://a.example/x?y=%20") == "https://a.example/x?y=%20"


# -- redirect policy --------------------------------------------------------------------------


def test_redirect_policy():
    policy = RedirectPolicy(
        ["Example.COM", "t.example.com:8443"], ["*.shop.example", "partner.example"]
    )
    for url in (
        "https://example.com/a",
        "http://EXAMPLE.com:8080/",
        "https://t.example.com/x",
        "https://a.shop.example/",
        "https://a.b.shop.example/",
        "https://partner.example/",
        "/local/path?x=1",
    ):
        assert policy.refusal(url) is None, url
    for url in (
        "https://shop.example/",
        "https://example.com.evil.example/",
        "https://evil.example/?example.com",
        "//example.com/",
        "/\\evil.example",
        "https://example.com@evil.example/",
        "https://evil.example\\@example.com/",
        "https://example.com:99999/",
        "javascript://example.com/%0aalert(1)",
        "data:text/html,hi",
        "https:///example.com",
        " https://example.com/",
    ):
        assert policy.refusal(url) is not None, url


# -- credentials ------------------------------------------------------------------------------


def test_secret_hashes():
    stored = hash_secret("correct horse battery staple", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$") and "correct" not in stored
    assert stored != hash_secret("correct horse battery staple", n=2**10)  # salted
    assert verify_secret("correct horse battery staple", stored)
    assert not verify_secret("correct horse battery stapler", stored)
    assert not verify_secret("x", "scrypt$broken")
    # the original's unsalted SHA-1 (migrated accounts) is still checked ...
    assert verify_secret("s3cret", legacy_hash("s3cret"))
    assert not verify_secret("s3cre", legacy_hash("s3cret"))
    # ... except the seeded demo login
    assert DEMO_LEGACY_HASH == legacy_hash("password")
    assert not verify_secret("password", DEMO_LEGACY_HASH)
    assert not verify_secret("", "")


def test_tokens():
    uid = str(uuid.uuid4())
    assert Credentials.from_token(f" {uid}.a.b ") == Credentials(uid, "a.b")
    assert Credentials.from_token("nodot") is None
    assert Credentials.from_token(f"{uid}.") is None


# -- against a real store ---------------------------------------------------------------------


def make_link(host: str, path: str, urlto: str, oid: str = "", **kw) -> Link:
    return Link(id=uuid4(), host=host, path=path, urlto=urlto, location=urlto,
                oid=oid or uuid4(), created_at=NOW, **kw)  # fmt: skip


@pytest_twisted.inlineCallbacks
def test_accounts_against_the_store(store):
    accounts = Accounts(store, reactor)
    created = yield accounts.create("acme", None, NOW)
    account = yield accounts.authenticate(Credentials.from_token(created["token"]), NOW)
    assert (account.uid, account.oid, account.org) == (created["uid"], created["oid"], "acme")
    for creds in (
        Credentials(created["uid"], created["secret"] + "x"),
        Credentials(str(uuid.uuid4()), created["secret"]),
        Credentials("not a uuid", created["secret"]),
        None,
    ):
        with pytest.raises(AuthFailed):
            yield accounts.authenticate(creds, NOW)

    # A migrated account with the original's SHA-1 hash works once, then holds an scrypt hash.
    legacy_uid, demo_uid = str(uuid.uuid4()), "14fb0860-b4bf-11e9-8971-7b80435315ac"
    yield store.insert(
        "accounts",
        [
            {"uid": legacy_uid, "pwd": legacy_hash("old-secret-123"), "oid": uuid4(),
             "created_at": NOW, "updated_at": NOW},
            {"uid": demo_uid, "pwd": DEMO_LEGACY_HASH, "created_at": NOW, "updated_at": NOW},
        ],
    )  # fmt: skip
    yield accounts.authenticate(Credentials(legacy_uid, "old-secret-123"), NOW + 1)
    row = yield accounts.get(legacy_uid)
    assert row["pwd"].startswith("scrypt$")
    yield accounts.authenticate(Credentials(legacy_uid, "old-secret-123"), NOW + 2)
    with pytest.raises(AuthFailed):
        yield accounts.authenticate(Credentials(demo_uid, "password"), NOW)

    rotated = yield accounts.rotate(created["uid"], NOW + 5)
    with pytest.raises(AuthFailed):
        yield accounts.authenticate(Credentials(created["uid"], created["secret"]), NOW + 6)
    yield accounts.authenticate(Credentials(created["uid"], rotated["secret"]), NOW + 6)
    listed = yield accounts.list()
    assert {r["uid"] for r in listed} == {created["uid"], legacy_uid, demo_uid}
    assert all("pwd" not in r for r in listed)


@pytest_twisted.inlineCallbacks
def test_two_gateways_sharing_a_store_see_each_others_changes(store):
    """Two caches on one store are two gateway processes sharing a ClickHouse server."""
    repo_a, repo_b = LinkRepository(store, reactor), LinkRepository(store, reactor)
    a, b = LinkCache(repo_a, task.Clock()), LinkCache(repo_b, task.Clock())
    yield a.start()
    yield b.start()
    try:
        link = make_link("go.example", "/x", "https://a.example/1")
        yield repo_a.write(link, "create", "https://go.example/x", uuid4(), NOW)
        a.apply(link.key, link)
        assert a.lookup("go.example/x") == link  # at once in the process that made the change
        assert b.lookup("go.example/x") is None and not b.may_have("go.example")
        yield b.poll()
        assert b.lookup("go.example/x").urlto == "https://a.example/1"
        assert b.may_have("go.example")

        newer = Link(
            **{**_fields(link), "urlto": "https://a.example/2", "location": "https://a.example/2"}
        )
        yield repo_a.write(newer, "update", "https://go.example/x", uuid4(), NOW + 1)
        a.apply(newer.key, newer)
        yield b.poll()
        assert b.lookup("go.example/x").urlto == "https://a.example/2"

        yield repo_a.write(newer, "delete", "https://go.example/x", uuid4(), NOW + 2)
        a.apply(newer.key, None)
        yield b.poll()
        assert a.lookup("go.example/x") is None and b.lookup("go.example/x") is None

        reloads, queries = b.reloads, repo_b.queries
        yield b.poll()  # nothing changed: one cheap version query, no reload
        assert (b.reloads, repo_b.queries) == (reloads, queries + 1)
    finally:
        yield a.stop()
        yield b.stop()


@pytest_twisted.inlineCallbacks
def test_a_worker_cache_is_told_the_version_only_the_store_process_polls(store):
    """With workers the store process's cache polls and tells each worker's cache the
    version it read: a worker never queries the version, and reloads only when it moved."""
    clock = task.Clock()
    repo_store, repo_worker = LinkRepository(store, reactor), LinkRepository(store, reactor)
    polling = LinkCache(repo_store, clock)  # the store process's
    worker = LinkCache(repo_worker, clock, poll_seconds=None)
    reloads: list = []
    polling.listeners.append(lambda version: reloads.append(worker.told(version)))
    yield polling.start()
    yield worker.start()  # its one version query, then the links
    try:
        queries, loaded = repo_worker.queries, worker.reloads
        clock.advance(60)  # thirty poll intervals: a worker's cache has no loop of its own
        yield polling.poll()
        yield defer.gatherResults(reloads)
        assert reloads  # told
        assert (repo_worker.queries, worker.reloads) == (queries, loaded)  # the same version

        link = make_link("go.example", "/told", "https://a.example/told")
        yield repo_store.write(link, "create", "https://go.example/told", uuid4(), NOW)
        assert worker.lookup("go.example/told") is None
        before = worker.reloads
        yield polling.poll()
        yield defer.gatherResults(reloads)
        assert worker.reloads == before + 1
        assert worker.lookup("go.example/told").urlto == "https://a.example/told"
        assert worker.version == polling.version
    finally:
        yield polling.stop()
        yield worker.stop()


def _fields(link: Link) -> dict:
    return {name: getattr(link, name) for name in Link.__slots__}


@pytest_twisted.inlineCallbacks
def test_lru_mode_bounds_memory_and_caches_misses_briefly(store):
    repo = LinkRepository(store, reactor)
    links = [make_link("big.example", f"/l{n}", f"https://a.example/{n}") for n in range(3)]
    for n, link in enumerate(links):
        yield repo.write(link, "create", f"https://big.example/l{n}", uuid4(), NOW)
    clock = task.Clock()
    cache = LinkCache(repo, clock, max_index=2, max_entries=3, negative_ttl=10)
    yield cache.start()
    try:
        assert cache.mode == "lru" and cache.hosts == {"big.example"}
        assert not cache.may_have("other.example")  # other hosts never reach the store

        queries = repo.queries
        first, second = cache.lookup("big.example/l0"), cache.lookup("big.example/l0")
        assert isinstance(first, defer.Deferred) and isinstance(second, defer.Deferred)
        assert ((yield first).urlto, (yield second).urlto) == ("https://a.example/0",) * 2
        assert repo.queries == queries + 1  # concurrent lookups of one key share a query
        assert cache.lookup("big.example/l0").urlto == "https://a.example/0"  # now from memory

        assert (yield cache.lookup("big.example/nope")) is None
        assert cache.lookup("big.example/nope") is None  # negative entry, no query
        assert repo.queries == queries + 2
        clock.advance(11)
        assert isinstance(cache.lookup("big.example/nope"), defer.Deferred)  # expired entry

        for n in range(5):
            yield cache.lookup(f"big.example/miss{n}")
        assert len(cache.lru) == 3  # bounded

        # A change by another writer empties the lru at the next poll.
        other = LinkRepository(store, reactor)
        moved = Link(
            **{**_fields(links[0]), "urlto": "https://b.example/", "location": "https://b.example/"}
        )
        yield other.write(moved, "update", "https://big.example/l0", uuid4(), NOW + 1)
        yield cache.poll()
        assert len(cache.lru) == 0
        assert (yield cache.lookup("big.example/l0")).urlto == "https://b.example/"
    finally:
        yield cache.stop()


@pytest_twisted.inlineCallbacks
def test_local_change_during_a_reload_is_not_lost(store):
    repo = LinkRepository(store, reactor)
    cache = LinkCache(repo, task.Clock())
    yield cache.start()
    try:
        link = make_link("race.example", "/r", "https://a.example/")
        yield repo.write(make_link("race.example", "/other", "https://a.example/o"), "create",
                         "https://race.example/other", uuid4(), NOW)  # fmt: skip
        # A reload whose query is in flight when a change is applied returns rows read before
        # the change: the change must survive it.
        reload = cache._reload(("moved",))
        cache.apply(link.key, link)
        yield reload
        assert cache.lookup("race.example/r") == link
        assert cache.lookup("race.example/other") is not None
    finally:
        yield cache.stop()


class Recorder:
    """A fallback after the short links that answers whatever reaches it."""

    def __init__(self):
        self.paths = []

    def maybe_render(self, request):
        self.paths.append(request.path)
        return b"next fallback"


def _request(path: bytes, host: bytes) -> server.Request:
    request = server.Request(DummyChannel())
    request.method, request.path, request.uri = b"GET", path, path
    request.clientproto = b"HTTP/1.1"
    request.requestHeaders.setRawHeaders(b"host", [host])
    return request


@pytest_twisted.inlineCallbacks
def test_a_miss_decided_later_continues_with_the_next_fallback(store, tmp_path):
    cfg = load_dict({"DataDirectory": str(tmp_path / "data")})
    gateway = Gateway(cfg, reactor, store=store)
    root = GatewayRoot(gateway)
    root.links.cache.max_index = 0  # lru mode: a cold key is decided after a store query
    recorder = Recorder()
    root.fallbacks.append(recorder)
    link = make_link("late.example", "/yes", "https://a.example/")
    yield root.links.repo.write(link, "create", "https://late.example/yes", uuid4(), NOW)
    yield root.links.cache.start()
    try:
        assert root.links.cache.mode == "lru"
        miss = _request(b"/no", b"late.example")
        transport = miss.channel.transport
        finished = miss.notifyFinish()
        assert root.render(miss) is server.NOT_DONE_YET
        yield finished
        assert recorder.paths == [b"/no"]
        assert transport.written.getvalue().endswith(b"\r\n\r\nnext fallback")

        other_host = _request(b"/no", b"elsewhere.example")
        assert root.render(other_host) == b"next fallback"  # decided at once

        found = _request(b"/yes", b"late.example")
        finished = found.notifyFinish()
        assert root.render(found) is server.NOT_DONE_YET
        yield finished
        assert found.code == 302
        assert found.responseHeaders.getRawHeaders(b"location") == [b"https://a.example/"]
        assert recorder.paths == [b"/no", b"/no"]
    finally:
        yield root.links.cache.stop()
        yield gateway.intake.close()
        gateway.batcher.stop()


def test_legacy_hash_is_the_originals():
    # base64url(SHA1(password)) with padding, as the Go original compared it
    import base64

    digest = hashlib.sha1(b"password").digest()
    assert legacy_hash("password") == base64.urlsafe_b64encode(digest).decode()
