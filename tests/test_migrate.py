"""``python -m sfpltracker migrate --from <original's ClickHouse>`` (sfpltracker/migrate.py).

The source is a real clickhouse-server (Debian's 18.16) loaded with the original's tables
(tests/data/original/schema-18.16.sql) and rows written the way the original's writer writes
them (original-behaviour.md section c): raw IPs in ips/dailies/agreed, unsalted FNV iphash,
zero vids of new visitors, lower-cased params text, ``agreements`` = ``agreed``, ``ltv`` rows
beside ``payments``, ``redirect_history.pathto`` holding the from-path, the seeded demo admin.
The destination is the embedded (chDB) store of a gateway's DataDirectory; the migration runs
as a subprocess, is killed mid-run and resumed, and then a gateway on that directory is asked
what it holds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import pytest_twisted

from sfpltracker.ingest.ids import short_hash
from sfpltracker.links.model import link_key
from sfpltracker.migrate import link_id
from sfpltracker.privacy.ip import truncate
from sfpltracker.store.schema import split_statements
from tests.gateway_process import GatewayProcess
from tests.servers import ClickHouseServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "data" / "original" / "schema-18.16.sql"
ZERO = "00000000-0000-0000-0000-000000000000"
N_EVENTS = 120
BASE = dt.datetime(2026, 11, 1, 8, 0, 0)
HOSTS = ["example.com", "shop.example.org"]
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
OID = "2f1d8a52-7c1b-11ee-b962-0242ac120002"


def u(*parts) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))))


def original_iphash(ip: str) -> str:
    """The original's ``iphash``: four chained b36(FNV-1a) of the IP (b.4)."""
    h1 = short_hash(ip)
    h2 = short_hash(ip + h1)
    h3 = short_hash(ip + h1 + h2)
    return h1 + h2 + h3 + short_hash(ip + h1 + h2 + h3)


def sha1_b64(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha1(text.encode()).digest()).decode()


# -- the original's rows ----------------------------------------------------------------------


def original_rows() -> dict[str, list[dict]]:
    """What the original's writer leaves in its tables after some traffic."""
    rnd = random.Random(16)
    t: dict[str, list[dict]] = {name: [] for name in ("events", "ips", "hits", "referrers")}
    for name in ("dailies", "reqs", "browsers", "hosts", "emails", "counters", "userhosts"):
        t[name] = []
    visitors = [u("vid", i) for i in range(20)]
    for i in range(N_EVENTS):
        host = HOSTS[i % 2]
        created = BASE + dt.timedelta(seconds=37 * i)
        new_visitor = i % 5 == 0
        vid = ZERO if new_visitor else visitors[i % 20]  # the original's new-visitor bug
        raw_ip = f"203.0.113.{i % 50 + 1}"
        url = f"//{host}/page/{i % 7}"
        client = i % 3 == 0  # WebSocket / xrdr events: the client-only side tables too
        t["events"].append(
            {
                "eid": u("eid", i),
                "oid": OID,
                "org": "",
                "vid": vid,
                "sid": ZERO if new_visitor else u("sid", i // 4),
                "hhash": short_hash(host),
                "app": "shop",
                "cflags": 1024,
                "created_at": created,
                "uid": u("uid", i % 6) if i % 2 else ZERO,
                "tid": ZERO,
                "last": "//ref.example/x" if i % 4 == 0 else "",
                "url": url,
                "ip": "" if i % 2 else raw_ip,  # half written with UseRemoveIP: true
                "iphash": original_iphash(raw_ip),
                "lat": 40.7,
                "lon": -74.0,
                "bhash": short_hash(UA.lower()),
                "ename": rnd.choice(["page_view", "click", "conversion"]),
                "etyp": "event",
                "country": "US",
                "region": "ny",
                "city": "new york",
                "score": float(i % 9),
                "params": json.dumps({"plan": "pro", "n": i, "coupon": f"x{i % 3}"}).lower(),
                "targets": "{}",
                "ja4h": "ge11nn05enus_9ed1ff1f7b03_000000000000_000000000000",
                "device": "desktop",
                "os": "linux",
            }
        )
        day = created.date()
        t["ips"].append({"hhash": short_hash(host), "ip": raw_ip, "total": 1, "date": day})
        if client:
            t["hits"].append({"hhash": short_hash(host), "url": url, "total": 1, "date": day})
            t["dailies"].append({"ip": raw_ip, "day": day, "total": 1})
            t["reqs"].append({"hhash": short_hash(host), "vid": vid, "total": 1, "date": day})
            t["browsers"].append(
                {
                    "hhash": short_hash(host),
                    "bhash": short_hash(UA.lower()),
                    "browser": UA.lower(),
                    "total": 1,
                    "date": day,
                }
            )
            t["hosts"].append({"hhash": short_hash(host), "hostname": host, "created_at": created})
            if i % 4 == 0:
                t["referrers"].append(
                    {"hhash": short_hash(host), "url": "//ref.example/x", "total": 1, "date": day}
                )
            if new_visitor:
                t["counters"].append({"id": "vids_created", "total": 1, "date": day})
            if i % 9 == 0:
                t["emails"].append(
                    {
                        "hhash": short_hash(host),
                        "ehash": sha1_b64(f"user{i}@example.com"),
                        "vid": vid,
                        "sid": ZERO,
                        "created_at": created,
                    }
                )

    # /ltv/: one payments row per line item, ltv rows per uid, vid and invid (c.19).
    t["payments"], t["ltv"] = [], []
    for inv in range(3):
        uid, vid, invid = u("uid", inv), visitors[inv], u("invid", inv)
        items = [(inv, k) for k in range(inv + 1)]
        total = 0.0
        for _, k in items:
            revenue = 10.0 * (inv + 1) + k
            total += revenue
            t["payments"].append(
                {
                    "id": u("pay", inv, k),
                    "oid": OID,
                    "uid": uid,
                    "vid": vid,
                    "invid": invid,
                    "orid": u("orid", inv, k),
                    "product": f"plan-{k}",
                    "qty": 1.0,
                    "revenue": revenue,
                    "total": revenue,
                    "currency": "usd",
                    "invoiced_at": BASE,
                    "starts": BASE,
                    "ends": BASE,
                    "paid_at": BASE,
                    "created_at": BASE + dt.timedelta(minutes=inv),
                    "updated_at": BASE + dt.timedelta(minutes=inv),
                }
            )
        for id_, id_type in ((uid, "uid"), (vid, "vid"), (invid, "orid")):
            t["ltv"].append(
                {
                    "hhash": short_hash("example.com"),
                    "id": id_,
                    "id_type": id_type,
                    "paid": total,
                    "oid": OID,
                    "created_at": BASE,
                    "updated_at": BASE,
                }
            )

    # /ppi/agree: one identical row into agreements and agreed (c.18).
    t["agreed"] = []
    for k in range(4):
        raw_ip = f"198.51.100.{k + 7}"
        created = BASE + dt.timedelta(hours=k)
        t["agreed"].append(
            {
                "vid": visitors[k % 3],
                "created_at": created,
                "updated_at": created,
                "cflags": 1024 * (k + 1),
                "hhash": short_hash("example.com"),
                "ip": raw_ip,
                "iphash": original_iphash(raw_ip),
                "browser": UA,
                "bhash": short_hash(UA.lower()),
                "country": "DE",
                "oid": OID,
            }
        )
    t["agreements"] = [dict(r) for r in t["agreed"]]

    # POST /rpi/redirect: a redirects row and a redirect_history row per change (c.16, c.17);
    # the second link changed once.
    t["redirects"], t["redirect_history"] = [], []
    links = [
        ("https://go.example.com/spring", "https://example.com/sale/spring?utm_source=go"),
        ("https://go.example.com/fall", "https://example.com/sale/fall"),
        ("https://go.example.com/fall", "https://example.com/sale/fall-2026?x=1"),
        ("https://Go.Example.com:8443/Winter/", "https://example.com/winter"),
    ]
    for k, (frm, to) in enumerate(links):
        when = BASE + dt.timedelta(days=k)
        host_path = frm.lower().split("://", 1)[1]
        t["redirects"].append(
            {
                "hhash": short_hash("localhost"),
                "urlfrom": host_path,
                "urlto": to,
                "oid": OID,
                "updated_at": when,
                "updater": u("admin"),
                "created_at": when,
            }
        )
        host, _, path = host_path.partition("/")
        t["redirect_history"].append(
            {
                "urlfrom": frm.lower(),
                "hostfrom": host,
                "slugfrom": "/" + path,
                "urlto": to,
                "hostto": "example.com",
                "pathto": "/" + path,  # the original's bug: the from-path
                "oid": OID,
                "updater": u("admin"),
                "updated_at": when,
            }
        )

    # Messaging (c.4), logs and updates (c.20), impression_daily.
    tid = u("tid", 1)
    t["mthreads"] = [
        {
            "tid": tid,
            "oid": OID,
            "ename": "conversion",
            "created_at": BASE + dt.timedelta(seconds=s),
        }
        for s in range(3)
    ]
    t["mstore"] = [
        {"tid": tid, "mid": u("mid", k), "oid": OID, "subject": f"s{k}", "created_at": BASE}
        for k in range(4)
    ]
    t["mtriage"] = [
        {"tid": tid, "mid": u("mid", k), "oid": OID, "urgency": 8, "keep": 1, "created_at": BASE}
        for k in range(2)
    ]
    t["impression_daily"] = [
        {"oid": OID, "tid": tid, "day": BASE.date(), "variant_id": v, "total_impressions": 1,
         "conversions": 1, "updated_at": BASE}
        for v in ("a", "b")
    ]  # fmt: skip
    t["logs"] = [
        {"id": u("log", k), "ldate": BASE.date(), "created_at": BASE, "topic": "tic.log.x",
         "ip": "192.0.2.1", "iphash": original_iphash("192.0.2.1"), "level": 3, "msg": "m",
         "params": "{}"}
        for k in range(5)
    ]  # fmt: skip
    t["updates"] = [{"id": f"u{k}", "updated_at": BASE, "msg": "x"} for k in range(2)]
    return t


def load_original(ch: ClickHouseServer) -> dict[str, list[dict]]:
    client = ch.client(send_receive_timeout=120)
    try:
        for statement in split_statements(SCHEMA.read_text()):
            client.execute(statement)
        rows = original_rows()
        for table, items in rows.items():
            if items:
                columns = sorted({c for r in items for c in r})
                client.execute(f"INSERT INTO sfpla.{table} ({', '.join(columns)}) VALUES", items)
    finally:
        client.disconnect()
    return rows


# -- running the command ----------------------------------------------------------------------


def migrate_cmd(gw: GatewayProcess, ch: ClickHouseServer, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sfpltracker",
        "--config",
        str(gw.config_path),
        "migrate",
        "--from",
        f"clickhouse://default@{ch.host}:{ch.tcp_port}/sfpla",
        *extra,
    ]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_migrate(gw, ch, *extra, timeout=240) -> str:
    done = subprocess.run(
        migrate_cmd(gw, ch, *extra), env=env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def one(gw: GatewayProcess, sql: str):
    rows = gw.query(sql)
    assert len(rows) == 1, rows
    return next(iter(rows[0].values())) if len(rows[0]) == 1 else rows[0]


def table_exists(gw: GatewayProcess, table: str) -> bool:
    return gw.query_raw(f"SELECT 1 FROM sfpla.{table} LIMIT 1").status == 200


# -- tests ------------------------------------------------------------------------------------


@pytest.fixture
def original():
    with ClickHouseServer() as ch:
        rows = load_original(ch)
        yield ch, rows


def test_migrate_killed_and_resumed_copies_every_row_once(tmp_path, original):
    ch, rows = original
    gw = GatewayProcess(tmp_path)
    gw.config_path.write_text(json.dumps(gw.config, indent=2))
    state_dir = Path(gw.config["DataDirectory"]) / "migrate"

    # A first run, pages of 15 rows: once page 3 of events is saved, the state is set aside;
    # after page 5 the run is killed and the older state put back - so pages 4 and 5 are in
    # the store but not in the state (a kill between an insert and its save, made certain).
    proc = subprocess.Popen(
        migrate_cmd(gw, ch, "--batch", "15"),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    saved = None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"events: 45 of {N_EVENTS}"):
                (path,) = state_dir.glob("*.json")
                saved = path.read_bytes()
            if line.startswith(f"events: 75 of {N_EVENTS}"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert saved is not None, "".join(seen)
    landed = json.loads(path.read_text())["tables"]["events"]["read"]
    assert json.loads(saved)["tables"]["events"]["read"] < landed
    path.write_bytes(saved)

    out = run_migrate(gw, ch, "--batch", "15")
    assert f"events: 60 of {N_EVENTS} rows" in out  # resumed after the saved page 3
    assert f"events: {N_EVENTS} of {N_EVENTS} rows (100%)" in out
    summary = {line.split()[0]: line.split() for line in out[out.index("table ") :].splitlines()}
    assert summary["events"][1:4] == [str(N_EVENTS)] * 3  # source rows, copied, inserted
    assert summary["payments"][1:3] == [str(len(rows["payments"]))] * 2
    hit_keys = {(r["hhash"], r["url"], r["date"]) for r in rows["hits"]}  # rows under FINAL
    assert summary["hits"][1:4] == [str(len(hit_keys))] * 3
    assert summary["mtriage"][1:4] == [str(len(rows["mtriage"]))] * 3
    assert "not copied: summed here from payments" in " ".join(summary["ltv"])
    assert "not copied" in " ".join(summary["accounts"])

    # A third run finds everything done and copies nothing again.
    again = run_migrate(gw, ch, "--batch", "15")
    assert f"events: done before ({N_EVENTS} rows)" in again

    with gw:
        check_destination(gw, rows)


def check_destination(gw: GatewayProcess, rows: dict[str, list[dict]]) -> None:
    events = rows["events"]
    # Every event once: the raw count (no FINAL), and the views fed by each insert
    # (visitors sums one per event it was sent: a page sent twice would count twice).
    assert one(gw, "SELECT count() FROM sfpla.events") == N_EVENTS
    assert one(gw, "SELECT uniqExact(eid) FROM sfpla.events") == N_EVENTS
    assert int(one(gw, "SELECT sum(events) FROM sfpla.visitors")) == N_EVENTS
    assert int(one(gw, "SELECT sum(events) FROM sfpla.sessions")) == N_EVENTS
    assert one(gw, "SELECT min(server) FROM sfpla.events") == 1

    # Mapped values of one event with a raw IP and one written with UseRemoveIP.
    e = events[10]
    got = one(
        gw,
        "SELECT toString(vid) AS vid, toUnixTimestamp64Milli(created_at) AS ms, url, ip, "
        "iphash, ename, toString(params.plan) AS plan, toInt64(params.n) AS n, hhash "
        f"FROM sfpla.events WHERE eid = '{e['eid']}'",
    )
    assert got["vid"] == e["vid"]
    assert int(got["ms"]) == int(e["created_at"].replace(tzinfo=dt.UTC).timestamp() * 1000)
    assert (got["url"], got["ename"], got["hhash"]) == (e["url"], e["ename"], e["hhash"])
    assert (got["plan"], int(got["n"])) == ("pro", 10)
    assert got["ip"] == truncate(e["ip"]) == "203.0.113.0"
    assert got["iphash"] and got["iphash"] != e["iphash"]
    removed = one(
        gw, f"SELECT ip, iphash FROM sfpla.events WHERE eid = '{events[11]['eid']}'"
    )  # UseRemoveIP: no IP, and the reversible FNV hash replaced by a keyed one
    assert removed["ip"] == "" and removed["iphash"] not in ("", events[11]["iphash"])
    assert (
        one(gw, "SELECT count() FROM sfpla.events WHERE vid = toUUID('" + ZERO + "')")
        == N_EVENTS // 5
    )

    # The original's side tables as they were (not counted again from the events).
    for table, column in (("hits", "total"), ("referrers", "total"), ("dailies", "total")):
        expected = sum(r[column] for r in rows[table])
        assert int(one(gw, f"SELECT sum({column}) FROM sfpla.{table}")) == expected, table
    raw = {r["ip"] for r in rows["dailies"]}
    stored = {r["ip"] for r in gw.query("SELECT DISTINCT ip FROM sfpla.dailies")}
    assert stored == {truncate(ip) for ip in raw} and not stored & raw

    # payments once; ltv derived from them here (the original's ltv rows are not copied).
    assert one(gw, "SELECT count() FROM sfpla.payments") == len(rows["payments"])
    uid_paid = sum(p["revenue"] for p in rows["payments"])
    assert one(gw, "SELECT sum(paid) FROM sfpla.ltv WHERE id_type = 'uid'") == uid_paid
    assert one(gw, "SELECT sum(payments) FROM sfpla.ltvu") == len(rows["payments"])

    # Consent: agreed once with an id; agreements derived (latest per visitor).
    assert one(gw, "SELECT count() FROM sfpla.agreed") == len(rows["agreed"])
    assert one(gw, "SELECT uniqExact(id) FROM sfpla.agreed") == len(rows["agreed"])
    vids = {r["vid"] for r in rows["agreed"]}
    assert one(gw, "SELECT count() FROM sfpla.agreements FINAL") == len(vids)
    a = one(gw, "SELECT ip, browser, cflags FROM sfpla.agreed WHERE cflags = 4096")
    assert (a["ip"], a["browser"]) == ("198.51.100.0", "Chrome")

    # Short links: this gateway's key form, the newest version, an id per link.
    links = {
        r["urlfrom"]: r
        for r in gw.query(
            "SELECT urlfrom, host, path, urlto, toString(id) AS id FROM sfpla.redirects FINAL"
        )
    }
    assert set(links) == {"go.example.com/spring", "go.example.com/fall", "go.example.com/winter"}
    fall = links["go.example.com/fall"]
    assert fall["urlto"] == "https://example.com/sale/fall-2026?x=1"
    assert (fall["host"], fall["path"]) == ("go.example.com", "/fall")
    assert fall["id"] == link_id(link_key("go.example.com", "/fall"))
    history = gw.query(
        "SELECT urlfrom, pathto, searchto FROM sfpla.redirect_history ORDER BY updated_at"
    )
    assert len(history) == len(rows["redirect_history"])
    assert [h["pathto"] for h in history] == [
        "/sale/spring",
        "/sale/fall",
        "/sale/fall-2026",
        "/winter",
    ]
    assert history[2]["searchto"] == "x=1"
    # The demo admin (unsalted SHA-1 password) is not carried over.
    assert one(gw, "SELECT count() FROM sfpla.accounts") == 0

    # One thread per tid here (the original's key took created_at: a "thread" per event).
    assert one(gw, "SELECT count() FROM sfpla.mthreads FINAL") == 1
    for table in ("mstore", "mtriage"):
        assert one(gw, f"SELECT count() FROM sfpla.{table}") == len(rows[table]), table

    # The original's tables this schema may not have (yet): copied when it has them.
    for table in ("ips", "reqs", "browsers", "hosts", "emails", "counters", "logs", "updates"):
        if table_exists(gw, table):
            assert one(gw, f"SELECT count() FROM sfpla.{table} FINAL") > 0, table


def test_migrate_through_the_running_gateway(tmp_path, original):
    """With the gateway running (chDB: it owns the store), the command has it insert."""
    ch, rows = original
    with GatewayProcess(tmp_path) as gw:
        out = run_migrate(gw, ch)
        assert "the gateway is running" in out
        assert f"events: {N_EVENTS} of {N_EVENTS} rows (100%)" in out
        assert one(gw, "SELECT count() FROM sfpla.events") == N_EVENTS
        assert one(gw, "SELECT count() FROM sfpla.payments") == len(rows["payments"])
        assert one(gw, "SELECT count() FROM sfpla.redirect_history") == len(
            rows["redirect_history"]
        )


class FailsAfter:
    """The real store, whose inserts fail after ``n`` of them (a crash mid-page, made certain)."""

    def __init__(self, store, n: int):
        self.store, self.left = store, n
        self.chunks: list[int] = []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def insert(self, table, rows, **kw):
        from twisted.internet import defer

        from sfpltracker.store.errors import StoreError

        if self.left == 0:
            return defer.fail(StoreError("the process died here"))
        self.left -= 1
        self.chunks.append(len(rows))
        return self.store.insert(table, rows, **kw)


@pytest_twisted.inlineCallbacks
def test_a_page_bigger_than_an_insert_goes_in_chunks_each_stored_once(
    tmp_path, original, store, monkeypatch
):
    """A page is cut into inserts the store can take (the batcher's bounds; lowered here to 7
    rows). A page cut short after 3 of its chunks and sent again (a resumed copy) is cut the
    same way: the landed chunks are recognised by their tokens, nothing is stored twice in
    ``events`` nor counted twice by a view."""
    from sfpltracker import migrate
    from sfpltracker.config import load_dict

    ch, _ = original
    monkeypatch.setattr(migrate, "INSERT_ROWS", 7)
    mapper = migrate.Mapper(load_dict({"DataDirectory": str(tmp_path / "data")}))
    url = f"clickhouse://default@{ch.host}:{ch.tcp_port}/sfpla"
    crashing = FailsAfter(store, 3)
    with pytest.raises(Exception, match="the process died here"):
        yield migrate.copy_page(crashing, mapper, url, "events", None, 50)
    assert crashing.chunks == [7, 7, 7]
    resumed = FailsAfter(store, 1000)
    page = yield migrate.copy_page(resumed, mapper, url, "events", None, 50)
    assert resumed.chunks == [7] * 7 + [1]
    assert page["read"] == 50 and not page["done"]
    counts = yield store.execute(
        "SELECT (SELECT count() FROM sfpla.events), (SELECT uniqExact(eid) FROM sfpla.events),"
        " (SELECT sum(events) FROM sfpla.visitors) FORMAT TSV"
    )
    assert counts.decode().split() == ["50", "50", "50"]


def test_migrate_refuses_a_source_that_is_not_a_clickhouse_url(tmp_path):
    gw = GatewayProcess(tmp_path)
    gw.config_path.write_text(json.dumps(gw.config, indent=2))
    cmd = [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), "migrate"]
    done = subprocess.run(
        [*cmd, "--from", "http://127.0.0.1:8123/"], env=env(), capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "clickhouse://user:password@host:9000/sfpla" in done.stderr


def test_migrate_refuses_the_gateways_own_database(tmp_path):
    """The original's config.json names its database (Context sfpla), which a gateway started
    on that file writes too: copying it into itself is refused, with what to do instead."""
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "DataDirectory": str(tmp_path / "data"),
                "Notify": [
                    {"Service": "clickhouse", "Hosts": ["localhost:9000"], "Context": "sfpla"}
                ],
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(config), "migrate", "--from",
         "clickhouse://default@127.0.0.1:9000/sfpla"],
        env=env(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "own database" in done.stderr and '"Database": "sfpltracker"' in done.stderr


def test_migrate_into_a_clickhouse_server_store(tmp_path, original):
    """The store a ClickHouse server (here a database of its own on the original's server, with
    the schema downgraded for 18.16): rows go in over the native protocol; pages sent again
    (their saved positions lost) skip what is stored (keys; link history by its key)."""
    from tests.clickhouse_legacy import downgrade_schema

    ch, rows = original
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "DataDirectory": str(tmp_path / "data"),
                "QueryPort": "",
                "Notify": [{"Type": "clickhouse", "Hosts": [ch.hostport], "Database": "mine"}],
            }
        )
    )
    environment = dict(env(), SFPL_SCHEMA_DIR=str(downgrade_schema(tmp_path / "schema")))
    cmd = [sys.executable, "-m", "sfpltracker", "--config", str(config), "migrate", "--from",
           f"clickhouse://default@{ch.host}:{ch.tcp_port}/sfpla", "--batch", "50"]  # fmt: skip

    def migrate() -> str:
        done = subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "into the clickhouse store" in migrate()
    (path,) = (tmp_path / "data" / "migrate").glob("*.json")
    state = json.loads(path.read_text())
    for table in ("events", "payments", "agreed", "redirect_history"):
        state["tables"][table] = {"after": None, "read": 0, "stored": 0, "done": False}
    path.write_text(json.dumps(state))
    migrate()

    client = ch.client()
    try:

        def count(sql: str) -> int:
            return client.execute(sql)[0][0]

        assert count("SELECT count() FROM mine.events") == N_EVENTS
        assert count("SELECT min(server) FROM mine.events") == 1
        assert count("SELECT count() FROM mine.payments") == len(rows["payments"])
        assert count("SELECT count() FROM mine.agreed") == len(rows["agreed"])
        assert count("SELECT count() FROM mine.redirect_history") == len(rows["redirect_history"])
        assert count("SELECT sum(total) FROM mine.hits") == sum(r["total"] for r in rows["hits"])
        raw_ip = rows["events"][10]["ip"]
        stored = client.execute(
            f"SELECT ip FROM mine.events WHERE eid = '{rows['events'][10]['eid']}'"
        )
        assert stored == [(truncate(raw_ip),)]
        # The original's database is only read.
        assert count("SELECT count() FROM sfpla.events") == N_EVENTS
    finally:
        client.disconnect()
