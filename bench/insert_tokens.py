"""What the crash-safe insert path costs per batch in chDB: plain vs token vs journal + token.

    /work/venv/bin/python bench/insert_tokens.py [--batch 1000] [--rounds 12]

The embedded store (chDB, the full schema: ``events`` and its six materialized views) gets
batches of event rows, one batch at a time, three ways that take turns in every round:

* ``plain``: ``INSERT ... SELECT * FROM Python(batch)`` as before the insert journal;
* ``token``: the same with ``insert_deduplication_token`` (a token of its own per batch),
  ``deduplicate_blocks_in_dependent_materialized_views = 1`` and ``max_threads = 1``: what
  every batch now carries (ClickHouse also records the block in each table's deduplication
  log);
* ``journal + token``: the spool's whole path per batch: the journal's begin record appended
  and ``fdatasync``-ed, the token insert, the end record appended.

The store's blocking calls run directly (no reactor, no thread hop), so the table is the
store's own work. Prints the median per batch and the ratio to ``plain``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sfpltracker.pipeline.journal import InsertJournal, JournalBatch  # noqa: E402
from sfpltracker.pipeline.spool import Position  # noqa: E402
from sfpltracker.store.embedded.store import EmbeddedStore  # noqa: E402

EPOCH_MS = 1_767_225_600_000


def event_rows(n: int, start: int) -> list[dict]:
    return [
        {
            "eid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "oid": str(uuid.uuid4()),
            "created_at": EPOCH_MS + i,
            "hhash": "1x2y3z",
            "app": "bench",
            "ename": "page_view",
            "etyp": "view",
            "url": f"https://bench.test/page/{i % 500}",
            "last": "https://referrer.test/",
            "outcome": "ok" if i % 3 == 0 else "",
            "ip": "203.0.113.0",
            "browser": "Firefox",
            "os": "Linux",
            "device": "Other",
            "country": "DE",
            "params": '{"k": "v", "n": 1}',
        }
        for i in range(start, start + n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sfpl-bench-tokens-") as tmp:
        store = EmbeddedStore(Path(tmp), reactor=None)
        store._open_and_load()
        journal = InsertJournal(Path(tmp))
        journal.open()
        cases = ["plain", "token", "journal + token", "rows journal + token"]
        times: dict[str, list[float]] = {name: [] for name in cases}
        n = 0

        def plain(rows):
            store._insert("events", rows, False, None)

        def token(rows):
            store._insert("events", rows, False, f"sfpl-{uuid.uuid4().hex}")

        def journaled(rows):
            t = f"sfpl-{uuid.uuid4().hex}"
            journal.write_begin(JournalBatch(t, "events", Position(1, 8), Position(1, 9)))
            store._insert("events", rows, False, t)
            journal.write_end(t)

        def rows_journaled(rows):
            t = f"sfpl-{uuid.uuid4().hex}"
            journal.write_begin(JournalBatch(t, "events", None, None, rows=rows))
            store._insert("events", rows, False, t)
            journal.write_end(t)

        cases = [
            ("plain", plain),
            ("token", token),
            ("journal + token", journaled),
            ("rows journal + token", rows_journaled),
        ]
        plain(event_rows(args.batch, 0))  # warm up: the first parts, the dedup logs
        token(event_rows(args.batch, 0))
        for r in range(args.rounds):
            order = cases if r % 2 == 0 else cases[::-1]
            for name, run in order:
                rows = event_rows(args.batch, n)
                n += args.batch
                began = time.perf_counter()
                run(rows)
                times[name].append(time.perf_counter() - began)
        journal.close()
        store._writer.close()

    base = statistics.median(times["plain"])
    print(
        f"\nchDB, events + 6 views, {args.batch}-row batches, {args.rounds} rounds "
        "(cases take turns), median per batch\n"
    )
    header = f"{'case':<20}  {'ms/batch':>9}  {'p25-p75 ms':>12}  {'rows/s':>9}  {'vs plain':>8}"
    print(header)
    print("-" * len(header))
    for name, values in times.items():
        med = statistics.median(values)
        q1, _, q3 = statistics.quantiles(values, n=4)
        spread = f"{q1 * 1000:.0f}-{q3 * 1000:.0f}"
        print(
            f"{name:<20}  {med * 1000:>9.1f}  {spread:>12}  {args.batch / med:>9,.0f}  "
            f"{med / base:>8.2f}"
        )


if __name__ == "__main__":
    main()
