"""Loader throughput into a ClickHouse server: the gateway's store vs a bare clickhouse-driver loop.

    /work/venv/bin/python bench/clickhouse_loader.py [--seconds 4] [--batch 1000]

Starts a private clickhouse-server (Debian's 18.16, ``tests/servers.py``) with the schema
downgraded for it (``tests/clickhouse_legacy.py``: the real ``events`` table with types 18.16
has, its materialized views included), then inserts 1,000-row batches of event rows into
``events`` for ``--seconds`` per case, one batch at a time:

* ``driver, rows``: ``client.execute("INSERT INTO events (cols) VALUES", tuples)`` from the
  same dict rows the store gets, the tuples built in the timed loop - the loop a person would
  write by hand;
* ``driver, pre-typed``: the same with tuples of the driver's own types (UUID objects) made
  beforehand, outside the timing - the driver's floor;
* ``store.insert``: the gateway's ``ClickHouseStore`` from the Twisted reactor, rows as the
  event model makes them (dicts of text UUIDs, epoch ms, JSON text): type conversion and the
  hop to the store's thread included;
* ``store.insert dedup``: the same with ``dedup=True`` (a retry: one SELECT of the keys first).

Each case runs on ``events`` as the schema has it (its materialized views fire on every insert),
on ``events_plain``, a MergeTree copy without views, and on ``events_memory``, a Memory-engine
copy: no disk, so the client side and the protocol alone. 18.16 writes every column of every
part to its own files (no compact parts), so with ``events``' 66 columns the server's disk work
dominates the first two.

The cases of a table take turns in four rounds, so that other work on the machine and the
server's background merges weigh on all of them alike. Only the insert calls are timed (making
fresh ids between batches is not). Prints one table with rows/s and the ratio to the bare row
loop.
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

from tests.clickhouse_legacy import downgrade_schema  # noqa: E402
from tests.servers import ClickHouseServer  # noqa: E402

EPOCH_MS = 1_767_225_600_000


def event_rows(n: int, start: int) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        rows.append(
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
        )
    return rows


COLUMNS = list(event_rows(1, 0)[0])
UUIDS = {"eid", "vid", "sid", "oid"}


def typed(row: dict) -> tuple:
    """The row in the driver's own types (UUID objects, DateTime seconds)."""
    return tuple(
        uuid.UUID(row[c]) if c in UUIDS else row[c] // 1000 if c == "created_at" else row[c]
        for c in COLUMNS
    )


def as_tuple(row: dict) -> tuple:
    """The least a hand-written loop does with a row: a tuple, epoch ms -> DateTime seconds."""
    return tuple(row[c] // 1000 if c == "created_at" else row[c] for c in COLUMNS)


def refresh_ids(rows: list[dict]) -> None:
    for r in rows:
        r["eid"] = str(uuid.uuid4())


def bare_case(client, table: str, batches, typed_batches, seconds: float, mode: str):
    """``rows``: from the same dicts the store gets (tuples built in the timed loop);
    ``pre-typed``: tuples of driver types made beforehand (the driver's floor)."""
    sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES"
    spent, rows_done, n = 0.0, 0, 0
    while spent < seconds:
        rows = batches[n % len(batches)]
        began = time.perf_counter()
        if mode == "pre-typed":
            client.execute(sql, typed_batches[n % len(batches)])
        else:
            client.execute(sql, [as_tuple(r) for r in rows])
        spent += time.perf_counter() - began
        rows_done += len(rows)
        n += 1
    return n, rows_done, spent


def store_case(store, table: str, batches, seconds: float, dedup: bool):
    from twisted.internet import defer

    @defer.inlineCallbacks
    def run():
        spent, rows_done, n = 0.0, 0, 0
        while spent < seconds:
            rows = batches[n % len(batches)]
            if dedup:
                refresh_ids(rows)
            began = time.perf_counter()
            stored = yield store.insert(table, rows, dedup=dedup)
            spent += time.perf_counter() - began
            assert stored == len(rows), stored
            rows_done += stored
            n += 1
        return n, rows_done, spent

    return run()


CASES = ("driver, rows", "driver, pre-typed", "store.insert", "store.insert dedup")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="insert time per case")
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch")
    args = parser.parse_args()

    from twisted.internet import defer, task

    from sfpltracker.store.clickhouse.store import ClickHouseStore

    work = Path(tempfile.mkdtemp(prefix="sfpl-bench-ch-"))
    schema = downgrade_schema(work / "schema")
    batches = [event_rows(args.batch, b * args.batch) for b in range(20)]
    results: list[tuple[str, str, int, int, float]] = []

    with ClickHouseServer() as ch:
        database = "bench"

        @defer.inlineCallbacks
        def run(reactor):
            store = ClickHouseStore(
                reactor, [ch.hostport], work / "data", database=database, schema_directory=schema
            )
            yield store.start()
            client = ch.client()
            # events as the schema has it (its views fire per insert), a copy without views,
            # and one in memory (no disk: the client side and the protocol alone)
            client.execute(
                f"CREATE TABLE {database}.events_plain AS {database}.events "
                "ENGINE = MergeTree() PARTITION BY toYYYYMM(created_at) ORDER BY (created_at, eid)"
            )
            client.execute(
                f"CREATE TABLE {database}.events_memory AS {database}.events ENGINE = Memory"
            )
            bare = ch.client(compression=False)
            typed_batches = [[typed(r) for r in rows] for rows in batches]
            # The cases of a table take turns, a slice of time each, so that the machine's
            # other work and the server's background merges weigh on all of them alike.
            rounds = 4
            for table in ("events", "events_plain", "events_memory"):
                full = f"{database}.{table}"
                totals = {case: [0, 0, 0.0] for case in CASES}
                for _ in range(rounds):
                    for case in CASES:
                        if case.startswith("driver"):
                            mode = case.split(", ")[1]
                            outcome = bare_case(
                                bare, full, batches, typed_batches, args.seconds / rounds, mode
                            )
                        else:
                            outcome = yield store_case(
                                store, table, batches, args.seconds / rounds, case.endswith("dedup")
                            )
                        totals[case] = [a + b for a, b in zip(totals[case], outcome, strict=True)]
                    client.execute(f"TRUNCATE TABLE {full}")
                results.extend((table, case, *totals[case]) for case in CASES)
            bare.disconnect()
            yield store.stop()

        try:
            task.react(run)
        except SystemExit as e:
            if e.code:
                raise

        print(f"\nClickHouse {ch.client().execute('SELECT version()')[0][0]}, ", end="")
    print(f"{args.batch}-row batches of {len(COLUMNS)} columns into events, one batch at a time")
    print(
        f"{'table':<14}{'case':<22}{'batches':>8}{'rows':>9}{'seconds':>9}{'rows/s':>10}"
        f"{'vs bare':>9}"
    )
    base = {}
    for table, name, n, rows, spent in results:
        rate = rows / spent
        base.setdefault(table, rate)  # the first case of a table is the bare row loop
        print(
            f"{table:<14}{name:<22}{n:>8}{rows:>9}{spent:>9.2f}{rate:>10,.0f}"
            f"{rate / base[table]:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
