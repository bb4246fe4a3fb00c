"""What the original's side tables (schema/070_original.sql: ten materialized views on
``events``) cost each insert in chDB.

    .venv/bin/python bench/original_views.py [--batch 1000] [--rounds 10] [--each]

Two embedded stores in one run, taking turns every round: ``without`` has the schema minus
070_original.sql (events and its six views as before), ``with`` the whole schema. Rows carry
what the new views select (uid, e-mail/user-name/phone hashes, host name, a thread id with a
conversion on some), so every view writes. Prints the median per batch and the ratio;
``--each`` adds a database per new view (the old schema plus that view alone);
``--page-views``: rows of anonymous page views only (the sparse views select nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sfpltracker.store.embedded.store import EmbeddedStore  # noqa: E402
from sfpltracker.store.schema import SCHEMA_DIR, load_statements  # noqa: E402

EPOCH_MS = 1_767_225_600_000
NEW_FILE = "070_original.sql"
SPARSE = {"uid", "tid", "ehash", "uhash", "chash", "new_vid"}


def event_rows(n: int, start: int, page_views_only: bool = False) -> list[dict]:
    if page_views_only:  # what most traffic is: the sparse views select nothing
        return [{k: v for k, v in row.items() if k not in SPARSE} for row in event_rows(n, start)]
    return [
        {
            "eid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "oid": str(uuid.uuid4()),
            "uid": str(uuid.uuid4()) if i % 4 == 0 else "00000000-0000-0000-0000-000000000000",
            "tid": str(uuid.uuid4()) if i % 10 == 0 else "00000000-0000-0000-0000-000000000000",
            "created_at": EPOCH_MS + i,
            "hhash": "1x2y3z",
            "hostname": "bench.test",
            "app": "bench",
            "ename": "conversion" if i % 20 == 0 else "page_view",
            "etyp": "view",
            "url": f"https://bench.test/page/{i % 500}",
            "last": "https://referrer.test/",
            "ip": "203.0.113.0",
            "iphash": "abc",
            "bhash": "b1",
            "browser": "Firefox",
            "country": "DE",
            "ehash": f"e{i:026d}" if i % 5 == 0 else "",
            "uhash": f"u{i:026d}" if i % 7 == 0 else "",
            "chash": f"c{i:026d}" if i % 9 == 0 else "",
            "new_vid": 1 if i % 3 == 0 else 0,
            "params": '{"k": "v", "n": 1}',
        }
        for i in range(start, start + n)
    ]


def open_store(path: Path, without: Path) -> EmbeddedStore:
    """One chDB per process: database ``sfpla`` has the whole schema, ``base`` the schema
    without 070_original.sql (the store's dedup-window and column fixes run on both)."""
    os.environ["SFPL_SCHEMA_DIR"] = str(without)
    store = EmbeddedStore(path, reactor=None, database="base")
    store._open_and_load()
    os.environ.pop("SFPL_SCHEMA_DIR")
    store.database = "sfpla"
    store._load_schema()
    return store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--each", action="store_true", help="also each new view alone")
    parser.add_argument(
        "--page-views", action="store_true", help="rows without uid/tid/hashes/new visitors"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sfpl-bench-views-") as tmp:
        base = Path(tmp) / "schema-without"
        base.mkdir()
        for f in SCHEMA_DIR.glob("*.sql"):
            if f.name != NEW_FILE:
                shutil.copy(f, base / f.name)
        store = open_store(Path(tmp) / "a", base)
        stores = {"without": "base", "with": "sfpla"}
        if args.each:  # base + one view (its table and materialized view) per database
            new = load_statements("sfpla", SCHEMA_DIR)
            views = [s for s in new if s.file == NEW_FILE and s.kind == "materialized_view"]
            for view in views:
                target = re.search(r"\bTO\s+sfpla\.(\w+)", view.sql).group(1)
                database = f"only_{target}"
                for s in load_statements(database, base):
                    store._writer.query(s.sql)
                for s in new:
                    if s.file == NEW_FILE and s.name in (target, view.name):
                        store._writer.query(s.sql.replace("sfpla.", f"{database}."))
                stores[f"+{target}"] = database
        times: dict[str, list[float]] = {name: [] for name in stores}
        n = 0
        for database in stores.values():  # warm up
            store.database = database
            store._insert("events", event_rows(args.batch, 0), False, f"w-{uuid.uuid4().hex}")
        for r in range(args.rounds):
            order = list(stores.items())
            for name, database in order if r % 2 == 0 else order[::-1]:
                store.database = database
                rows = event_rows(args.batch, n, args.page_views)
                n += args.batch
                began = time.perf_counter()
                store._insert("events", rows, False, f"sfpl-{uuid.uuid4().hex}")
                times[name].append(time.perf_counter() - began)
        store._writer.close()

    before = statistics.median(times["without"])
    kind = "page views only" if args.page_views else "every view writes"
    print(f"\nchDB, {args.batch}-row batches ({kind}), tokens, {args.rounds} rounds, median\n")
    print(f"{'schema':<18}  {'ms/batch':>9}  {'rows/s':>9}  {'ratio':>6}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<18}  {med * 1000:>9.1f}  {args.batch / med:>9,.0f}  {med / before:>6.2f}")


if __name__ == "__main__":
    main()
