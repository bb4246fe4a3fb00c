"""Latency at fixed rates: GET tracking, Workers 1 vs 2 (or more), next to bare Twisted.

    .venv/bin/python bench/latency.py [--seconds 8] [--workers 1,2] [--rates R1,R2] [--rounds N]
        [--config JSON]

Debian's ``hey`` sends GET tracking requests at a fixed total rate over 50 connections and
reports p50/p90/p99. Without ``--rates`` the rates are a quarter and a half of the maximum wrk
measures first against the one-process gateway (what issue 14 asks). Each gateway runs with
its default batching, so the store's inserts happen during the run: with ``Workers: 1`` they
share the reactor's interpreter, with workers they run in the store process. The CPU columns
are the whole process tree's (supervisor, store process, workers) per request. Measuring
starts once every process of the gateway serves (``common.all_up``). With ``--rounds N`` every
case runs N times, alternating, each gateway from an empty data directory, and a last table
gives each round's p99 and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case this many times (bare, each Workers value, bare, ...) and "
        "print each round's p99 and the medians",
    )
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

    rows = []  # (round, case, rate, hey's result, tree CPU us/request)
    for round_no in range(1, args.rounds + 1):
        with BareTwisted() as bare:
            for rate in rates:
                cpu = TreeCpu(bare.proc.pid).start()
                r = hey(f"http://127.0.0.1:{bare.port}/", rate, args.seconds)
                cpu.stop()
                rows.append(
                    [round_no, "bare Twisted", rate, r, cpu.total * 1e6 / max(1, r.requests)]
                )
        for n in counts:
            data = Path(tempfile.mkdtemp(dir=work))  # each gateway starts empty
            with GatewayProcess(data, {**base, "Workers": n}, name=f"gw-w{n}") as gw:
                all_up(gw)
                for rate in rates:
                    cpu = TreeCpu(gw.proc.pid).start()
                    r = hey(f"http://127.0.0.1:{gw.port}{PATH}", rate, args.seconds)
                    cpu.stop()
                    per_request = cpu.total * 1e6 / max(1, r.requests)
                    rows.append([round_no, f"gateway Workers {n}", rate, r, per_request])

    out = []
    bare_p99 = {(i, rate): r.p99_ms for i, name, rate, r, _ in rows if name == "bare Twisted"}
    for i, name, rate, r, cpu in rows:
        out.append(
            [
                name if args.rounds == 1 else f"{name}, round {i}",
                rate,
                r.rps,
                r.non_2xx,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.p99_ms / bare_p99[(i, rate)] if bare_p99.get((i, rate)) else "-",
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
    if args.rounds > 1:
        print()
        print(table(["case", "rate", *MEDIAN_HEADERS], medians(rows, bare_p99)))
    print(
        f"\nhey, 50 connections, {args.seconds}s per rate, on the same machine; "
        f"{args.rounds} round(s), cases alternating."
    )


MEDIAN_HEADERS = ["p99 ms per round", "median p99", "p99 vs bare per round", "median vs bare"]


def medians(rows: list[list], bare: dict[tuple[int, int], float]) -> list[list]:
    """Per case and rate: each round's p99, its ratio to bare Twisted's p99 of the same round
    and rate (``bare``), and their medians (one run's p99 moves by several ms on this shared
    machine)."""
    by_case: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for i, name, rate, r, _ in rows:
        by_case.setdefault((name, rate), []).append((r.p99_ms, r.p99_ms / bare[(i, rate)]))
    out = []
    for (name, rate), got in by_case.items():
        p99s, ratios = [g[0] for g in got], [g[1] for g in got]
        out.append(
            [
                name,
                rate,
                ", ".join(f"{v:.1f}" for v in p99s),
                statistics.median(p99s),
                ", ".join(f"{v:.2f}x" for v in ratios),
                f"{statistics.median(ratios):.2f}x",
            ]
        )
    return out


if __name__ == "__main__":
    main()
