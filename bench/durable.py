"""What durability costs: the spool (fsync before the answer) vs the in-memory intake, one run.

    /work/venv/bin/python bench/durable.py [--seconds 10] [--connections 50] [--rounds 1]

Both gateways get the same wrk load (GET REST-path tracking, one event per request, and JSON
POST batches of 20 events) at the same concurrency, in alternating order. After each case the
rows in ``sfpla.events`` are counted, so the table also shows acknowledged events missing from
the store (must be 0), and for the spool how many events shared one fsync.
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

from tests.gateway_process import GatewayProcess  # noqa: E402

GET_PATH = "/tr/v1/tr/ename/page_view/etyp/view/app/bench"
BATCH = 20


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    args = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    tmp = None
    if script:
        fd, tmp = tempfile.mkstemp(suffix=".lua")
        os.write(fd, script.encode())
        os.close(fd)
        args += ["-s", tmp]
    try:
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    finally:
        if tmp:
            os.unlink(tmp)
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
    secs = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def pct(p: str) -> float:
        v = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out)
        return float(v.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[v.group(2)] if v else 0

    requests = int(m.group(1))
    bad = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(errors.group(i)) for i in (1, 2, 3)) if errors else 0
    )
    return {
        "rps": requests / secs,
        "ok": requests - bad,
        "bad": bad,
        "p50": pct("50"),
        "p99": pct("99"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored_events(gw: GatewayProcess) -> int:
    """Rows stored once everything acknowledged has drained (the count stops moving)."""
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 3:
        n = gw.query("SELECT count() AS n FROM sfpla.events FINAL")[0]["n"]
        if n != last:
            last, stable_since = n, time.monotonic()
        time.sleep(0.5)
    return last


def run_case(work: Path, mode: str, kind: str, seconds: int, connections: int) -> dict:
    with GatewayProcess(work, {"Durability": mode}, name=f"{mode}-{kind}-{time.time_ns()}") as gw:
        if kind == "GET":
            url, script, per_request = f"http://127.0.0.1:{gw.port}{GET_PATH}", None, 1
        else:
            body = json.dumps([{"ename": "bench", "etyp": "batch", "n": i} for i in range(BATCH)])
            script = (
                f"wrk.method = 'POST'\nwrk.body = {json.dumps(body)}\n"
                "wrk.headers['Content-Type'] = 'application/json'\n"
            )
            url, per_request = f"http://127.0.0.1:{gw.port}/tr/v1/tr/", BATCH
        wrk(url, 2, connections, script)  # warm-up (not measured)
        before = stored_events(gw)
        health = gw.http("GET", "/health").json()["spool"]
        commits_before = health.get("commits", 0)
        cpu_before = cpu_seconds(gw.proc.pid)
        result = wrk(url, seconds, connections, script)
        stored = stored_events(gw) - before
        # Includes loading into the store after wrk stopped: the whole cost of each event.
        cpu = cpu_seconds(gw.proc.pid) - cpu_before
        spool = gw.http("GET", "/health").json()["spool"]
        commits = spool.get("commits", 0) - commits_before
        acked = result["ok"] * per_request
        result.update(
            mode=mode,
            kind=kind,
            events_per_s=result["rps"] * per_request,
            missing=max(0, acked - stored),
            per_fsync=acked / commits if commits else None,
            cpu_ms_per_1k=cpu * 1e6 / stored if stored else 0.0,
            fsync_ms=spool.get("fsync", {}).get("avg_ms"),
        )
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kinds", default="GET,POST")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sfpl-durable-"))
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for kind in args.kinds.split(","):
            for r in range(args.rounds):
                order = ("memory", "spool") if r % 2 == 0 else ("spool", "memory")
                for mode in order:
                    res = run_case(work, mode, kind, args.seconds, args.connections)
                    results.setdefault((kind, mode), []).append(res)
                    print(
                        f"  {kind} {mode}: {res['rps']:,.0f} req/s p50 {res['p50']:.2f} ms "
                        f"p99 {res['p99']:.2f} ms",
                        file=sys.stderr,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nwrk -t2 -c{args.connections} -d{args.seconds}s, {args.rounds} round(s), "
        f"median per case\n"
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
    for (kind, mode), runs in results.items():
        m = _median_run(runs)
        rows.append(
            [
                "GET 1 event" if kind == "GET" else f"POST {BATCH} events",
                "spool (fsync)" if mode == "spool" else "memory",
                f"{m['rps']:,.0f}",
                f"{m['events_per_s']:,.0f}",
                f"{m['p50']:.2f}",
                f"{m['p99']:.2f}",
                str(sum(x["missing"] for x in runs)),
                f"{m['per_fsync']:.1f}" if m["per_fsync"] else "-",
                f"{m['fsync_ms']:.2f}" if m["fsync_ms"] is not None else "-",
                f"{_median([x['cpu_ms_per_1k'] for x in runs]):.0f}",
            ]
        )
    print(_table(head, rows))
    print()
    for kind in args.kinds.split(","):
        mem, spool = results.get((kind, "memory")), results.get((kind, "spool"))
        if mem and spool:
            a, b = _median_run(mem), _median_run(spool)
            ratio = b["rps"] / a["rps"] if a["rps"] else 0
            cpu_a = _median([x["cpu_ms_per_1k"] for x in mem])
            cpu_b = _median([x["cpu_ms_per_1k"] for x in spool])
            print(
                f"{kind}: spool/memory throughput = {ratio:.2f} "
                f"(durability costs {100 * (1 - ratio):.0f}% of throughput; goal < 20%), "
                f"p99 {b['p99']:.2f} vs {a['p99']:.2f} ms; gateway CPU per event "
                f"spool/memory = {cpu_b / cpu_a:.2f}"
                if cpu_a
                else ""
            )


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
