"""What the ``events.params`` column costs when clients invent keys: files per part, insert
rate, a typical params query, memory and descriptors, per column type (chDB in-process).

    .venv/bin/python bench/params_column.py [--rows 20000] [--keys 50] \
        [--type 'JSON' --type 'JSON(max_dynamic_paths=64, max_dynamic_types=8)' ...]

Without ``--type`` it compares the old ``params JSON`` on chDB's defaults with the type
``schema/010_events.sql`` declares now on the engine settings of the embedded store
(``store/embedded/store.py``); a ``--type`` ending in ``@defaults`` runs on chDB's defaults. Each type runs in a process of its own (chDB opens one data directory per
process; RSS and descriptors are that process's) on a fresh data directory with the full
schema (``events`` and its materialized views), opened the way the embedded store opens it.

Every event carries ``--keys`` random keys (random names, random JSON types: numbers, text,
booleans, null, arrays, objects nested up to depth 5) plus ``plan`` in {pro, free, team}, the
kind of key a dashboard filters on. Rows go in as the store sends them (Arrow batches of
``--batch``, ``INSERT ... SELECT * FROM Python(batch)``); generating them is not timed.

Reported per type:

* files: the most files in one active ``events`` part after the inserts (background merges
  running as they do in the gateway), then in the single part ``OPTIMIZE ... FINAL`` leaves
  (the worst case: every row in one wide part). A query or merge reading a part opens about
  one descriptor per file of the columns it reads.
* insert rows/s over all batches.
* query ms (median of 5): ``count() WHERE params.plan = 'pro'``, the same for a rare key, and
  ``JSONExtractString(toJSONString(params), 'plan')`` (reading the whole object, as a query
  written for the original's JSON text would) once.
* peak RSS (VmHWM) and the most descriptors seen.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sfpltracker.ingest.event import _params_text  # noqa: E402
from sfpltracker.store.schema import load_statements  # noqa: E402

EPOCH_MS = 1_767_225_600_000
DEFAULTS = "@defaults"  # suffix of a --type: open chDB with ClickHouse's defaults
OLD = "JSON" + DEFAULTS  # before issue 12: params JSON, chDB opened with its defaults
_PARAMS_TYPE = re.compile(r"(?m)^(\s+params\s+)(JSON(?:\([^)]*\))?)(,?)$")
_ALTER_PARAMS = re.compile(r"(MODIFY\s+COLUMN\s+params\s+)JSON(?:\([^)]*\))?")


def schema_params_type() -> str:
    """The type ``schema/010_events.sql`` declares for ``events.params``."""
    text = (ROOT / "schema" / "010_events.sql").read_text()
    return _PARAMS_TYPE.search(text).group(2)


# -- random params --------------------------------------------------------------------------

_ALPHABET = string.ascii_lowercase + string.digits + "_"


def random_key(rnd: random.Random) -> str:
    return "".join(rnd.choices(_ALPHABET, k=rnd.randrange(3, 13)))


def random_value(rnd: random.Random, depth: int = 1, max_depth: int = 5):
    """A random JSON value: scalars of every JSON type, arrays and objects down to max_depth."""
    kind = rnd.randrange(8 if depth < max_depth else 6)
    if kind == 0:
        return rnd.randrange(-(10**12), 10**12)
    if kind == 1:
        return round(rnd.uniform(-1e6, 1e6), rnd.randrange(0, 6))
    if kind == 2:
        return "".join(rnd.choices(string.ascii_letters, k=rnd.randrange(0, 16)))
    if kind == 3:
        return rnd.random() < 0.5
    if kind == 4:
        return None
    if kind == 5:
        return str(rnd.randrange(10**6))  # numeric text: the gateway types it as a number
    if kind == 6:
        return [random_value(rnd, depth + 1, max_depth) for _ in range(rnd.randrange(0, 4))]
    return {
        random_key(rnd): random_value(rnd, depth + 1, max_depth) for _ in range(rnd.randrange(1, 4))
    }


def random_params(rnd: random.Random, keys: int = 50, max_depth: int = 5) -> dict:
    """``keys`` random keys with random values, plus ``plan`` (a key every event has)."""
    params = {random_key(rnd): random_value(rnd, 1, max_depth) for _ in range(keys)}
    params["plan"] = rnd.choice(("pro", "free", "team"))
    return params


def rare_text_key(row: dict) -> tuple[str, str]:
    """A random key of ``row`` with a text value (few other rows have that key)."""
    params = json.loads(row["params"])
    return next(
        (k, v) for k, v in params.items() if k != "plan" and isinstance(v, str) and v.isalpha()
    )


def event_rows(rnd: random.Random, n: int, keys: int, start: int) -> list[dict]:
    return [
        {
            "eid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "created_at": EPOCH_MS + start + i,
            "hhash": "1x2y3z",
            "ename": "page_view",
            "url": f"https://bench.test/page/{i % 50}",
            # As the gateway writes it: typed values, each JSON path once.
            "params": _params_text(random_params(rnd, keys)),
        }
        for i in range(n)
    ]


# -- one column type, in its own process ----------------------------------------------------


class Sampler(threading.Thread):
    """The most descriptors this process holds, sampled every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.max_fds = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            self.max_fds = max(self.max_fds, len(os.listdir("/proc/self/fd")))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def _part_files(conn) -> list[int]:
    paths = conn.query(
        "SELECT path FROM system.parts WHERE database = 'sfpla' AND table = 'events' AND active",
        "TabSeparated",
    )
    return [len(os.listdir(p)) for p in paths.bytes().decode().split()]


def _ms(conn, sql: str, times: int) -> tuple[float, str]:
    spent, answer = [], ""
    for _ in range(times):
        t = time.perf_counter()
        answer = conn.query(sql, "TabSeparated").bytes().decode().strip()
        spent.append((time.perf_counter() - t) * 1000)
    return statistics.median(spent), answer


def run_one(
    params_type: str, rows: int, batch: int, keys: int, seed: int, engine: list[str]
) -> dict:
    import chdb

    from sfpltracker.store.embedded import (
        store as embedded,  # imported here: tests import this module's helpers
    )
    from sfpltracker.store.embedded.store import (
        CONFIG_FILE,
        chdb_connection_string,
        to_arrow,
        write_chdb_config,
    )

    for setting in engine:  # --engine name=value: try another engine budget
        name, value = setting.split("=", 1)
        target = embedded.SERVER_SETTINGS if name in embedded.SERVER_SETTINGS else None
        (target if target is not None else embedded.MERGE_TREE_SETTINGS)[name] = value
    sampler = Sampler()
    sampler.start()
    data = Path(tempfile.mkdtemp(prefix="params-bench-"))
    label = params_type
    if params_type.endswith(DEFAULTS):
        # As before: ClickHouse's own defaults (no budget, "advanced" JSON shared data).
        params_type = params_type[: -len(DEFAULTS)]
        conn = chdb.connect(str(data / "chdb"))
    else:
        # As the embedded store opens it (its memory budget and MergeTree defaults).
        config = write_chdb_config(data / CONFIG_FILE)
        conn = chdb.connect(chdb_connection_string(data / "chdb", config=config))
    for st in load_statements():
        sql = _PARAMS_TYPE.sub(lambda m: m.group(1) + params_type + m.group(3), st.sql)
        conn.query(_ALTER_PARAMS.sub(lambda m: m.group(1) + params_type, sql))
    columns = {}
    described = conn.query("DESCRIBE TABLE sfpla.events", "TabSeparated").bytes().decode()
    for line in described.splitlines():
        name, ch_type = line.split("\t")[:2]
        columns[name] = ch_type

    rnd = random.Random(seed)
    rare = None
    spent = 0.0
    for start in range(0, rows, batch):
        chunk = event_rows(rnd, min(batch, rows - start), keys, start)
        rare = rare or rare_text_key(chunk[-1])
        table, names = to_arrow(chunk, columns)  # noqa: F841 - read by name below
        column_list = ", ".join(f"`{n}`" for n in names)
        t = time.perf_counter()
        conn.query(f"INSERT INTO sfpla.events ({column_list}) SELECT * FROM Python(table)")
        spent += time.perf_counter() - t
    files_after_inserts = max(_part_files(conn))
    plan_ms, plan_count = _ms(conn, "SELECT count() FROM sfpla.events WHERE params.plan = 'pro'", 5)
    rare_ms, _ = _ms(
        conn, f"SELECT count() FROM sfpla.events WHERE params.`{rare[0]}` = '{rare[1]}'", 5
    )
    t = time.perf_counter()
    conn.query("OPTIMIZE TABLE sfpla.events FINAL")
    optimize_s = time.perf_counter() - t
    files_one_part = max(_part_files(conn))
    plan_one_ms, plan_one_count = _ms(
        conn, "SELECT count() FROM sfpla.events WHERE params.plan = 'pro'", 5
    )
    extract_ms, extract_count = _ms(
        conn,
        "SELECT count() FROM sfpla.events "
        "WHERE JSONExtractString(toJSONString(params), 'plan') = 'pro'",
        1,
    )
    sampler.done.set()
    sampler.join()
    conn.close()
    return {
        "type": label,
        "rows": rows,
        "files_per_part_after_inserts": files_after_inserts,
        "files_one_part": files_one_part,
        "insert_rows_per_s": round(rows / spent),
        "optimize_s": round(optimize_s, 1),
        "plan_query_ms": round(plan_ms, 1),
        "plan_query_one_part_ms": round(plan_one_ms, 1),
        "rare_key_query_ms": round(rare_ms, 1),
        "jsonextract_query_ms": round(extract_ms, 1),
        "plan_count": int(plan_count),
        "same_answer": plan_count == plan_one_count == extract_count,
        "peak_rss_mb": _status("VmHWM"),
        "max_fds": sampler.max_fds,
        "data": str(data),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--keys", type=int, default=50, help="random keys per event")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--type", action="append", dest="types", help="a params column type")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument(
        "--engine",
        action="append",
        default=[],
        help="name=value: a server or MergeTree setting instead of the store's (experiments)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child: run one type, print JSON
    args = ap.parse_args()
    if args.one:
        result = run_one(args.one, args.rows, args.batch, args.keys, args.seed, args.engine)
        print(json.dumps(result))
        return
    types = args.types or [OLD, schema_params_type()]
    results = []
    for params_type in types:
        out = subprocess.run(
            [sys.executable, __file__, "--one", params_type, "--rows", str(args.rows)]
            + ["--batch", str(args.batch), "--keys", str(args.keys), "--seed", str(args.seed)]
            + [f"--engine={e}" for e in args.engine],
            check=True,
            stdout=subprocess.PIPE,  # the child's errors go to our stderr
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if not args.keep:
            subprocess.run(["rm", "-rf", result["data"]], check=True)
        results.append(result)
        print(json.dumps(result), flush=True)
    print()
    print(f"{args.rows} events, {args.keys} random keys each (+ plan), batches of {args.batch}\n")
    head = (
        "| params type | files/part (inserts) | files (1 part) | insert rows/s "
        "| plan query ms | rare key ms | JSONExtract ms | peak RSS MB | max fds |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        print(
            f"| `{r['type']}` | {r['files_per_part_after_inserts']} | {r['files_one_part']} "
            f"| {r['insert_rows_per_s']} | {r['plan_query_ms']} / {r['plan_query_one_part_ms']} "
            f"| {r['rare_key_query_ms']} | {r['jsonextract_query_ms']} | {r['peak_rss_mb']} "
            f"| {r['max_fds']} |"
        )


if __name__ == "__main__":
    main()
