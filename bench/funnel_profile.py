"""Where the dashboard funnel's time goes: the funnel of the last 30 days of a store made by
``bench/dashboard.py`` (no filter, steps ``page_view,signup,purchase``, 7 days) as the API
asks it (``queries.funnel``, its vid-range parts one after the other on one reader session
with the gateway's reader settings), against the same rows read without ``windowFunnel``.

    .venv/bin/python bench/funnel_profile.py --dir /tmp/funnel-10m-funnel [--rounds 7]

Each variant is run ``--rounds`` times, the variants alternated (the machine's load drifts);
printed: the median and max CPU of this process per run (chDB runs in it) and the wall time.

- ``funnel``: the API's queries;
- ``grouped``: the same rows grouped by visitor, nothing computed per visitor;
- ``read``: the same rows read (vid, time, ename) and summed, not grouped;
- ``rows out (Native|ArrowStream)``: the rows handed to Python, unsorted, as a funnel computed
  outside ClickHouse would need them at least (uncompressed Arrow).

The store must not be open in another process (stop a gateway on it first).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chdb  # noqa: E402

from sfpltracker.dashboard import queries as q  # noqa: E402
from sfpltracker.store.embedded.store import (  # noqa: E402
    READER_SETTINGS,
    EmbeddedStore,
    chdb_connection_string,
    escaped,
)

STEPS = ["page_view", "signup", "purchase"]
WINDOW = 7 * 86400


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def source(sql: str) -> str:
    """``FROM <table> WHERE ...`` of the funnel's inner SELECT, without its GROUP BY."""
    inner = sql.split("FROM (", 1)[1].rsplit(")", 1)[0]
    return "FROM " + inner.split(" FROM ", 1)[1].replace("GROUP BY vid", "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True, help="a store of bench/dashboard.py")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    store = EmbeddedStore(args.dir / "data", reactor=None)
    store._open_and_load()
    conn = chdb.connect(chdb_connection_string(store.path, settings=READER_SETTINGS))
    last = conn.query("SELECT toDate(max(created_at)) FROM sfpla.dash_funnel", "CSV")
    end = date.fromisoformat(last.bytes().decode().strip().strip('"'))
    f = q.Filters(start=end - timedelta(days=29), end=end)
    parts = [q.funnel("sfpla", f, STEPS, WINDOW, p, q.funnel_parts(f))
             for p in range(q.funnel_parts(f))]  # fmt: skip
    e = "toUInt8(indexOf([{s0:String}, {s1:String}, {s2:String}], ename))"
    raw = " SETTINGS output_format_arrow_compression_method = 'none'"
    variants = {
        "funnel": (lambda s: s, "TabSeparated"),
        "grouped": (
            lambda s: f"SELECT count() FROM (SELECT vid, count() {source(s)} GROUP BY vid)",
            "TabSeparated",
        ),  # fmt: skip
        "read": (
            lambda s: (
                f"SELECT max(vid), max(created_at), countIf(ename = {{s1:String}}) {source(s)}"
            ),
            "TabSeparated",
        ),  # fmt: skip
        "rows out (Native)": (
            lambda s: f"SELECT vid, toUInt32(created_at) AS t, {e} AS e {source(s)}",
            "Native",
        ),  # fmt: skip
        "rows out (ArrowStream)": (
            lambda s: f"SELECT vid, toUInt32(created_at) AS t, {e} AS e {source(s)}{raw}",
            "ArrowStream",
        ),  # fmt: skip
    }
    took: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    out_bytes: dict[str, int] = {}
    for _ in range(args.rounds + 1):  # the first round warms the caches
        for name, (sql_of, fmt) in variants.items():
            t0, c0, size = time.perf_counter(), cpu(), 0
            for part in parts:
                size += len(conn.query(sql_of(part.sql), fmt, params=escaped(part.params)).bytes())
            took[name].append(((cpu() - c0) * 1000, (time.perf_counter() - t0) * 1000))
            out_bytes[name] = size
    answer = []
    for part in parts:
        answer.append(conn.query(part.sql, "CSV", params=escaped(part.params)).bytes().decode())
    print(f"funnel of {f.start} - {f.end} in {len(parts)} parts: "
          f"{' | '.join(a.strip().replace(chr(10), ' ') for a in answer)} (level,visitors)")  # fmt: skip
    print("| variant | CPU p50 / max ms | wall p50 / max ms | bytes out |")
    print("|---|---:|---:|---:|")
    for name, runs in took.items():
        c, w = sorted(r[0] for r in runs[1:]), sorted(r[1] for r in runs[1:])
        print(f"| {name} | {statistics.median(c):.0f} / {c[-1]:.0f} | "
              f"{statistics.median(w):.0f} / {w[-1]:.0f} | {out_bytes[name]:,} |")  # fmt: skip
    conn.close()


if __name__ == "__main__":
    main()
