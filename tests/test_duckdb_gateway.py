"""A real gateway process on the DuckDB store (``{"Type": "duckdb", "File": ...}``): the routes
that read the store (short links, accounts through the CLI, ``/ppi/agree``, ``/ppi/jds``),
the query listener and ``python -m sfpltracker query`` (DuckDB SQL, hostile statements
refused), and every acknowledged event stored exactly once after SIGKILLs mid-load."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter

import pytest

from tests.gateway_process import GatewayProcess
from tests.test_durability import LoadClient, drained, health, wait_health
from tests.test_shortlinks import cli, create_account, hit, save

DUCKDB = {"Notify": [{"Type": "duckdb", "File": "data/sfpla.duckdb"}]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    config = {**DUCKDB, "Domains": ["localhost", "go.duck.test"], "LoginFailureLimit": 1000}
    with GatewayProcess(tmp_path_factory.mktemp("duck"), config) as gateway:
        assert gateway.http("GET", "/health").json()["store"]["kind"] == "duckdb"
        yield gateway


def test_the_store_is_the_duckdb_file(gw):
    assert gw.http("GET", "/health").json()["store"]["kind"] == "duckdb"
    assert (gw.workdir / "data" / "sfpla.duckdb").is_file()
    assert not (gw.workdir / "data" / "chdb").exists()


def test_events_land_once_and_the_derived_views_count_them(gw):
    eid = str(uuid.uuid4())
    body = {"eid": eid, "ename": "visit", "url": "https://duck.test/a", "outcome": "ok"}
    for _ in range(2):  # a client retry with the same eid
        assert gw.http("POST", "/tr/v1/tr/", json_body=body).status == 200
    gw.wait_for(f"SELECT count(*) AS n FROM sfpla.events WHERE eid = '{eid}'", lambda r: r[0]["n"])
    time.sleep(0.5)  # the retry's batch, if any, lands too
    assert gw.query(f"SELECT count(*) AS n FROM sfpla.events WHERE eid = '{eid}'") == [{"n": 1}]
    rows = gw.query("SELECT total FROM sfpla.hits WHERE url = 'https://duck.test/a'")
    assert rows == [{"total": 1}]


def test_consent_is_read_back_and_jurisdictions_are_seeded(gw):
    vid = str(uuid.uuid4())
    r = gw.http("POST", "/tr/v1/ppi/agree", json_body={"vid": vid, "cflags": 1024})
    assert r.status == 200
    deadline = time.monotonic() + 30
    while not (got := gw.http("GET", f"/tr/v1/ppi/agree?vid={vid}").json()):
        assert time.monotonic() < deadline, "the agreement never came back"
        time.sleep(0.2)
    (row,) = got
    assert (row["vid"], row["cflags"]) == (vid, 1024) and "ip" not in row
    jds = gw.http("GET", "/tr/v1/ppi/jds").json()
    assert {j["regulation"] for j in jds} >= {"GDPR", "CCPA/CPRA"}
    gdpr = next(j for j in jds if j["regulation"] == "GDPR")
    assert "FR" in gdpr["countries"] and gdpr["rules"]["consent"] == "opt-in"


def test_short_links_work_from_the_cli_account_to_the_redirect(gw):
    acme = create_account(gw, "acme")
    listed = cli(gw, "account", "list")
    assert listed.returncode == 0 and acme["uid"] in listed.stdout
    body = {"urlfrom": "go.duck.test/spring", "urlto": "https://shop.example/s?a=1"}
    r = save(gw, acme, body)
    assert r.status == 200, r
    r = hit(gw, "go.duck.test", "/spring")
    assert r.status == 302 and r.header("location").startswith("https://shop.example/s")
    r = save(gw, acme, {**body, "urlto": "https://shop.example/t", "status": 301})
    assert r.status == 200 and r.json()["created"] is False
    r = hit(gw, "go.duck.test", "/spring")
    assert r.status == 301 and r.header("location") == "https://shop.example/t"
    r = gw.http("GET", f"/tr/v1/rpi/redirects/{acme['uid']}/{acme['secret']}/go.duck.test")
    assert r.status == 200 and [x["urlto"] for x in r.json()["results"]] == [
        "https://shop.example/t"
    ]


def test_the_cli_query_runs_duckdb_sql_through_the_running_gateway(gw):
    out = cli(gw, "query", "SELECT count(*) AS n FROM sfpla.jurisdictions", "-f", "TSV")
    assert out.returncode == 0 and out.stdout == "4\n", out.stderr
    out = cli(gw, "query", "SELECT * FROM read_csv('/etc/passwd')")
    assert out.returncode == 1 and "READONLY" in out.stderr and "root:" not in out.stderr


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT content FROM read_text('/etc/passwd')",
        "COPY sfpla.events TO '/tmp/sfpl-duck-out.csv'",
        "ATTACH '/tmp/sfpl-duck-other.duckdb' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "DROP TABLE sfpla.events",
        "SELECT 1; DELETE FROM sfpla.events",
        "WITH x AS (DELETE FROM sfpla.events RETURNING *) SELECT count(*) FROM x",
    ],
)
def test_a_hostile_query_is_refused_by_the_listener(gw, sql):
    r = gw.query_raw(sql, "TabSeparated")
    assert r.status == 403 and b"READONLY" in r.body and b"root:" not in r.body
    assert gw.query("SELECT 1 AS one") == [{"one": 1}]


def test_a_sigkill_mid_load_then_restart_stores_each_ack_once(tmp_path):
    # Tiny batches flushed back to back: the store is nearly always in the middle of an
    # insert when the gateway is killed; the spool replays what its committed position does
    # not cover and the insert journal re-sends the batch that was in flight with its token.
    tiny = {"Strategy": "hybrid", "MaxBatchSize": 20, "MaxBatchTime": "20ms"}
    config = {**DUCKDB, "Batching": {"events": tiny, "payments": tiny, "agreed": tiny}}
    gw = GatewayProcess(tmp_path, config)
    acked: dict[str, list[str]] = {"event": [], "payment": [], "consent": []}
    replayed = resent = 0
    try:
        gw.start()
        assert health(gw)["store"]["kind"] == "duckdb"
        for _ in range(2):
            loads = [LoadClient(gw, 2), LoadClient(gw, 1, "payment"), LoadClient(gw, 1, "consent")]
            for load in loads:
                load.__enter__()
            try:
                loaded = health(gw)["spool"]["loaded_records"]
                wait_health(gw, lambda h, n=loaded: h["spool"]["loaded_records"] >= n + 200)
                time.sleep(random.uniform(0, 0.3))
                gw.kill()  # SIGKILL: no flush, no saved position, possibly mid-insert
            finally:
                for load in loads:
                    load.stop()
            for load in loads:
                acked[load.kind] += load.acked
                assert load.other == [], load.other
            gw.start()
            spool = wait_health(gw, drained)["spool"]
            replayed += spool["replayed_records"]
            resent += spool["interrupted_inserts"]["resent"]
        assert len(acked["event"]) >= 200
        for table, column, kind in (
            ("events", "eid", "event"),
            ("payments", "orid", "payment"),
            ("agreed", "vid", "consent"),
        ):
            stored = Counter(
                r["k"] for r in gw.query(f"SELECT CAST({column} AS VARCHAR) AS k FROM {table}")
            )
            assert [k for k, n in stored.items() if n > 1] == [], f"{table}: stored twice"
            missing = [k for k in acked[kind] if k not in stored]
            assert missing == [], f"{len(missing)} acknowledged {table} rows lost"
        # the derived views count each stored row once
        (want,) = gw.query("SELECT count_if(url != '' AND server = 0 AND bot = 0) AS n FROM events")
        assert gw.query("SELECT sum(total) AS n FROM hits") == [want]
        print(f"replayed={replayed} resent={resent}")
    finally:
        gw.__exit__(None, None, None)


def test_the_listener_does_not_show_the_hosts_paths(gw):
    # Were 200 with the DuckDB file's path, the data and temporary directories.
    data = str(gw.workdir / "data").encode()
    for sql in (
        "SELECT path FROM duckdb_databases()",
        "SELECT * FROM duckdb_databases",
        "SELECT name, value FROM duckdb_settings()",
        "SELECT * FROM pragma_database_list",
        "SELECT current_setting('allowed_paths')",
        "SELECT * FROM (SELECT 1) AS a, (SELECT current_setting('temp_directory')) AS b",
        "SELECT * FROM query('SELECT path FROM duckdb_databases()')",
    ):
        r = gw.query_raw(sql, "TabSeparated")
        assert data not in r.body, (sql, r)
        assert r.status == 403, (sql, r)
        assert b"is not allowed" in r.body or b"not readable" in r.body, (sql, r)
    assert gw.query("SELECT count(*) AS n FROM range(3)") == [{"n": 3}]
    assert (
        gw.query_raw("SELECT table_name FROM information_schema.tables", "TabSeparated").status
        == 200
    )
