"""Put rows with chosen timestamps into a stopped gateway's embedded store.

The gateway stamps ``created_at`` with its own clock, so rows "400 days old" for the prune and
export tests are written directly, through the real ``EmbeddedStore`` (Arrow inserts, schema
loaded, materialized views fire), in a separate process - chDB allows one per data directory::

    seed(data_dir, {"events": [{...}, ...], "agreed": [...]})
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seed(data_dir: Path, tables: dict[str, list[dict]], batch: int = 0) -> None:
    """``batch``: insert each table's rows this many at a time (one insert each), not at once."""
    payload = Path(data_dir).parent / "seed.json"
    payload.write_text(json.dumps({"batch": batch, "tables": tables}))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "tests.privacy_seed", str(data_dir), str(payload)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise AssertionError(f"seeding failed:\n{done.stdout}\n{done.stderr}")


def _main(data_dir: str, payload: str) -> None:
    from twisted.internet import defer, reactor

    from sfpltracker.store.embedded.store import EmbeddedStore

    given = json.loads(Path(payload).read_text())
    tables, batch = given["tables"], given["batch"]
    failure = []

    @defer.inlineCallbacks
    def run():
        store = EmbeddedStore(Path(data_dir), reactor)
        try:
            yield store.start()
            for table, rows in tables.items():
                step = batch or len(rows) or 1
                for i in range(0, len(rows), step):
                    yield store.insert(table, rows[i : i + step])
        except Exception as e:  # noqa: BLE001 - reported through the exit code
            failure.append(e)
        finally:
            yield store.stop()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run(installSignalHandlers=False)
    if failure:
        raise SystemExit(f"seed failed: {failure[0]}")


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
