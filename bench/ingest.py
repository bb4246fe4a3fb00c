"""Ingestion throughput: gateway vs nginx empty_gif vs a bare Twisted resource, in one run.

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 50] [--workers 1,2] [--rounds N]
        [--cases get,post] [--config JSON]

(a) nginx `empty_gif` with an access log, (b) a bare twisted.web resource returning the GIF,
(c) the gateway's GET REST-path tracking, (d) JSON POST batches of 20 events; (c) and (d) once
per ``--layers`` (``HTTPServer``: ``twisted``, twisted.web's HTTPChannel; ``fast``, edge/http.py). For (c) and (d)
the rows in `sfpla.events` are counted after the run, so the table shows events *stored* per
second and how many 2xx-answered events are missing from the store (must be 0).

CPU columns (from ``/proc``, so less noisy than req/s on a shared machine): microseconds of
the server's main thread per request during the wrk run (for the gateway: the reactor thread,
where HTTP and the per-request Python work run), and of the whole process per event from the
start of the run until the events are stored (for the gateway: reactor + spool writer +
loader + chDB inserts). With ``--workers`` past 1 two more tables split the process tree's CPU
by role and the store process's by kind of thread (reactor, Python threads, chDB's pools,
merges). The last table says whether the store kept up: the rows stored when wrk stopped and
how long until every event was (events/s counts what a run stored by the end, backlog
included: a store that falls behind shows here, not there). With ``--rounds N`` the gateway
cases run N times, Workers values alternating, and a last table gives each round's events/s
ratio and change of the tree's CPU per event against Workers 1 of the same round, and the
medians: one run's ratio moves by 15% or more on this shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import BareTwisted, CpuMeter, GatewayProcess, Nginx, TreeCpu, all_up, table, wrk

BATCH = 20
GET_PATH = "/tr/v1/tr/ename/page_view/etyp/view/app/bench"
POST_BODY = json.dumps([{"ename": "bench", "etyp": "batch", "n": i} for i in range(BATCH)])
POST_SCRIPT = (
    f"wrk.method = 'POST'\nwrk.body = {json.dumps(POST_BODY)}\n"
    "wrk.headers['Content-Type'] = 'application/json'\n"
)


def rows_now(gw: GatewayProcess) -> int:
    """A plain count(): read from the parts' metadata, so polling it adds next to nothing to
    the store's CPU that is being measured meanwhile (FINAL would merge every part)."""
    return gw.query("SELECT count() AS n FROM sfpla.events")[0]["n"]


def wait_drained(gw: GatewayProcess) -> float:
    """Until the batcher has drained: the row count stops moving. Returns the seconds until
    it last moved (how far behind the load the store was when the load stopped)."""
    began = time.monotonic()
    last, stable_since = -1, began
    while time.monotonic() - stable_since < 3:
        n = rows_now(gw)
        if n != last:
            last, stable_since = n, time.monotonic()
        time.sleep(0.5)
    return stable_since - began


def count_events(gw: GatewayProcess) -> int:
    """Rows stored, each once (FINAL: a row loaded twice counts once), once drained."""
    return gw.query("SELECT count() AS n FROM sfpla.events FINAL")[0]["n"]


class Meter:
    """CPU of the gateway: its one process (main thread during the run, the process until
    the events are stored), or with workers the whole process tree and each role's share."""

    def __init__(self, gw: GatewayProcess, workers: int):
        self.gw, self.workers = gw, workers
        self.pids = {p["pid"]: p["role"] for p in all_up(gw)} if workers > 1 else {}
        self.cpu = (TreeCpu if workers > 1 else CpuMeter)(gw.proc.pid).start()
        self.main = 0.0

    def during_run(self) -> None:
        if self.workers == 1:
            self.main = self.cpu.stop().main  # the reactor thread during the run

    def until_stored(self):
        self.cpu.stop()
        if self.workers == 1:
            self.cpu.main = self.main
        else:
            self.cpu.main = float("nan")  # several reactors: see the split table
        return self.cpu

    def split(self, name: str, stored: int) -> list:
        by_role: dict[str, float] = {}
        by_worker: list[float] = []
        for pid, seconds in self.cpu.by_pid.items():
            role = self.pids.get(pid, "supervisor" if pid == self.gw.proc.pid else "other")
            by_role[role] = by_role.get(role, 0.0) + seconds
            if role == "worker":
                by_worker.append(seconds)
        per = 1e6 / max(1, stored)
        return [
            name,
            by_role.get("worker", 0.0) * per,
            # how evenly the connections were spread: 1/N when even, 1.0 when one took all
            max(by_worker, default=0.0) / max(1e-9, sum(by_worker)),
            by_role.get("store", 0.0) * per,
            by_role.get("supervisor", 0.0) * per,
        ]

    def store_threads(self, name: str, stored: int) -> list:
        """The store process's CPU per stored event by kind of thread."""
        store = [pid for pid, role in self.pids.items() if role == "store"]
        kinds = dict.fromkeys(STORE_THREADS, 0.0)
        for (pid, thread), seconds in self.cpu.by_thread.items():
            if pid in store:
                kinds[STORE_THREAD_KIND.get(thread, "chDB pools")] += seconds
        # Threads that ended during the run (chDB's pools come and go) count in the process.
        kinds["ended threads"] = sum(self.cpu.by_pid.get(p, 0.0) for p in store) - sum(
            kinds.values()
        )
        per = 1e6 / max(1, stored)
        return [name, *(v * per for v in kinds.values())]


# The store process's threads by name (Linux thread names, 15 characters): the reactor;
# Python's threads (the chDB writer, which converts rows to Arrow and runs the insert's
# pipeline, the spool reads and decoding, chDB readers); chDB's merges; the rest of chDB's pools.
STORE_THREAD_KIND = {"main": "reactor", "python": "Python threads", "MergeMutate": "merges"}
STORE_THREADS = ["reactor", "Python threads", "chDB pools", "merges", "ended threads"]


def gateway_case(work: Path, case: str, overrides: dict, tag: str, run: dict) -> dict:
    """A new gateway (its own data directory), one wrk run (``get``: the REST path; ``post``:
    batches), drained and counted."""
    n = overrides["Workers"]
    with GatewayProcess(Path(tempfile.mkdtemp(dir=work)), overrides, name=f"gw-{case}-{n}") as gw:
        meter = Meter(gw, n)
        if case == "get":
            r = wrk(f"http://127.0.0.1:{gw.port}{GET_PATH}", **run)
            answered, name = r.ok, f"(c) gateway GET REST path [{tag}]"
        else:
            r = wrk(f"http://127.0.0.1:{gw.port}/tr/v1/tr/", script=POST_SCRIPT, **run)
            answered, name = r.ok * BATCH, f"(d) POST batches of {BATCH} [{tag}]"
        meter.during_run()
        at_end = rows_now(gw)
        drain_s = wait_drained(gw)
        cpu = meter.until_stored()
        stored = count_events(gw)
    return dict(
        row=[name, r, answered, stored, cpu],
        behind=[name, answered, at_end, 100 * (1 - at_end / answered), drain_s],
        split=meter.split(name, stored) if n > 1 else None,
        threads=meter.store_threads(name, stored) if n > 1 else None,
    )


def against_one_worker(rounds: list[dict]) -> list[list]:
    """Each Workers value past 1 against Workers 1 of the same round, layer and case, and the
    median over rounds (one run's ratio moves by +-15% on this shared 2-core machine)."""
    one = {(x["round"], x["layer"], x["case"]): x for x in rounds if x["workers"] == 1}
    pairs: dict[tuple, list[tuple[float, float]]] = {}
    for x in rounds:
        base = one.get((x["round"], x["layer"], x["case"]))
        if x["workers"] > 1 and base:
            key = (x["layer"], x["case"], x["workers"])
            pairs.setdefault(key, []).append(
                (x["per_s"] / base["per_s"], 100 * (x["cpu"] / base["cpu"] - 1))
            )
    out = []
    for (layer, case, n), got in pairs.items():
        speedups, growths = [p[0] for p in got], [p[1] for p in got]
        out.append(
            [
                f"{case.upper()} [{layer}] Workers {n} / 1",
                len(got),
                ", ".join(f"{v:.2f}x" for v in speedups),
                f"{statistics.median(speedups):.2f}x",
                ", ".join(f"{v:+.0f}%" for v in growths),
                f"{statistics.median(growths):+.1f}%",
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--layers", default="twisted,fast", help="HTTPServer values to measure the gateway with"
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="Workers values to run the gateway cases with (e.g. 1,2); past 1 the CPU is the "
        "whole process tree's, split into workers and store process",
    )
    parser.add_argument("--config", default="{}", help="JSON overrides of the gateway config")
    parser.add_argument("--cases", default="get,post", help="gateway cases: get, post")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the gateway cases this many times, alternating the Workers values, and "
        "print each round's ratios to Workers 1 and their median",
    )
    args = parser.parse_args()
    run = dict(seconds=args.seconds, connections=args.connections)
    work = Path(tempfile.mkdtemp(prefix="sfpl-bench-"))
    rows = []

    with Nginx("location / { empty_gif; }", work) as nginx:
        a = wrk(f"http://127.0.0.1:{nginx.port}/tr/v1/img/", **run)
    rows.append(["(a) nginx empty_gif + access log", a, a.ok, None, None])

    with BareTwisted() as bare:
        cpu = CpuMeter(bare.proc.pid).start()
        b = wrk(f"http://127.0.0.1:{bare.port}/", **run)
        cpu.stop()
    rows.append(["(b) bare Twisted resource", b, b.ok, None, cpu])

    # Each gateway case behind twisted.web's HTTPChannel and behind edge/http.py, with each
    # Workers value; with --rounds, the whole set again (alternated: W1, W2, W1, W2, ...).
    split: list[list] = []
    threads: list[list] = []
    behind: list[list] = []  # whether the store kept up with the load
    rounds: list[dict] = []  # per round, layer, case and Workers value: (events/s, CPU/event)
    workers = [int(w) for w in args.workers.split(",")]
    for round_no in range(1, args.rounds + 1):
        for layer in args.layers.split(","):
            for n in workers:
                overrides = {"HTTPServer": layer, "Workers": n, **json.loads(args.config)}
                tag = f"{layer}" if n == 1 else f"{layer}, Workers {n}"
                if args.rounds > 1:
                    tag += f", round {round_no}"
                for case in args.cases.split(","):
                    got = gateway_case(work, case, overrides, tag, run)
                    rows.append(got["row"])
                    behind.append(got["behind"])
                    if n > 1:
                        split.append(got["split"])
                        threads.append(got["threads"])
                    r, answered, stored, cpu = got["row"][1:]
                    rounds.append(
                        dict(
                            round=round_no,
                            layer=layer,
                            case=case,
                            workers=n,
                            per_s=stored / r.seconds,
                            cpu=cpu.total * 1e6 / max(1, stored),
                        )
                    )

    out = []
    for name, r, answered, stored, cpu in rows:
        per_s = (stored if stored is not None else answered) / r.seconds
        events = stored if stored is not None else answered
        out.append(
            [
                name,
                r.rps,
                r.latency_p50_ms,
                r.latency_p99_ms,
                answered,
                "-" if stored is None else stored,
                "-" if stored is None else max(0, answered - stored),
                per_s,
                per_s / (a.ok / a.seconds),
                per_s / (b.ok / b.seconds),
                "-" if cpu is None else cpu.main * 1e6 / max(1, r.requests),
                "-" if cpu is None else cpu.total * 1e6 / max(1, events),
            ]
        )
    print(
        table(
            [
                "case",
                "req/s",
                "p50 ms",
                "p99 ms",
                "events 2xx",
                "events stored",
                "2xx not stored",
                "events/s",
                "vs (a)",
                "vs (b)",
                "main-thread CPU us/req",
                "process CPU us/event",
            ],
            out,
        )
    )
    if split:
        print()
        print(
            table(
                [
                    "case",
                    "workers CPU us/event",
                    "busiest worker's share",
                    "store process CPU us/event",
                    "supervisor",
                ],
                split,
            )
        )
    if threads:
        print()
        print(table(["case", *(f"store: {k} us/event" for k in STORE_THREADS)], threads))
    print()
    print(
        table(
            [
                "case",
                "events 2xx",
                "rows stored when the load stopped",
                "% behind",
                "s until all stored",
            ],
            behind,
        )
    )
    comparison = against_one_worker(rounds)
    if comparison:
        print()
        print(
            table(
                [
                    "events stored/s and tree CPU per event",
                    "rounds",
                    "events/s ratio per round",
                    "median",
                    "CPU/event change per round",
                    "median",
                ],
                comparison,
            )
        )
    print(f"\n{args.connections} connections, {args.seconds}s per case, wrk on the same machine.")
    print(
        "events/s counts stored rows for the gateway. Stored may exceed 2xx: requests in flight "
        "when wrk stops are stored, but wrk never reads their answers."
    )


if __name__ == "__main__":
    main()
