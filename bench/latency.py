"""Latency at fixed rates: GET tracking, Workers 1 vs 2 (or more), next to bare Twisted.

    .venv/bin/python bench/latency.py [--seconds 8] [--workers 1,2] [--rates R1,R2] [--config JSON]

Debian's ``hey`` sends GET tracking requests at a fixed total rate over 50 connections and
reports p50/p90/p99. Without ``--rates`` the rates are a quarter and a half of the maximum wrk
measures first against the one-process gateway (what issue 14 asks). Each gateway runs with
its default batching, so the store's inserts happen during the run: with ``Workers: 1`` they
share the reactor's interpreter, with workers they run in the store process. The CPU columns
are the whole process tree's (supervisor, store process, workers) per request. Measuring
starts once every process of the gateway serves (``common.all_up``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import BareTwisted, GatewayProcess, TreeCpu, all_up, hey, table, wrk

PATH = "/tr/v1/tr/ename/page_view/etyp/view/app/bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rates", default="", help="req/s, comma-separated (default: measured)")
    parser.add_argument("--layer", default="fast", help="HTTPServer of the gateway")
    parser.add_argument("--config", default="{}", help="JSON overrides of the gateway config")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sfpl-latency-"))
    counts = [int(w) for w in args.workers.split(",")]
    base = {"HTTPServer": args.layer, **json.loads(args.config)}

    if args.rates:
        rates = [int(r) for r in args.rates.split(",")]
    else:
        with GatewayProcess(work, {**base, "Workers": 1}, name="gw-max") as gw:
            top = wrk(f"http://127.0.0.1:{gw.port}{PATH}", seconds=5, connections=50)
        rates = [int(top.rps / 4), int(top.rps / 2)]
        print(f"max (wrk, Workers 1, 5 s): {top.rps:.0f} req/s -> rates {rates}")

    rows = []
    with BareTwisted() as bare:
        for rate in rates:
            cpu = TreeCpu(bare.proc.pid).start()
            r = hey(f"http://127.0.0.1:{bare.port}/", rate, args.seconds)
            cpu.stop()
            rows.append(["bare Twisted", rate, r, cpu.total * 1e6 / max(1, r.requests)])
    for n in counts:
        with GatewayProcess(work, {**base, "Workers": n}, name=f"gw-w{n}") as gw:
            all_up(gw)
            for rate in rates:
                cpu = TreeCpu(gw.proc.pid).start()
                r = hey(f"http://127.0.0.1:{gw.port}{PATH}", rate, args.seconds)
                cpu.stop()
                rows.append([f"gateway Workers {n}", rate, r, cpu.total * 1e6 / max(1, r.requests)])

    out = []
    bare_p99 = {rate: r.p99_ms for name, rate, r, _ in rows if name == "bare Twisted"}
    for name, rate, r, cpu in rows:
        out.append(
            [
                name,
                rate,
                r.rps,
                r.non_2xx,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.p99_ms / bare_p99[rate] if bare_p99.get(rate) else "-",
                cpu,
            ]
        )
    print(
        table(
            [
                "case",
                "rate",
                "req/s",
                "non-2xx",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99 vs bare",
                "tree CPU us/req",
            ],
            out,
        )
    )
    print(f"\nhey, 50 connections, {args.seconds}s per rate, on the same machine; one run.")


if __name__ == "__main__":
    main()
