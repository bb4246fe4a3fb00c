"""What one insert into ``events`` costs the embedded store (chDB, the whole schema with its
materialized views), by batch size: CPU of the process (every thread) and wall time.

    .venv/bin/python bench/insert_cost.py [--sizes 100,1000,3000,10000] [--rounds 5]

The store process's CPU per event is mostly this fixed cost divided by the batch size, which is
why a spool's loader holds its size trigger (pipeline/batcher.py ``hold``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from original_views import event_rows  # noqa: E402
from twisted.internet import reactor  # noqa: E402

from sfpltracker.store.embedded.store import EmbeddedStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,3000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    store = EmbeddedStore(Path(tempfile.mkdtemp(prefix="sfpl-insert-cost-")) / "chdb", reactor)
    store._open_and_load()  # on this thread: the benchmark calls the writer's methods itself
    columns = store.columns["events"]
    start = 0
    print("batch rows  CPU ms/insert  CPU us/row  wall ms/insert")
    for size in [int(s) for s in args.sizes.split(",")]:
        cpu, wall = [], []
        for _ in range(args.rounds):
            rows = event_rows(size, start, page_views_only=True)
            start += size
            began_cpu, began = time.process_time(), time.perf_counter()
            store._send("events", columns, rows, f"bench-{start}")
            cpu.append(time.process_time() - began_cpu)
            wall.append(time.perf_counter() - began)
        c, w = statistics.median(cpu), statistics.median(wall)
        print(f"{size:10d}  {c * 1000:13.0f}  {c * 1e6 / size:10.0f}  {w * 1000:14.0f}")


if __name__ == "__main__":
    main()
