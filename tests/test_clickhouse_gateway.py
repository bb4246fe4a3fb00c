"""A real gateway process and the CLI, configured with a ``clickhouse`` Notify entry, against a
real ClickHouse server (Debian's 18.16).

18.16 is too old for the shipped schema - which is itself a test: the CLI and the gateway
refuse it with a clear message. With ``SFPL_SCHEMA_DIR`` pointing at the schema downgraded for
18.16 (``tests/clickhouse_legacy.py``), the whole flow runs: HTTP -> batcher -> native
protocol -> server, with dead letters and metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.clickhouse_legacy import downgrade_schema
from tests.gateway_process import ROOT, GatewayProcess
from tests.servers import ClickHouseServer


@pytest.fixture(scope="module")
def server():
    with ClickHouseServer() as ch:
        yield ch


def clickhouse_entry(server, **extra) -> dict:
    return {"Type": "clickhouse", "Hosts": [server.hostport], "Timeout": 5, **extra}


def run_cli(tmp_path, config: dict, *args, env=None) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"DataDirectory": str(tmp_path / "data"), **config}))
    environment = dict(os.environ)
    environment.pop("SFPL_SCHEMA_DIR", None)
    environment.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(path), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def test_cli_schema_refuses_a_server_too_old_for_the_schema(server, tmp_path):
    result = run_cli(
        tmp_path,
        {"QueryPort": "", "Notify": [clickhouse_entry(server)]},
        "schema",
        "--store",
        "clickhouse",
    )
    assert result.returncode == 1, result
    assert f"ClickHouse 18.16.1 at {server.hostport} is too old for the schema" in result.stderr
    assert "needs ClickHouse 25.3 or newer" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_schema_loads_and_reports_the_server(server, tmp_path):
    schema = downgrade_schema(tmp_path / "schema")
    database = "cli_" + uuid.uuid4().hex[:8]
    config = {"QueryPort": "", "Notify": [clickhouse_entry(server, Database=database)]}
    result = run_cli(
        tmp_path, config, "schema", "--store", "clickhouse", env={"SFPL_SCHEMA_DIR": str(schema)}
    )
    assert result.returncode == 0, result
    assert result.stdout.startswith("schema loaded: ")
    assert f"(ClickHouse 18.16.1 at {server.hostport})" in result.stdout
    tables = {t for (t,) in server.client().execute(f"SHOW TABLES FROM {database}")}
    assert {"events", "payments", "hits", "ltv"} <= tables
    # the embedded store is not what this config asks for
    result = run_cli(tmp_path, config, "schema", "--store", "embedded")
    assert result.returncode == 2 and "no embedded store" in result.stderr


def test_gateway_writes_events_to_the_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    database = "gw_" + uuid.uuid4().hex[:8]
    config = {
        "Notify": [clickhouse_entry(server, Database=database, Compression="lz4")],
        "Batching": {
            "events": {"Strategy": "hybrid", "MaxBatchSize": 100, "MaxBatchTime": "200ms"}
        },
    }
    c = server.client()
    with GatewayProcess(tmp_path, config) as gw:
        health = gw.http("GET", "/health").json()
        assert health["store"]["kind"] == "clickhouse" and health["status"] == "ok", health
        # a server-side rule, to see a rejected row go to the dead-letter file
        c.execute(
            f"ALTER TABLE {database}.events ADD COLUMN xid_number Int64 "
            "MATERIALIZED toInt64(if(xid = '', '0', xid))"
        )
        vid = str(uuid.uuid4())
        events = [
            {"vid": vid, "ename": "page_view", "url": f"https://example.com/{i}", "xid": str(i)}
            for i in range(120)
        ]
        events[33]["xid"] = "not-a-number"
        r = gw.http("POST", "/tr/v1/tr/", json_body=events[:60])
        assert r.status == 200, r
        r = gw.http("POST", "/tr/v1/tr/", json_body=events[60:])
        assert r.status == 200, r
        eid = gw.http("POST", "/tr/v1/str/", json_body={"vid": vid, "ename": "signup"}).json()
        assert gw.http("GET", f"/tr/v1/img/vid/{vid}/ename/pixel").status == 200

        def stored():
            return c.execute(f"SELECT count() FROM {database}.events WHERE vid = '{vid}'")[0][0]

        _wait(lambda: stored() == 119 + 2, lambda: f"{stored()} events stored\n{gw.log_tail()}")
        urls = {u for (u,) in c.execute(f"SELECT url FROM {database}.events WHERE vid = '{vid}'")}
        assert "https://example.com/33" not in urls and "https://example.com/34" in urls
        assert c.execute(f"SELECT ename, server FROM {database}.events WHERE eid = '{eid}'") == [
            ("signup", 1)
        ]
        hits = c.execute(
            f"SELECT sum(total) FROM {database}.hits WHERE url LIKE 'https://example.com/%'"
        )
        assert hits == [(119,)]

        dead = (tmp_path / "gw" / "data" / "deadletter" / "events.jsonl").read_text().splitlines()
        assert len(dead) == 1
        entry = json.loads(dead[0])
        assert entry["row"]["url"] == "https://example.com/33" and entry["code"] == 6
        assert "Cannot parse string 'not-a-number' as Int64" in entry["reason"]
        metrics = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
        assert 'sfpl_store_dead_letter_rows_total{table="events"} 1.0' in metrics
        # reads through the store: the query listener answers from the server
        rows = gw.query(f"SELECT count() AS n FROM {database}.events WHERE vid = '{vid}'")
        assert rows == [{"n": "121"}]  # 18.16 quotes 64-bit integers in JSON, as its HTTP does
        assert "ClickHouse 18.16.1" in gw.log_text()
        # the CLI asks the running gateway to (re)load the schema on its server
        cli = subprocess.run(
            [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), "schema"],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=120,
        )
        assert cli.returncode == 0, cli
        assert f"(ClickHouse 18.16.1 at {server.hostport})" in cli.stdout
    assert "everything accepted was flushed" in gw.log_text()  # stopped cleanly on SIGTERM


def test_gateway_refuses_to_start_on_a_server_too_old_for_the_schema(server, tmp_path, monkeypatch):
    monkeypatch.delenv("SFPL_SCHEMA_DIR", raising=False)
    gw = GatewayProcess(tmp_path, {"Notify": [clickhouse_entry(server)]})
    with pytest.raises(RuntimeError, match="too old for the schema"):
        gw.start(timeout=60)
    gw.__exit__(None, None, None)


def _wait(predicate, describe, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out; {describe()}")
