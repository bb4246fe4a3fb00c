"""Loader throughput into DuckDB: the gateway's DuckDB store vs a bare ``duckdb`` insert loop.

    .venv/bin/python bench/duckdb_store.py [--seconds 4] [--batch 1000]

Inserts 1,000-row batches of event rows (the rows the event model makes: text UUIDs, epoch
ms, JSON text) into ``events`` for ``--seconds`` per case, one batch at a time, each case in
a fresh DuckDB file with the store's schema:

* ``bare executemany``: ``con.executemany("INSERT INTO events (cols) VALUES (?, ...)")`` with
  tuples from the dicts - the loop a person would write first;
* ``bare arrow``: the dicts made into an Arrow table in the timed loop and inserted with
  ``INSERT INTO events SELECT ... FROM batch`` - the fast way (the base of the ratios);
* ``store.insert token``: ``DuckDBStore.insert(token=...)`` from the Twisted reactor, as the
  batcher sends every batch (rows, token and commit in one transaction, the hop to the
  store's writer thread, ``ON CONFLICT`` on the eid key included);
* ``store.insert dedup``: ``dedup=True`` without a token (a retry: a key lookup first);
* ``maintained on insert``: the bare arrow loop plus an upsert per batch into six summing
  tables (hits, dailies, referrers, outcomes, visitors, sessions) - what keeping the derived
  tables as tables (instead of the store's views) would cost on the insert path.

Then, on the file the token case filled, the time of a dashboard read of a derived view
(``SELECT url, total FROM hits ORDER BY total DESC LIMIT 10``) vs the same read of the table
the maintained case kept. Prints rows/s and each case's ratio to ``bare arrow``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
            "app": "web",
            "ename": "page_view",
            "etyp": "view",
            "url": f"https://example.com/products/{i % 500}?ref=campaign",
            "last": "https://www.google.com/",
            "outcome": "ok",
            "ip": "203.0.113.0",
            "iphash": "c2f9a1",
            "browser": "Firefox",
            "os": "Linux",
            "device": "desktop",
            "country": "NZ",
            "params": json.dumps({"plan": "pro", "step": i % 7}),
            "vp_w": 1440,
            "vp_h": 900,
            "cflags": 3,
            "server": 0,
            "bot": 0,
        }
        for i in range(start, start + n)
    ]


COLUMNS = list(event_rows(1, 0)[0])


def fresh(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["eid"] = str(uuid.uuid4())
    return rows


def open_schema(path: Path):
    """A DuckDB connection to a new file with the store's schema (as the store loads it)."""
    import duckdb

    from sfpltracker.store.duckdb.schema import build, macros

    con = duckdb.connect()
    con.execute(f"ATTACH '{path}' AS sfpla")
    con.execute("USE sfpla")
    for sql in macros("sfpla") + [sql for _, sql in build().statements]:
        con.execute(sql)
    return con


MAINTAINED = {
    "hits_t": ("hhash, url, date", "url != ''", "hhash, url, created_at::DATE AS date"),
    "dailies_t": ("ip, day", "true", "ip, created_at::DATE AS day"),
    "referrers_t": ("hhash, url, date", "last != ''", "hhash, last AS url, created_at::DATE"),
    "outcomes_t": ("hhash, outcome, url", "outcome != ''", "hhash, outcome, url"),
    "visitors_t": ("oid, vid", "true", "oid::VARCHAR, vid::VARCHAR"),
    "sessions_t": ("oid, sid", "true", "oid::VARCHAR, sid::VARCHAR"),
}


def arrow_batch(rows: list[dict]):
    import pyarrow as pa

    from sfpltracker.store.duckdb.store import _arrow_column

    types = {"created_at": "TIMESTAMP", "vp_w": "BIGINT", "vp_h": "BIGINT", "cflags": "BIGINT",
             "server": "UTINYINT", "bot": "UTINYINT"}  # fmt: skip
    return pa.Table.from_arrays(
        [_arrow_column([r[c] for r in rows], types.get(c, "VARCHAR")) for c in COLUMNS],
        names=COLUMNS,
    )


def bare(con, batches, seconds: float, mode: str):
    cols = ", ".join(COLUMNS)
    if mode == "maintained":
        for name, (key, _, _) in MAINTAINED.items():
            keys = ", ".join(f"{k} VARCHAR" for k in key.split(", "))
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({keys}, total UBIGINT, "
                        f"PRIMARY KEY ({key}))")  # fmt: skip
    spent, done, n = 0.0, 0, 0
    while spent < seconds:
        rows = fresh(batches[n % len(batches)])
        began = time.perf_counter()
        if mode == "executemany":
            marks = ", ".join("epoch_ms(?)" if c == "created_at" else "?" for c in COLUMNS)
            con.executemany(
                f"INSERT INTO events ({cols}) VALUES ({marks})",
                [tuple(r[c] for c in COLUMNS) for r in rows],
            )
        else:
            batch = arrow_batch(rows)  # noqa: F841 - read by name below
            con.execute("BEGIN")
            con.execute(
                f"INSERT INTO events ({cols}) SELECT eid::UUID, vid::UUID, sid::UUID, "
                "oid::UUID, created_at, " + ", ".join(COLUMNS[5:]) + " FROM batch"
            )
            if mode == "maintained":
                for name, (_key, where, select) in MAINTAINED.items():
                    con.execute(
                        f"INSERT INTO {name} SELECT {select}, count(*) FROM batch "
                        f"WHERE {where} GROUP BY ALL "
                        "ON CONFLICT DO UPDATE SET total = total + excluded.total"
                    )
            con.execute("COMMIT")
        spent += time.perf_counter() - began
        done += len(rows)
        n += 1
    return n, done, spent


def store_case(store, batches, seconds: float, token: bool):
    from twisted.internet import defer

    @defer.inlineCallbacks
    def run():
        spent, done, n = 0.0, 0, 0
        while spent < seconds:
            rows = fresh(batches[n % len(batches)])
            began = time.perf_counter()
            stored = yield store.insert(
                "events", rows, dedup=not token, token=f"b{n}" if token else None
            )
            spent += time.perf_counter() - began
            assert stored == len(rows), stored
            done += stored
            n += 1
        return n, done, spent

    return run()


def timed_read(con, sql: str, times: int = 5) -> float:
    best = float("inf")
    for _ in range(times):
        began = time.perf_counter()
        con.execute(sql).fetchall()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="insert time per case")
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch")
    args = parser.parse_args()

    import duckdb
    from twisted.internet import defer, task

    from sfpltracker.store.duckdb.store import DuckDBStore

    work = Path(tempfile.mkdtemp(prefix="sfpl-bench-duckdb-"))
    batches = [event_rows(args.batch, b * args.batch) for b in range(20)]
    results: list[tuple[str, int, int, float]] = []
    reads: dict[str, float] = {}

    for mode in ("executemany", "arrow", "maintained"):
        con = open_schema(work / f"{mode}.duckdb")
        results.append((f"bare {mode}" if mode != "maintained" else "maintained on insert",
                        *bare(con, batches, args.seconds, mode)))  # fmt: skip
        if mode == "maintained":
            reads["table hits_t"] = timed_read(
                con, "SELECT url, total FROM hits_t ORDER BY total DESC LIMIT 10"
            )
        con.close()

    @defer.inlineCallbacks
    def run(reactor):
        for token in (True, False):
            path = work / f"store-{token}.duckdb"
            store = DuckDBStore(path, work / f"data-{token}", reactor)
            yield store.start()
            outcome = yield store_case(store, batches, args.seconds, token)
            results.append(("store.insert token" if token else "store.insert dedup", *outcome))
            yield store.stop()
            if token:
                con = duckdb.connect(str(path), read_only=True)
                reads["view hits"] = timed_read(
                    con, "SELECT url, total FROM hits ORDER BY total DESC LIMIT 10"
                )
                stored = con.execute("SELECT count(*) FROM events").fetchone()[0]
                con.close()
                reads["rows"] = stored

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise

    print(
        f"\nDuckDB {duckdb.__version__}, {args.batch}-row batches of {len(COLUMNS)} columns "
        "into events, one batch at a time"
    )
    base = next(r for r in results if r[0] == "bare arrow")
    base_rate = base[2] / base[3]
    print(f"{'case':<24}{'batches':>8}{'rows':>9}{'seconds':>9}{'rows/s':>10}{'vs arrow':>10}")
    for name, n, rows, spent in results:
        rate = rows / spent
        print(f"{name:<24}{n:>8}{rows:>9}{spent:>9.2f}{rate:>10,.0f}{rate / base_rate:>10.2f}")
    print(
        f"\ntop-10 hits read with {reads['rows']:,} events stored: view {reads['view hits'] * 1000:.1f}"
        f" ms; maintained table: {reads['table hits_t'] * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
