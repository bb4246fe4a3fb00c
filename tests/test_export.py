"""The scheduled export (sfpltracker/export.py, docs/export.md): new rows as Parquet in the Hive
layout, to a real S3 API server (moto, tests/s3_server.py) or a directory, read back by DuckDB.
Every row exactly once across runs, a SIGKILLed gateway and exporter, and an S3 outage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfpltracker.config import ConfigError, load_dict
from sfpltracker.export import object_key, plan_ranges
from tests.gateway_process import ROOT, GatewayProcess
from tests.privacy_seed import seed
from tests.s3_server import BUCKET, KEY_ID, SECRET, S3Server

DAY_MS = 86_400_000
MARCH_1 = 1_740_787_200_000  # 2025-03-01T00:00:00Z
IMMEDIATE = {"events": {"Strategy": "immediate"}}


def event_rows(n: int, days: int = 3) -> list[dict]:
    """``n`` events spread over ``days`` days from 2025-03-01."""
    return [
        {
            "eid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "ename": "view",
            "created_at": MARCH_1 + (i % days) * DAY_MS + i,
            "params": json.dumps({"n": i}),
        }
        for i in range(n)
    ]


def counts(root: Path) -> dict:
    """What DuckDB reads from an exported tree: rows, distinct eids, rows per day."""
    files = f"{root}/events/*/*.parquet"
    con = duckdb.connect()
    ((total, distinct),) = con.sql(
        f"SELECT count(*), count(DISTINCT eid) FROM read_parquet('{files}', hive_partitioning = true)"
    ).fetchall()
    per_day = con.sql(
        f"SELECT CAST(day AS VARCHAR), count(*) FROM read_parquet('{files}', "
        "hive_partitioning = true) GROUP BY day ORDER BY day"
    ).fetchall()
    return {"rows": total, "distinct": distinct, "days": dict(per_day)}


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(config), *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def s3_export(s3: S3Server, **more) -> dict:
    return {
        "Every": "1s",
        "Target": f"s3://{BUCKET}/tracker",
        "Tables": ["events"],
        "Format": "parquet",
        "Endpoint": s3.endpoint,
        "Region": "us-east-1",
        "AccessKeyId": KEY_ID,
        "SecretAccessKey": SECRET,
        **more,
    }


def wait_until(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def offline_config(tmp_path: Path, **export) -> Path:
    path = tmp_path / "config.json"
    config = {"DataDirectory": str(tmp_path / "data"), "QueryPort": ""}
    if export:
        config["Export"] = export
    path.write_text(json.dumps(config))
    return path


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "export, named",
    [
        ({"Target": "/x", "Every": "soon"}, "Export.Every"),
        ({"Target": "/x", "Format": "csv"}, "Export.Format"),
        ({"Target": "gs://bucket/x"}, "Export.Target"),
        ({"Target": "s3://B_ad/x"}, "Export.Target"),
        ({"Target": "/x", "Tables": ["events; DROP"]}, "Export.Tables"),
        ({"Target": "/x", "Endpoint": "127.0.0.1:9000"}, "Export.Endpoint"),
        ({"Target": "/x", "Bucket": "b"}, "Export.Bucket"),
    ],
)
def test_a_bad_export_value_is_refused_naming_the_key(export, named):
    with pytest.raises(ConfigError) as e:
        load_dict({"Export": export})
    assert str(e.value).startswith(named), str(e.value)


def test_the_config_examples_of_the_docs_load():
    text = (ROOT / "docs" / "export.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```json\n")[1:]]
    assert len(blocks) == 3
    for block in blocks:
        cfg = load_dict(json.loads(block))
        assert cfg.Export.Target and cfg.Export.Every >= 60


def test_a_table_the_store_lacks_stops_start_up_with_the_reason(tmp_path):
    gw = GatewayProcess(tmp_path, {"Export": {"Target": str(tmp_path / "out"), "Tables": ["nope"]}})
    with pytest.raises(RuntimeError) as e:
        gw.start(timeout=60)
    gw.kill()
    assert "Export.Tables: no table 'nope'" in str(e.value)


def test_ranges_hold_at_most_max_rows_and_a_larger_block_alone():
    blocks = [(3, 5), (4, 5), (6, 20), (9, 1), (10, 9)]
    assert plan_ranges(blocks, 2, 10) == [(2, 4), (4, 6), (6, 10)]
    assert plan_ranges([], 7, 10) == []
    assert object_key("events", "2025-03-01", 2, 4, 0) == (
        "events/day=2025-03-01/part-000000000003-000000000004-0000.parquet"
    )


# -- a directory, offline: every row once across runs ---------------------------------------------


def test_export_to_a_directory_writes_each_new_row_once(tmp_path):
    config = offline_config(tmp_path)
    out = tmp_path / "out"
    first = event_rows(300)
    seed(tmp_path / "data", {"events": first}, batch=50)
    done = cli(config, "export", "--to", str(out))
    assert "export: 300 new rows" in done.stdout, done.stdout
    assert counts(out) == {
        "rows": 300,
        "distinct": 300,
        "days": {"2025-03-01": 100, "2025-03-02": 100, "2025-03-03": 100},
    }
    second = event_rows(90, days=2)
    seed(tmp_path / "data", {"events": second}, batch=30)
    done = cli(config, "export", "--to", str(out))
    assert "export: 90 new rows" in done.stdout, done.stdout
    assert cli(config, "export", "--to", str(out)).stdout.startswith("export: 0 new rows")
    got = counts(out)
    assert got == {
        "rows": 390,
        "distinct": 390,
        "days": {"2025-03-01": 145, "2025-03-02": 145, "2025-03-03": 100},
    }
    # Files hold personal data: owner-only.
    assert all(p.stat().st_mode & 0o077 == 0 for p in out.rglob("*.parquet"))
    # Without --to the export is the old one: --since/--until/--out.
    bad = cli(config, "export", check=False)
    assert bad.returncode == 1 and "--since, --until, --out needed" in bad.stderr


def number_blocks(config: Path, scratch: Path) -> None:
    """A first export (of nothing): from now on every insert's rows keep their own number."""
    assert "export: 0 new rows" in cli(config, "export", "--to", str(scratch)).stdout


def test_an_exporter_killed_mid_run_then_run_again_exports_every_row_once(tmp_path):
    # 10 rows per range (one insert): 30 ranges, each a file per day.
    config = offline_config(tmp_path, Target=str(tmp_path / "out"), MaxRowsPerFile=10)
    number_blocks(config, tmp_path / "scratch")
    seed(tmp_path / "data", {"events": event_rows(300)}, batch=10)  # 30 block numbers
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfpltracker", "--config", str(config), "export", "--to", str(out)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: len(list(out.rglob("*.parquet"))) >= 5, 120, "the first files", every=0.02
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert len(list(out.rglob("*.parquet"))) < 90  # it was killed mid-export
    states = [json.loads(p.read_text()) for p in (tmp_path / "data" / "export").glob("*.json")]
    (state,) = [s for s in states if s["target"] == str(out)]
    assert state["tables"]["events"]["done"] < 30
    done = cli(config, "export", "--to", str(out))
    assert counts(out) == {
        "rows": 300,
        "distinct": 300,
        "days": {"2025-03-01": 100, "2025-03-02": 100, "2025-03-03": 100},
    }
    assert len(list(out.rglob("*.parquet"))) == 90, done.stdout


# -- S3, in the gateway ---------------------------------------------------------------------------


def exported(s3: S3Server, into: Path) -> dict:
    if not s3.keys():
        return {"rows": 0, "distinct": 0, "days": {}}
    import shutil

    shutil.rmtree(into, ignore_errors=True)
    return counts(s3.download(into) / "tracker")


def export_metric(gw: GatewayProcess, name: str) -> float:
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"sfpl_export_{name}_total":
                return sample.value
    raise AssertionError(f"no metric sfpl_export_{name}_total")


def post_events(gw: GatewayProcess, n: int, tag: str) -> None:
    for start in range(0, n, 25):
        batch = [
            {"ename": f"{tag}-{i}", "url": "https://example.com/"}
            for i in range(start, min(n, start + 25))
        ]
        resp = gw.http("POST", "/tr/v1/tr/", json_body=batch)
        assert resp.status == 200, resp.body


def test_the_gateway_exports_to_s3_and_retries_while_s3_is_down(tmp_path):
    with S3Server(tmp_path) as s3:
        overrides = {"Batching": IMMEDIATE, "Export": s3_export(s3)}
        with GatewayProcess(tmp_path, overrides) as gw:
            post_events(gw, 100, "a")
            wait_until(lambda: exported(s3, tmp_path / "copy")["rows"] == 100, 60, "100 rows")
            s3.down()
            post_events(gw, 60, "b")
            gw.wait_for("SELECT count() AS n FROM sfpla.events", lambda r: r[0]["n"] == 160)
            wait_until(lambda: export_metric(gw, "failures") >= 2, 60, "failed export runs")
            assert exported(s3, tmp_path / "copy")["rows"] == 100  # nothing more got through
            s3.up()
            wait_until(lambda: exported(s3, tmp_path / "copy")["rows"] >= 160, 90, "160 rows")
            got = exported(s3, tmp_path / "copy")
            assert got["rows"] == got["distinct"] == 160
            assert export_metric(gw, "rows") == 160
            # `export --to` while the gateway runs: the gateway writes, its own watermark
            done = cli(gw.config_path, "export", "--to", str(tmp_path / "dir"))
            assert "export: 160 new rows" in done.stdout, done.stdout
            assert counts(tmp_path / "dir")["distinct"] == 160
            assert "export to s3://sfpl-export/tracker failed, retrying later" in gw.log_text()


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_gateway_stopped_mid_export_then_restarted_exports_every_row_once(tmp_path, stop):
    gw = GatewayProcess(tmp_path, {})
    gw.config_path.write_text(json.dumps(gw.config))
    number_blocks(gw.config_path, tmp_path / "scratch")
    seed(gw.workdir / "data", {"events": event_rows(300)}, batch=10)
    with S3Server(tmp_path) as s3:
        gw.config["Export"] = s3_export(s3, Every="1h", MaxRowsPerFile=10)
        gw.start()
        try:
            wait_until(lambda: len(s3.keys()) >= 5, 120, "the first objects", every=0.02)
            if stop == "SIGKILL":
                gw.kill()
            else:  # the run ends before its next object, the store closes, the range stays
                gw.stop()
                assert "sfpltracker stopped; everything accepted was flushed" in gw.log_text()
            assert len(s3.keys()) < 90  # stopped mid-export
            state = json.loads(next((gw.workdir / "data" / "export").glob("*.json")).read_text())
            assert state["tables"]["events"]["done"] < 30
            gw.start()  # the export runs at start, the cut range first
            wait_until(lambda: len(s3.keys()) >= 90, 120, "every object", every=0.5)
            wait_until(
                lambda: "export: " in gw.log_text().split("starting up.")[-1], 60, "the run's end"
            )
        finally:
            gw.stop()
            gw.kill()
        assert len(s3.keys()) == 90
        assert exported(s3, tmp_path / "copy") == {
            "rows": 300,
            "distinct": 300,
            "days": {"2025-03-01": 100, "2025-03-02": 100, "2025-03-03": 100},
        }
