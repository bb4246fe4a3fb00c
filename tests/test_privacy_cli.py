"""``python -m sfpltracker forget | export-subject | prune | export`` as an operator runs them:
against a running gateway (admin channel + query listener) and offline (store opened by the CLI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import duckdb
import pytest

from tests.gateway_process import ROOT, GatewayProcess
from tests.privacy_seed import seed

DAY_MS = 86_400_000
IMMEDIATE = {t: {"Strategy": "immediate"} for t in ("events", "agreed", "payments")}
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"


def cli(gw: GatewayProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def write_config(gw: GatewayProcess) -> None:
    gw.config_path.write_text(json.dumps(gw.config, indent=2))


# -- forget / export-subject -------------------------------------------------------------------


def subject_left(gw, vids, uids, ehashes, sids, orids, ips) -> dict[str, int]:
    """The proof queries of docs/privacy.md: rows holding the subject, per table."""
    tables = gw.query(
        "SELECT c.table AS t, groupArray(c.name) AS cols FROM system.columns AS c "
        "INNER JOIN system.tables AS s ON s.database = c.database AND s.name = c.table "
        "WHERE c.database = 'sfpla' AND s.engine LIKE '%MergeTree%' GROUP BY c.table"
    )

    def uuids(values):
        return ", ".join(f"toUUID('{v}')" for v in values) or "toUUID('ffffffff-0000-0000-0000-0')"

    left = {}
    for entry in tables:
        cols, parts = set(entry["cols"]), []
        for col, values in (("vid", vids), ("uid", uids), ("sid", sids), ("ref", vids)):
            if col in cols and values:
                parts.append(f"{col} IN ({uuids(values)})")
        if "ehash" in cols and ehashes:
            parts.append("ehash IN (" + ", ".join(f"'{e}'" for e in ehashes) + ")")
        if {"id", "id_type"} <= cols:
            parts.append(f"id IN ({uuids([*vids, *uids, *orids])})")
        if "ip" in cols and ips:
            parts.append("ip IN (" + ", ".join(f"'{i}'" for i in ips) + ")")
        if parts:
            n = gw.query(
                f"SELECT count() AS n FROM sfpla.`{entry['t']}` WHERE {' OR '.join(parts)}"
            )
            left[entry["t"]] = n[0]["n"]
    return left


def test_forget_erases_a_subject_from_every_table_and_export_subject_comes_first(tmp_path):
    overrides = {"IPMode": "hash", "TrustedProxies": ["127.0.0.1"], "Batching": IMMEDIATE}
    with GatewayProcess(tmp_path, overrides) as gw:
        alice, alice_phone, bob = (str(uuid.uuid4()) for _ in range(3))
        uid, oid, orid = (str(uuid.uuid4()) for _ in range(3))
        s1, s2, s3 = (str(uuid.uuid4()) for _ in range(3))
        as_alice = {"X-Forwarded-For": "198.51.100.10", "User-Agent": CHROME}
        as_bob = {"X-Forwarded-For": "198.51.100.20", "User-Agent": CHROME}
        events = [
            {"vid": alice, "sid": s1, "ename": "view", "url": "https://e.com/a", "oid": oid},
            {"vid": alice, "sid": s1, "ename": "login", "uid": uid, "email": "Alice@Example.com"},
            {"vid": alice, "sid": s1, "ename": "buy", "uid": uid, "oid": oid},
        ]
        assert gw.http("POST", "/tr/v1/tr/", json_body=events, headers=as_alice).status == 200
        phone = {"vid": alice_phone, "sid": s2, "ename": "view", "uid": uid}
        assert gw.http("POST", "/tr/v1/tr/", json_body=phone, headers=as_alice).status == 200
        payment = {"vid": alice, "uid": uid, "oid": oid, "orid": orid, "amt": 99.5}
        assert gw.http("POST", "/tr/v1/ltv/", json_body=payment, headers=as_alice).status == 200
        consent = {"vid": alice, "uid": uid, "cflags": 1024}
        assert (
            gw.http("POST", "/tr/v1/ppi/agree", json_body=consent, headers=as_alice).status == 200
        )
        # Bob came through Alice's referral link: his rows stay, the reference to her goes
        bobs = [{"vid": bob, "sid": s3, "ename": "view", "ref": alice, "url": "https://e.com/a"}]
        assert gw.http("POST", "/tr/v1/tr/", json_body=bobs, headers=as_bob).status == 200
        bob_pay = {"vid": bob, "amt": 5}
        assert gw.http("POST", "/tr/v1/ltv/", json_body=bob_pay, headers=as_bob).status == 200
        gw.wait_for("SELECT count() AS n FROM sfpla.events", lambda r: r == [{"n": 5}])
        gw.wait_for("SELECT count() AS n FROM sfpla.payments", lambda r: r == [{"n": 2}])
        gw.wait_for("SELECT count() AS n FROM sfpla.agreements", lambda r: r == [{"n": 1}])
        ehash = gw.query("SELECT ehash FROM sfpla.events WHERE ename = 'login'")[0]["ehash"]
        alice_ip = gw.query(f"SELECT any(ip) AS ip FROM sfpla.events WHERE vid = '{alice}'")[0]
        ids = dict(
            vids=[alice, alice_phone],
            uids=[uid],
            ehashes=[ehash],
            sids=[s1, s2],
            orids=[orid],
            ips=[alice_ip["ip"]],
        )
        before = subject_left(gw, **ids)
        for table in ("events", "visitors", "sessions", "payments", "ltv", "ltvu", "ltvv",
                      "dash_sessions", "dash_session_segs", "dash_funnel"):  # fmt: skip
            assert before[table] > 0, (table, before)
        assert before["agreed"] == before["agreements"] == 1 and before["dailies"] >= 1
        bob_rows = gw.query(f"SELECT count() AS n FROM sfpla.events WHERE vid = '{bob}'")

        dry = cli(gw, "forget", "--uid", uid, "--email", "alice@example.com", "--dry-run")
        assert "dry run" in dry.stdout and subject_left(gw, **ids) == before

        export = tmp_path / "alice.json"
        done = cli(
            gw, "forget", "--uid", uid, "--email", "alice@example.com", "--vid", alice,
            "--export", str(export),
        )  # fmt: skip
        assert "0 rows left" in done.stdout, done.stdout
        document = json.loads(export.read_text())
        assert {e["ename"] for e in document["tables"]["events"]} == {"view", "login", "buy"}
        assert document["tables"]["payments"][0]["orid"] == orid
        assert document["tables"]["agreed"][0]["cflags"] == 1024

        after = subject_left(gw, **ids)
        assert after and set(after.values()) == {0}, after
        # Bob is untouched except for the cleared referral
        assert gw.query(f"SELECT count() AS n FROM sfpla.events WHERE vid = '{bob}'") == bob_rows
        assert gw.query(f"SELECT toString(ref) AS ref FROM sfpla.events WHERE vid = '{bob}'") == [
            {"ref": "00000000-0000-0000-0000-000000000000"}
        ]
        assert gw.query(f"SELECT count() AS n FROM sfpla.payments WHERE vid = '{bob}'") == [
            {"n": 1}
        ]
        assert gw.query("SELECT count() AS n FROM sfpla.dailies") == [{"n": 1}]  # Bob's

        again = cli(gw, "export-subject", "--vid", alice)
        assert json.loads(again.stdout)["tables"] == {}
        refused = cli(gw, "forget", "--vid", "not-a-uuid", check=False)
        assert refused.returncode == 1 and "not a (non-zero) UUID" in refused.stderr


# -- prune (offline) ---------------------------------------------------------------------------


def event_row(name: str, age_days: float, now_ms: int, **fields) -> dict:
    created = int(now_ms - age_days * DAY_MS)
    return {
        "eid": str(uuid.uuid4()),
        "vid": str(uuid.uuid4()),
        "ename": name,
        "url": f"https://example.com/{name}",
        "created_at": created,
        "params": "{}",
        **fields,
    }


def names(gw) -> set[str]:
    return {r["ename"] for r in gw.query("SELECT ename FROM sfpla.events")}


def test_prune_deletes_exactly_the_rows_older_than_the_retention(tmp_path):
    gw = GatewayProcess(tmp_path, {"Batching": IMMEDIATE})
    write_config(gw)
    now = int(time.time() * 1000)
    rows = [
        event_row("de_800", 800, now, country="DE"),
        event_row("de_700", 700, now, country="DE"),
        event_row("ca_name_750", 750, now, country="US", region="California"),
        event_row("ca_code_750", 750, now, country="US", region="CA"),
        event_row("wa_800", 800, now, country="US", region="Washington"),
        event_row("br_740", 740, now, country="BR"),
        event_row("gb_750", 750, now, country="GB"),
        event_row("nowhere_2000", 2000, now),
        event_row("fresh_1", 1, now, country="DE"),
        event_row("fresh_29", 29.5, now),
        event_row("old_31", 30.5, now),
        event_row("old_45", 45, now, country="US"),
    ]
    agreed = [
        {"id": str(uuid.uuid4()), "vid": str(uuid.uuid4()), "cflags": 1024,
         "created_at": now - days * DAY_MS, "updated_at": now - days * DAY_MS}
        for days in (10, 40)
    ]  # fmt: skip
    seed(tmp_path / "gw" / "data", {"events": rows, "agreed": agreed})

    # DataRetentionDays is 0 (keep): only the jurisdictions' limits apply, to located rows
    # (in events and in the dashboard's copies of them: dash_funnel's events, dash_session_segs'
    # sessions per country and region, one row each here; not in counts per country)
    dry = cli(gw, "prune", "--dry-run")
    assert "dry run: 12 rows in 3 tables would be deleted" in dry.stdout, dry.stdout
    done = cli(gw, "prune")
    assert "prune: 12 rows deleted from 3 tables" in done.stdout, done.stdout
    with gw:
        assert names(gw) == {r["ename"] for r in rows} - {
            "de_800",
            "ca_name_750",
            "ca_code_750",
            "br_740",
        }
        funnel = gw.query("SELECT ename FROM sfpla.dash_funnel")
        assert {r["ename"] for r in funnel} == names(gw)
        sessions = gw.query("SELECT toString(day) AS d, country, region, sum(events) AS n FROM "
                            "sfpla.dash_session_segs GROUP BY ALL ORDER BY ALL")  # fmt: skip
        assert sessions == gw.query(
            "SELECT toString(toDate(created_at)) AS d, country, region, count() AS n "
            "FROM sfpla.events GROUP BY ALL ORDER BY ALL"
        )
    # a 30-day retention on every table
    dry = cli(gw, "prune", "--days", "30", "--dry-run")
    assert "events" in dry.stdout and "hits" in dry.stdout and "jurisdictions" in dry.stdout
    done = cli(gw, "prune", "--days", "30")
    assert "deleted" in done.stdout
    with gw:
        assert names(gw) == {"fresh_1", "fresh_29"}
        cutoff_day = time.strftime("%Y-%m-%d", time.gmtime((now - 30 * DAY_MS) / 1000))
        for table, column in (("hits", "date"), ("dailies", "day"), ("visitors", "last_seen")):
            oldest = gw.query(f"SELECT toString(min(toDate({column}))) AS d FROM sfpla.{table}")
            assert oldest[0]["d"] >= cutoff_day, (table, oldest)
        assert gw.query("SELECT count() AS n FROM sfpla.agreed") == [{"n": 1}]
        assert gw.query("SELECT count() AS n FROM sfpla.agreements") == [{"n": 1}]
        assert gw.query("SELECT count() AS n FROM sfpla.jurisdictions FINAL") == [{"n": 4}]
        # the same run inside the running gateway finds nothing more to delete
        again = cli(gw, "prune", "--days", "30")
        assert "prune: 0 rows deleted" in again.stdout, again.stdout
    logs = cli(gw, "prune", "--logs-only", "--dry-run")
    assert "log tables" in logs.stdout and "0 rows" in logs.stdout


# -- export (Parquet, Hive layout) -------------------------------------------------------------


def at(day: str, hour: int) -> int:
    import calendar

    return calendar.timegm(time.strptime(f"{day} {hour:02d}", "%Y-%m-%d %H")) * 1000


@pytest.mark.parametrize("running", [True, False], ids=["gateway", "offline"])
def test_export_writes_parquet_by_day_that_duckdb_reads(tmp_path, running):
    gw = GatewayProcess(tmp_path)
    write_config(gw)
    per_day = {"2025-03-01": 2, "2025-03-02": 3, "2025-03-04": 1, "2025-03-05": 4}
    rows = []
    for day, n in per_day.items():
        for i in range(n):
            rows.append(
                {
                    "eid": str(uuid.uuid4()),
                    "vid": str(uuid.uuid4()),
                    "ename": "view",
                    "created_at": at(day, 10 + i),
                    "params": json.dumps({"n": i, "day": day}),
                    "country": "DE",
                }
            )
    rows.append(dict(rows[3]))  # a replayed event: same eid, counted once
    seed(tmp_path / "gw" / "data", {"events": rows})
    out = tmp_path / "export"
    args = ("export", "--since", "2025-03-01", "--until", "2025-03-04", "--out", str(out))
    if running:
        with gw:
            done = cli(gw, *args)
    else:
        done = cli(gw, *args)
    assert "export: 6 rows" in done.stdout, done.stdout
    assert sorted(p.name for p in (out / "events").iterdir()) == [
        "day=2025-03-01",
        "day=2025-03-02",
        "day=2025-03-04",
    ]
    con = duckdb.connect()
    counts = con.sql(
        f"SELECT CAST(day AS VARCHAR), count(*), count(DISTINCT eid) FROM read_parquet("
        f"'{out}/events/*/*.parquet', hive_partitioning = true) GROUP BY day ORDER BY day"
    ).fetchall()
    assert counts == [("2025-03-01", 2, 2), ("2025-03-02", 3, 3), ("2025-03-04", 1, 1)]
    typed = con.sql(
        f"SELECT typeof(eid), typeof(created_at), json_extract(params, '$.day') "
        f"FROM read_parquet('{out}/events/day=2025-03-04/*.parquet')"
    ).fetchall()
    assert typed == [("UUID", "TIMESTAMP WITH TIME ZONE", '"2025-03-04"')]
    bad = cli(
        gw, "export", "--since", "2025-03-05", "--until", "2025-03-01", "--out", "x", check=False
    )
    assert bad.returncode == 1 and "before --since" in bad.stderr
