"""What durability costs: the spool (fsync before the answer) vs the in-memory intake, one run.

    /work/venv/bin/python bench/durable.py [--seconds 10] [--connections 50] [--rounds 2]
                                           [--kinds GET,POST] [--sequential]

Two gateways on the embedded store, one with ``Durability: "spool"`` (the default: every 2xx
after a group-committed fdatasync), one with ``Durability: "memory"`` (2xx once queued in RAM),
get the same wrk load at the same concurrency: GET REST-path tracking (one event per request)
and JSON POST batches of 20 events.

By default both gateways are loaded *at the same time* (one wrk each), so the background load
of a shared machine hits both alike and the ratio compares like with like; ``--sequential``
runs them one after the other instead (alternating order per round). After each case the rows
in ``sfpla.events`` are counted: "2xx not stored" must be 0. For the spool the table shows how
many events shared one fsync and the write + fdatasync time; "CPU ms/1k events" is the gateway
process's CPU time (all threads, loading into chDB included) per 1,000 events stored.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import check_wrk_stderr  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402

GET_PATH = "/tr/v1/tr/ename/page_view/etyp/view/app/bench"
BATCH = 20
MODES = ("memory", "spool")


# -- wrk -----------------------------------------------------------------------------------


class Wrk:
    """One wrk run in the background; ``result()`` waits and parses its report."""

    def __init__(self, url: str, seconds: int, connections: int, script: str | None):
        if shutil.which("wrk") is None:
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
        self.script = None
        if script:
            fd, self.script = tempfile.mkstemp(suffix=".lua")
            os.write(fd, script.encode())
            os.close(fd)
            args += ["-s", self.script]
        self.proc = subprocess.Popen(
            [*args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self) -> dict:
        out, err = self.proc.communicate()
        check_wrk_stderr(err)
        if self.script:
            os.unlink(self.script)
        m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
        secs = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", out)
        requests = int(m.group(1))
        bad = (int(non2xx.group(1)) if non2xx else 0) + (
            sum(int(errors.group(i)) for i in (1, 2, 3)) if errors else 0
        )

        def pct(p: str) -> float:
            v = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out)
            return float(v.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[v.group(2)] if v else 0

        return {"rps": requests / secs, "ok": requests - bad, "p50": pct("50"), "p99": pct("99")}


# -- a gateway under test ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored_events(gw: GatewayProcess) -> int:
    """Rows stored once everything acknowledged has drained (the count stops moving)."""
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 3:  # longer than the 2 s batching delay
        n = gw.query("SELECT count() AS n FROM sfpla.events FINAL")[0]["n"]
        if n != last:
            last, stable_since = n, time.monotonic()
        time.sleep(0.4)
    return last


class Target:
    """A gateway with one durability mode and the load for one kind of request."""

    def __init__(self, work: Path, mode: str, kind: str):
        self.mode, self.kind = mode, kind
        self.gw = GatewayProcess(work, {"Durability": mode}, name=f"{mode}-{kind}").start()
        if kind == "GET":
            self.url, self.script, self.per_request = f"{self._base()}{GET_PATH}", None, 1
        else:
            body = json.dumps([{"ename": "bench", "etyp": "batch", "n": i} for i in range(BATCH)])
            self.script = (
                f"wrk.method = 'POST'\nwrk.body = {json.dumps(body)}\n"
                "wrk.headers['Content-Type'] = 'application/json'\n"
            )
            self.url, self.per_request = f"{self._base()}/tr/v1/tr/", BATCH

    def _base(self) -> str:
        return f"http://127.0.0.1:{self.gw.port}"

    def wrk(self, seconds: int, connections: int) -> Wrk:
        return Wrk(self.url, seconds, connections, self.script)

    def spool(self) -> dict:
        return self.gw.http("GET", "/health").json()["spool"]

    def before(self) -> None:
        self._stored = stored_events(self.gw)
        self._commits = self.spool().get("commits", 0)
        self._cpu = cpu_seconds(self.gw.proc.pid)

    def after(self, run: dict) -> dict:
        stored = stored_events(self.gw) - self._stored
        cpu = cpu_seconds(self.gw.proc.pid) - self._cpu
        spool = self.spool()
        commits = spool.get("commits", 0) - self._commits
        acked = run["ok"] * self.per_request
        return {
            **run,
            "events_per_s": run["rps"] * self.per_request,
            "missing": max(0, acked - stored),
            "per_fsync": acked / commits if commits else None,
            "fsync_ms": spool.get("fsync", {}).get("avg_ms"),
            "cpu_ms_per_1k": cpu * 1e6 / stored if stored else 0.0,
        }

    def stop(self) -> None:
        self.gw.__exit__(None, None, None)


# -- runs ----------------------------------------------------------------------------------


def measure(targets: list[Target], seconds: int, connections: int) -> list[dict]:
    """Load ``targets`` at the same time; one result each."""
    for t in targets:
        t.before()
    runs = [t.wrk(seconds, connections) for t in targets]
    results = [r.result() for r in runs]
    return [t.after(r) for t, r in zip(targets, results, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kinds", default="GET,POST")
    parser.add_argument("--sequential", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sfpl-durable-"))
    results: dict[tuple[str, str], list[dict]] = {}
    kinds = args.kinds.split(",")
    try:
        for kind in kinds:
            targets = {mode: Target(work, mode, kind) for mode in MODES}
            try:
                measure(list(targets.values()), 2, args.connections)  # warm-up
                for r in range(args.rounds):
                    order = MODES if r % 2 == 0 else MODES[::-1]
                    if args.sequential:
                        got = [
                            measure([targets[m]], args.seconds, args.connections)[0] for m in order
                        ]
                    else:
                        got = measure([targets[m] for m in order], args.seconds, args.connections)
                    for mode, res in zip(order, got, strict=True):
                        results.setdefault((kind, mode), []).append(res)
                        print(
                            f"  {kind} {mode}: {res['rps']:,.0f} req/s, p50 {res['p50']:.1f} ms, "
                            f"p99 {res['p99']:.1f} ms",
                            file=sys.stderr,
                        )
            finally:
                for t in targets.values():
                    t.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, kinds, args)


def report(results: dict, kinds: list[str], args) -> None:
    how = "one after the other" if args.sequential else "both at the same time"
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.seconds}s per gateway, {how}, "
        f"{args.rounds} round(s), median per case\n"
    )
    head = [
        "case",
        "intake",
        "req/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "2xx not stored",
        "events/fsync",
        "fsync ms",
        "CPU ms/1k events",
    ]
    rows = []
    for kind in kinds:
        for mode in MODES:
            runs = results.get((kind, mode))
            if not runs:
                continue
            rows.append(
                [
                    "GET 1 event" if kind == "GET" else f"POST {BATCH} events",
                    "spool (fsync)" if mode == "spool" else "memory",
                    f"{_median(runs, 'rps'):,.0f}",
                    f"{_median(runs, 'events_per_s'):,.0f}",
                    f"{_median(runs, 'p50'):.2f}",
                    f"{_median(runs, 'p99'):.2f}",
                    str(sum(x["missing"] for x in runs)),
                    f"{_median(runs, 'per_fsync'):.1f}" if runs[0]["per_fsync"] else "-",
                    f"{_median(runs, 'fsync_ms'):.2f}" if runs[0]["fsync_ms"] is not None else "-",
                    f"{_median(runs, 'cpu_ms_per_1k'):.0f}",
                ]
            )
    print(_table(head, rows))
    print()
    for kind in kinds:
        mem, spool = results.get((kind, "memory")), results.get((kind, "spool"))
        if not (mem and spool):
            continue
        ratios = sorted(s["rps"] / m["rps"] for m, s in zip(mem, spool, strict=True) if m["rps"])
        ratio = ratios[len(ratios) // 2]
        cpu = _median(spool, "cpu_ms_per_1k") / (_median(mem, "cpu_ms_per_1k") or 1)
        print(
            f"{kind}: spool/memory throughput = {ratio:.2f} (per round: "
            f"{', '.join(f'{r:.2f}' for r in ratios)}) -> durability costs "
            f"{100 * (1 - ratio):.0f}% of throughput (goal < 20%); "
            f"gateway CPU per event spool/memory = {cpu:.2f}"
        )


def _median(runs: list[dict], key: str) -> float:
    values = sorted(r[key] for r in runs if r[key] is not None)
    return values[len(values) // 2] if values else 0.0


def _table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
