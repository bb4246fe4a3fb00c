"""How fast ``python -m sfpltracker migrate`` copies an original tracker's events.

    .venv/bin/python bench/migrate.py [--events 50000] [--batch 5000]

Starts Debian's clickhouse-server (18.16) with the original's tables
(tests/data/original/schema-18.16.sql), writes ``--events`` events the original's way (one
``events`` row each, the shape of tests/test_migrate.py's), then runs the command as a
subprocess into a fresh embedded (chDB) store and prints the whole command's time (chDB's start
included) and its last progress line (rows/s of the copy itself).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sfpltracker.store.schema import split_statements  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402
from tests.servers import ClickHouseServer  # noqa: E402
from tests.test_migrate import SCHEMA, env, migrate_cmd, original_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=5000)
    ns = parser.parse_args()
    with ClickHouseServer() as ch, tempfile.TemporaryDirectory() as tmp:
        client = ch.client(send_receive_timeout=600)
        for statement in split_statements(SCHEMA.read_text()):
            client.execute(statement)
        model = original_rows()["events"][1]
        rows = [
            dict(
                model,
                eid=f"00000000-0000-4000-8000-{i:012d}",
                created_at=model["created_at"] + dt.timedelta(seconds=i % 86400),
                params=json.dumps({"plan": "pro", "n": i}),
            )
            for i in range(ns.events)
        ]
        client.execute(f"INSERT INTO sfpla.events ({', '.join(sorted(model))}) VALUES", rows)
        client.disconnect()
        gw = GatewayProcess(Path(tmp))
        gw.config_path.write_text(json.dumps(gw.config))
        started = time.monotonic()
        done = subprocess.run(
            migrate_cmd(gw, ch, "--batch", str(ns.batch)), env=env(), capture_output=True, text=True
        )
        took = time.monotonic() - started
        if done.returncode:
            sys.exit(done.stdout + done.stderr)
        progress = [line for line in done.stdout.splitlines() if line.startswith("events:")]
        print(f"{ns.events:,} events, --batch {ns.batch}: {took:.1f} s for the whole command")
        print(progress[-1])


if __name__ == "__main__":
    main()
