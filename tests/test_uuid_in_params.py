"""``UUID IN {p:Array(UUID)}`` (issue 16's note: "matched nothing on orgs in chDB"): the short
links' reads that use it - clicks per link id, the organisations' default destination host -
through the repository on both stores: chDB (server-side parameters) and a ClickHouse server
that takes none (18.16: bound on the client, ``store/clickhouse/legacy.py``).

What the note saw was not the parameter: ``SELECT toString(oid) AS oid ... WHERE oid IN
{oids:Array(UUID)}`` compares the alias (text) in WHERE, which chDB matches with no UUID; the
orgs read now names its text column ``org_id`` and compares the UUID column.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor

from sfpltracker.ingest.ids import short_hash
from sfpltracker.links.model import Link
from sfpltracker.links.repository import LinkRepository
from sfpltracker.store.clickhouse.store import ClickHouseStore
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer

HOST = "uuid-in.test"


def link(oid: str, path: str, urlto: str = "https://elsewhere.test/") -> Link:
    return Link(id=str(uuid.uuid4()), host=HOST, path=path, urlto=urlto, location=urlto, oid=oid)


@pytest_twisted.inlineCallbacks
def check(store):
    now = int(time.time() * 1000)
    oids = [str(uuid.uuid4()) for _ in range(3)]
    links = [link(oids[0], "/a"), link(oids[1], "/b"), link(oids[2], "/c")]
    clicks = {links[0].id: 2, links[1].id: 1}  # links[2]: none
    events = [
        {"eid": str(uuid.uuid4()), "ename": "short_rdr", "rid": rid, "hhash": short_hash(HOST),
         "created_at": now, "server": 0, "bot": 0}
        for rid, n in clicks.items() for _ in range(n)
    ]  # fmt: skip
    assert (yield store.insert("events", events)) == 3
    orgs = [
        {"oid": oid, "org": "", "ddata": json.dumps({"default_destination_host": f"{i}.dest"}),
         "created_at": now, "updated_at": now}
        for i, oid in enumerate(oids[:2])
    ]  # fmt: skip
    assert (yield store.insert("orgs", orgs)) == 2
    repo = LinkRepository(store)

    assert (yield repo.clicks(links)) == clicks
    # tracked links to a path go to their organisation's host; the org without a row: as sent
    tracked = [
        link(oid, f"/t{i}", f"https://{HOST}/tr/v1/rdr/?url=/landing&oid={oid}")
        for i, oid in enumerate(oids)
    ]
    located = yield repo.with_org_hosts(tracked)
    assert [x.location for x in located] == [
        "https://0.dest/landing",
        "https://1.dest/landing",
        tracked[2].location,
    ]
    # the pattern itself, on the store's own read path
    keys = "[" + ",".join(f"'{o}'" for o in oids[:2]) + "]"
    data = yield store.query(
        f"SELECT count() AS n FROM {repo.database}.orgs FINAL WHERE oid IN {{oids:Array(UUID)}}",
        "JSONEachRow",
        params={"oids": keys},
    )
    assert int(json.loads(data)["n"]) == 2


@pytest_twisted.inlineCallbacks
def test_embedded_store(store):
    yield check(store)


@pytest.fixture(scope="module")
def server():
    with ClickHouseServer() as ch:
        yield ch


@pytest_twisted.inlineCallbacks
def test_clickhouse_server_binding_parameters_on_the_client(server, tmp_path):
    store = ClickHouseStore(
        reactor,
        [server.hostport],
        tmp_path / "data",
        schema_directory=downgrade_schema(tmp_path / "schema"),
        database="t_" + uuid.uuid4().hex[:10],
    )
    yield store.start()
    try:
        assert store.legacy is not None and store.legacy.bind_parameters
        yield check(store)
    finally:
        yield store.stop()
