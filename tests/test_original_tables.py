"""The original tracker's tables and views, read with the original's own queries.

A real gateway process on chDB takes events the way the original's clients send them; the
original's side tables (ips, reqs, browsers, hosts, userhosts, usernames, emails, cells,
counters, impression_daily) are filled by materialized views from ``events`` and read with
``FINAL``; its views (visitors_latest, nodes, ...) read ``events``. Its tests' check
``SELECT count() FROM sfpla.<table> FINAL`` runs on every table it names, redirect_history
included (a MergeTree refused FINAL). The same flow runs on Debian's ClickHouse 18.16 with the
downgraded schema (tests/clickhouse_legacy.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid

import pytest
import pytest_twisted

from sfpltracker.store.embedded.store import EmbeddedStore
from tests.clickhouse_legacy import downgrade_schema
from tests.gateway_process import ROOT, GatewayProcess
from tests.servers import ClickHouseServer

QUICK = {"Strategy": "hybrid", "MaxBatchSize": 100, "MaxBatchTime": "100ms"}
TABLES = ("events", "payments", "agreed", "mthreads", "mstore", "mtriage", "redirects")
CONFIG = {"Batching": {t: QUICK for t in TABLES}, "Domains": ["localhost", "tracker.test"]}
ZERO = "00000000-0000-0000-0000-000000000000"
# The tables the original's tests/test_db_writes.sh counts with FINAL.
DB_WRITES = (
    "events ltv payments redirects redirect_history agreements agreed mthreads mstore mtriage"
).split()


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("original"), CONFIG) as gateway:
        yield gateway


def visit(gw, **fields) -> dict:
    """A client event (POST /tr/v1/tr/) from a browser on ``shop.test``; ids in ``fields``."""
    body = {"ename": "page_view", "etyp": "view", **fields}
    headers = {
        "Host": "Shop.Test:8080",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    }
    r = gw.http("POST", "/tr/v1/tr/", json_body=body, headers=headers)
    assert r.status == 200, r
    return body


def test_side_tables_are_filled_from_client_events(gw):
    vid, sid, uid, ref = new_id(), new_id(), new_id(), new_id()
    common = {"vid": vid, "sid": sid, "uid": uid, "url": "https://shop.test/a"}
    visit(gw, **common, email="Ada@Example.com", uname="ada", cell="+1 555 0100", ref=ref,
          rcode="friend", lat=37.77, lon=-122.42, last="https://search.test/")  # fmt: skip
    visit(gw, **{**common, "url": "https://shop.test/b"})
    gw.wait_for(f"SELECT eid FROM sfpla.events FINAL WHERE vid = '{vid}'", lambda r: len(r) == 2)

    def final(table: str, where: str) -> list[dict]:
        return gw.wait_for(f"SELECT * FROM sfpla.{table} FINAL WHERE {where}", lambda r: r)

    hhash = final("hosts", "hostname = 'shop.test'")[0]["hhash"]
    assert final("reqs", f"vid = '{vid}'")[0]["total"] == 2
    assert {r["ip"]: r["total"] for r in final("ips", f"hhash = '{hhash}'")} == {"127.0.0.0": 2}
    browsers = final("browsers", f"hhash = '{hhash}'")
    assert [(b["browser"], b["total"]) for b in browsers] == [("Firefox", 2)]
    assert [r["sid"] for r in final("userhosts", f"uid = '{uid}'")] == [sid]
    for table, column in (("emails", "ehash"), ("usernames", "uhash"), ("cells", "chash")):
        rows = final(table, f"vid = '{vid}'")
        assert len(rows) == 1 and len(rows[0][column]) >= 20, (table, rows)
    # Never the values themselves, in any of them.
    raw = str(gw.query(f"SELECT * FROM sfpla.events WHERE vid = '{vid}'"))
    for value in ("Ada@Example.com", "ada@example.com", "+1 555 0100", "'ada'"):
        assert value not in raw

    # The original's views, by its column names.
    assert gw.query(f"SELECT url FROM sfpla.visitors_latest WHERE vid = '{vid}'") == [
        {"url": "https://shop.test/b"}
    ]
    nodes = gw.query(f"SELECT ip, toString(sid) AS sid FROM sfpla.nodes WHERE vid = '{vid}'")
    assert nodes == [{"ip": "127.0.0.0", "sid": sid}]
    assert gw.query(f"SELECT lat, lon FROM sfpla.locations WHERE vid = '{vid}'") == [
        {"lat": 37.77, "lon": -122.42}
    ]
    assert gw.query(f"SELECT toString(uid) AS u FROM sfpla.aliases WHERE vid = '{vid}'") == [
        {"u": uid}
    ]
    assert len(gw.query(f"SELECT * FROM sfpla.user_sessions WHERE uid = '{uid}'")) == 1
    assert gw.query(f"SELECT url FROM sfpla.routed WHERE hhash = '{hhash}'") == [
        {"url": "https://shop.test/b"}
    ]
    assert gw.query(f"SELECT toString(ref) AS r, gen FROM sfpla.referrals WHERE vid = '{vid}'") == [
        {"r": ref, "gen": 0}
    ]
    assert gw.query(f"SELECT rcode FROM sfpla.referred WHERE vid = '{vid}'") == [
        {"rcode": "friend"}
    ]
    last = gw.query(
        f"SELECT ename, days_since FROM sfpla.last_event_by_vid_uid_ename WHERE vid = '{vid}'"
    )
    assert last == [{"ename": "page_view", "days_since": 0}]
    by_user = gw.query(f"SELECT event_type FROM sfpla.last_event_by_user WHERE uid = '{uid}'")
    assert by_user == [{"event_type": "page_view"}]


def test_impression_daily_counts_accumulate(gw):
    tid, oid, uid = new_id(), new_id(), new_id()
    for fields in (
        {"ename": "conversion"},
        {"ename": "conversion", "uid": uid},
        {"ename": "click", "score": 2},
    ):
        visit(gw, vid=new_id(), tid=tid, oid=oid, xid="variant-b", **fields)
    visit(gw, vid=new_id(), tid=tid, oid=oid, ename="click")  # no score, no conversion
    rows = gw.wait_for(
        "SELECT variant_id, total_impressions, anonymous_impressions, identified_impressions, "
        f"unique_visitors, conversions FROM sfpla.impression_daily FINAL WHERE tid = '{tid}'",
        lambda r: r and r[0]["total_impressions"] == 3,
    )
    assert rows == [
        {
            "variant_id": "variant-b",
            "total_impressions": 3,
            "anonymous_impressions": 2,
            "identified_impressions": 1,
            "unique_visitors": 3,
            "conversions": 2,
        }
    ]
    funnel = gw.query(f"SELECT count() AS n FROM sfpla.conversion_funnel WHERE oid = '{oid}'")
    assert funnel == [{"n": 2}]
    freq = gw.query(
        f"SELECT event_type, total_events FROM sfpla.event_frequency WHERE oid = '{oid}' "
        "ORDER BY event_type"
    )
    assert freq == [{"event_type": "click", "total_events": 2},
                    {"event_type": "conversion", "total_events": 2}]  # fmt: skip


def test_vids_created_counts_minted_visitors_once(gw):
    before = gw.query("SELECT sum(total) AS n FROM sfpla.counters WHERE id = 'vids_created'")
    before_n = int(before[0]["n"] or 0)
    # A new browser sends a batch of two: one visitor minted.
    r = gw.http("POST", "/tr/v1/tr/", json_body=[{"ename": "a"}, {"ename": "b"}])
    assert r.status == 200 and "vid=" in (r.header("set-cookie") or "")
    # A returning one (its vid cookie) and a server event: none.
    vid = new_id()
    assert gw.http("POST", "/tr/v1/tr/", json_body={"ename": "c"},
                   headers={"Cookie": f"vid={vid}"}).status == 200  # fmt: skip
    assert gw.http("POST", "/tr/v1/str/", json_body={"ename": "d"}).status == 200
    gw.wait_for(f"SELECT eid FROM sfpla.events FINAL WHERE vid = '{vid}'", lambda r: r)
    rows = gw.wait_for(
        "SELECT sum(total) AS n FROM sfpla.counters FINAL WHERE id = 'vids_created'",
        lambda r: int(r[0]["n"] or 0) > before_n,
    )
    assert int(rows[0]["n"]) == before_n + 1


def cli(gw, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_original_db_writes_flow_counts_with_final(gw):
    """tests/test_db_writes.sh of the original: each endpoint, then count() ... FINAL."""
    oid = new_id()
    assert (
        gw.http("POST", "/tr/v1/tr/", json_body={"ename": "test_event", "oid": oid}).status == 200
    )
    r = gw.http("POST", "/tr/v1/ltv/", json_body={"vid": new_id(), "uid": new_id(), "oid": oid,
                                                   "amt": 99.99, "orid": new_id()})  # fmt: skip
    assert r.status == 200
    account = dict(
        re.findall(r"^(\w+):\s*(\S+)$", cli(gw, "account", "create", "--org", "o"), re.M)
    )
    r = gw.http(
        "POST",
        f"/tr/v1/rpi/redirect/{account['uid']}/{account['secret']}",
        json_body={"urlfrom": "https://yourdomain.test/test-short",
                   "urlto": "https://example.com/long/path?utm_source=test"},
    )  # fmt: skip
    assert r.status == 200, r
    r = gw.http("POST", "/tr/v1/ppi/agree", json_body={"vid": new_id(), "cflags": 1024, "oid": oid})
    assert r.status == 200
    r = gw.http("POST", "/tr/v1/tr/", json_body={"ename": "conversion", "tid": new_id(), "oid": oid,
                                                  "subject": "Test Conversion"})  # fmt: skip
    assert r.status == 200
    for table in DB_WRITES:
        gw.wait_for(f"SELECT count() AS n FROM sfpla.{table} FINAL", lambda r: int(r[0]["n"]) > 0)
    history = gw.query(
        "SELECT hostfrom, slugfrom FROM sfpla.redirect_history FINAL "
        "WHERE hostfrom = 'yourdomain.test'"
    )
    assert history == [{"hostfrom": "yourdomain.test", "slugfrom": "/test-short"}]


OLD_HISTORY = """CREATE TABLE sfpla.redirect_history (urlfrom String, hostfrom String,
slugfrom String, urlto String, hostto String, pathto String, searchto String, oid UUID,
org LowCardinality(String), updater UUID, updated_at DateTime64(3, 'UTC'), id UUID,
action LowCardinality(String), status UInt16, expires DateTime64(3, 'UTC'),
forward_query UInt8) ENGINE = MergeTree ORDER BY (urlfrom, updated_at)"""


@pytest_twisted.inlineCallbacks
def test_an_older_merge_tree_redirect_history_is_rebuilt_for_final(tmp_path):
    """A store an older schema made keeps its history, now readable with FINAL."""
    from twisted.internet import reactor

    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    try:
        yield store.execute("DROP TABLE sfpla.redirect_history")
        yield store.execute(OLD_HISTORY)
        yield store.execute(
            "INSERT INTO sfpla.redirect_history (urlfrom, hostfrom, action, updated_at) VALUES "
            "('https://a.test/x', 'a.test', 'create', '2025-01-01 00:00:00'), "
            "('https://a.test/x', 'a.test', 'update', '2025-01-02 00:00:00')"
        )
        yield store.load_schema()
        engine = yield store.query(
            "SELECT engine FROM system.tables WHERE database = 'sfpla' "
            "AND name = 'redirect_history'", "TabSeparated"
        )  # fmt: skip
        assert engine.decode().strip() == "ReplacingMergeTree"
        rows = yield store.query(
            "SELECT action FROM sfpla.redirect_history FINAL ORDER BY updated_at", "TabSeparated"
        )
        assert rows.decode().split() == ["create", "update"]
    finally:
        yield store.stop()


def test_side_tables_on_clickhouse_18_16(tmp_path, monkeypatch):
    """The same views on a ClickHouse server (the schema downgraded for Debian's 18.16)."""
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    database = "orig_" + uuid.uuid4().hex[:8]
    vid, uid, tid, oid = new_id(), new_id(), new_id(), new_id()
    with ClickHouseServer() as server:
        config = {
            **CONFIG,
            "Notify": [{"Type": "clickhouse", "Hosts": [server.hostport], "Timeout": 5,
                        "Database": database}],
        }  # fmt: skip
        c = server.client()
        with GatewayProcess(tmp_path, config) as gateway:
            visit(gateway, vid=vid, uid=uid, uname="ada", tid=tid, oid=oid, ename="conversion")

            def final(sql):
                return c.execute(sql.replace("sfpla.", f"{database}."))

            rows = None
            for _ in range(150):  # the views' parts land with the events batch
                rows = final(f"SELECT count() FROM sfpla.usernames FINAL WHERE vid = '{vid}'")
                if rows[0][0]:
                    break
                time.sleep(0.2)
            assert rows == [(1,)]
            gateway.wait_settled()  # the other views' parts of the same insert
            assert final("SELECT sum(total) FROM sfpla.ips FINAL") == [(1,)]
            assert final("SELECT hostname FROM sfpla.hosts FINAL WHERE hostname = 'shop.test'") == [
                ("shop.test",)
            ]
            assert final(
                f"SELECT conversions FROM sfpla.impression_daily FINAL WHERE tid = '{tid}'"
            ) == [(1,)]
            assert final(f"SELECT count() FROM sfpla.userhosts FINAL WHERE uid = '{uid}'") == [(1,)]
            assert final(f"SELECT count() FROM sfpla.aliases WHERE uid = '{uid}'") == [(1,)]
            assert final("SELECT count() FROM sfpla.redirect_history FINAL") == [(0,)]


WRITE_ORG = """
import sys
from sfpltracker.store.embedded.store import EmbeddedStore
store = EmbeddedStore(sys.argv[1], reactor=None)
store._open_and_load()
store._writer.query(
    "INSERT INTO sfpla.orgs (oid, org, ddata, updated_at) VALUES "
    "('" + sys.argv[2] + "', 'acme', '{\\"default_destination_host\\": \\"https://www.acme.test\\"}', "
    "now64(3))"
)
store._writer.close()
"""


def test_tracked_links_to_a_path_go_to_the_orgs_default_destination_host(tmp_path):
    """The original's orgs.ddata.default_destination_host for a tracked link to ``/path``."""
    gateway = GatewayProcess(tmp_path, CONFIG)
    with gateway:
        out = cli(gateway, "account", "create", "--org", "acme")
    account = dict(re.findall(r"^(\w+):\s*(\S+)$", out, re.M))
    # The operator's orgs row, written while no gateway holds the store.
    subprocess.run(
        [sys.executable, "-c", WRITE_ORG, gateway.config["DataDirectory"], account["oid"]],
        check=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    with gateway:
        creds = f"/tr/v1/rpi/redirect/{account['uid']}/{account['secret']}"
        links = {
            "sale": "https://tracker.test/tr/v1/rdr/?url=/sale%3Fx%3D1&utm_source=mail",
            "other": f"https://tracker.test/tr/v1/rdr/?url=/b&oid={uuid.UUID(int=7)}",
            "plain": "https://shop.test/c",
        }
        for slug, urlto in links.items():
            body = {"urlfrom": f"https://go.test/{slug}", "urlto": urlto}
            assert gateway.http("POST", creds, json_body=body).status == 200
        where = {
            slug: gateway.http("GET", f"/{slug}", headers={"Host": "go.test"}).header("location")
            for slug in links
        }
    assert where == {
        "sale": "https://www.acme.test/sale?x=1",
        "other": "https://tracker.test/b",  # an org without a row: against the tracked URL
        "plain": "https://shop.test/c",
    }
