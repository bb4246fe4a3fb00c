"""Rows per second of one export run (sfpltracker/export.py, docs/export.md).

    .venv/bin/python bench/export.py [ROWS] [INSERT_ROWS]

Seeds ROWS events (default 100,000, over 7 days, INSERT_ROWS per insert, default 2,000) into a
fresh embedded store whose block numbers are kept, then runs ``python -m sfpltracker export
--to`` once to a directory and once to S3 (moto in server mode on 127.0.0.1) and prints the
run's own time (as the command reports it: opening the store is not in it) and rows/s.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.privacy_seed import seed  # noqa: E402
from tests.s3_server import BUCKET, KEY_ID, SECRET, S3Server  # noqa: E402


def export(config: Path, to: str) -> tuple[int, float]:
    done = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(config), "export", "--to", to],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"export: (\d+) new rows .* in ([\d.]+) s", done.stdout)
    assert m, done.stdout + done.stderr
    return int(m.group(1)), float(m.group(2))


def main(rows: int, per_insert: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="sfpl-export-bench-"))
    config = work / "config.json"
    config.write_text(json.dumps({"DataDirectory": str(work / "data"), "QueryPort": ""}))
    export(config, str(work / "scratch"))  # keeps block numbers from now on
    events = [
        {
            "eid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "ename": "page_view",
            "url": f"https://example.com/p/{i % 500}",
            "country": "DE",
            "browser": "Chrome",
            "os": "Linux",
            "created_at": 1_740_787_200_000 + (i % 7) * 86_400_000 + i,
            "params": json.dumps({"n": i, "plan": "pro"}),
        }
        for i in range(rows)
    ]
    began = time.monotonic()
    seed(work / "data", {"events": events}, batch=per_insert)
    print(f"seeded {rows} rows in {time.monotonic() - began:.1f} s")
    n, seconds = export(config, str(work / "out"))
    print(f"directory: {n} rows in {seconds:.2f} s = {n / seconds:,.0f} rows/s")
    with S3Server(work) as s3:
        settings = {"Endpoint": s3.endpoint, "AccessKeyId": KEY_ID, "SecretAccessKey": SECRET}
        target = f"s3://{BUCKET}/bench"
        s3_config = work / "config-s3.json"
        s3_config.write_text(
            json.dumps({**json.loads(config.read_text()), "Export": {"Target": target, **settings}})
        )
        n, seconds = export(s3_config, target)
        print(f"S3 (moto): {n} rows in {seconds:.2f} s = {n / seconds:,.0f} rows/s")
    print(f"(data left in {work})")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 2_000,
    )
