"""Where the tail of GET tracking comes from: slow requests lined up with what each process did.

    .venv/bin/python bench/stalls.py [--workers 2] [--rate 1950] [--seconds 8] [--slow-ms 15]

Runs one gateway (``Workers`` as given) with ``bench/stallprobe/sitecustomize.py`` loaded into
every process (reactor lateness, GC collections, chDB inserts, slow group commits: see there),
sends GET tracking with Debian's ``hey -o csv`` (each request's start and time), and samples
every thread's ``/proc/<pid>/task/<tid>/schedstat`` (CPU time and run-queue wait, in ns) every
``--sample-ms``. Then it prints the latency percentiles, a summary of each kind of event, and
for each episode of slow requests (over ``--slow-ms``, overlapping ones merged) what overlapped
it: reactor lateness per process, GC, inserts, commits, and the threads that used the CPUs
(and waited for one) in that window. Times are relative to hey's start.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import io
import json
import os
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from common import GatewayProcess, all_up, process_tree

PATH = "/tr/v1/tr/ename/page_view/etyp/view/app/bench"
PROBE = Path(__file__).resolve().parent / "stallprobe"


class SchedSampler(threading.Thread):
    """Every thread of a process tree: (time, pid, tid, name, run ns, wait ns) samples."""

    def __init__(self, root_pid: int, period: float):
        super().__init__(daemon=True)
        self.root_pid, self.period = root_pid, period
        self.samples: list[tuple[float, int, int, str, int, int]] = []
        self.stopping = threading.Event()
        self.names: dict[tuple[int, int], str] = {}
        self.extra_pids: list[int] = []  # sampled too (hey)

    def _tasks(self) -> list[tuple[int, int]]:
        out = []
        for pid in [*process_tree(self.root_pid), *self.extra_pids]:
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    out.append((pid, int(tid)))
            except FileNotFoundError:
                continue
        return out

    def run(self) -> None:
        tasks, listed = [], 0.0
        while not self.stopping.is_set():
            now = time.time()
            if now - listed > 0.5:  # chDB's pools start and end threads
                tasks, listed = self._tasks(), now
            for pid, tid in tasks:
                key = (pid, tid)
                try:
                    if key not in self.names:
                        with open(f"/proc/{pid}/task/{tid}/comm") as f:
                            self.names[key] = f.read().strip()
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        run, wait, _ = f.read().split()
                except (FileNotFoundError, ProcessLookupError, ValueError):
                    continue
                self.samples.append((now, pid, tid, self.names[key], int(run), int(wait)))
            self.stopping.wait(self.period)


def per_thread_in(series, start: float, end: float) -> dict[tuple[int, int, str], list[float]]:
    """(pid, tid, name) -> [CPU ms, run-queue wait ms] from the last sample at or before
    ``start`` to the first at or after ``end`` (so a window is widened by up to a period)."""
    out = {}
    for key, points in series.items():
        times = [p[0] for p in points]
        i = max(0, bisect.bisect_right(times, start) - 1)
        j = min(len(points) - 1, bisect.bisect_left(times, end))
        (_, run0, wait0), (_, run1, wait1) = points[i], points[j]
        out[key] = [(run1 - run0) / 1e6, (wait1 - wait0) / 1e6]
    return out


def by_thread(samples) -> dict[tuple[int, int, str], list[tuple[float, int, int]]]:
    series: dict[tuple[int, int, str], list[tuple[float, int, int]]] = defaultdict(list)
    for t, pid, tid, name, run, wait in samples:
        series[(pid, tid, name)].append((t, run, wait))
    return series


def run_hey(url: str, rate: int, seconds: int, connections: int, sampler) -> tuple[float, list]:
    """hey's requests as (start time, ms, status); hey's own threads are sampled too (it
    shares the CPUs). hey -q paces each connection with its own ticker, all started at once:
    the requests come in bursts of ``connections`` every ``connections / rate`` seconds."""
    per = max(1, round(rate / connections))
    t0 = time.time()
    proc = subprocess.Popen(
        ["hey", "-z", f"{seconds}s", "-c", str(connections), "-q", str(per), "-o", "csv", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    sampler.extra_pids.append(proc.pid)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"hey failed ({proc.returncode})")
    rows = []
    for r in csv.DictReader(io.StringIO(out)):
        took, offset = float(r["response-time"]), float(r["offset"])
        rows.append((t0 + offset, took * 1000, int(r["status-code"])))
    return t0, rows


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


def load_events(directory: Path) -> list[dict]:
    events = []
    for path in directory.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut by the process's end
    return events


def episodes(rows, slow_ms: float, gap: float = 0.002) -> list[tuple[float, float, int, float]]:
    """(start, end, slow requests, worst ms) of runs of overlapping slow requests."""
    slow = sorted((s, s + ms / 1000, ms) for s, ms, _ in rows if ms > slow_ms)
    out: list[list] = []
    for s, e, ms in slow:
        if out and s <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], e)
            out[-1][2] += 1
            out[-1][3] = max(out[-1][3], ms)
        else:
            out.append([s, e, 1, ms])
    return [tuple(x) for x in out]  # type: ignore[misc]


def overlapping(events, start: float, end: float):
    return [ev for ev in events if ev["t"] < end and ev["t"] + ev.get("ms", 0) / 1000 > start]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1950)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--slow-ms", type=float, default=15.0)
    parser.add_argument("--stall-ms", type=float, default=3.0, help="reactor lateness logged")
    parser.add_argument("--sample-ms", type=float, default=10.0, help="schedstat sampling")
    parser.add_argument("--episodes", type=int, default=12, help="worst episodes shown")
    parser.add_argument("--layer", default="fast")
    parser.add_argument("--no-wait", action="store_true", help="start before all processes are up")
    parser.add_argument("--config", default="{}", help="JSON overrides of the gateway config")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sfpl-stalls-"))
    probe_dir = work / "probe"
    probe_dir.mkdir()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROBE), os.environ.get("PYTHONPATH", "")) if p
    )
    os.environ["SFPL_STALL_PROBE"] = str(probe_dir)
    os.environ["SFPL_STALL_MS"] = str(args.stall_ms)
    config = {"HTTPServer": args.layer, "Workers": args.workers, **json.loads(args.config)}

    with GatewayProcess(work, config, name="gw") as gw:
        if not args.no_wait:
            all_up(gw)
        sampler = SchedSampler(gw.proc.pid, args.sample_ms / 1000)
        sampler.start()
        url = f"http://127.0.0.1:{gw.port}{PATH}"
        t0, rows = run_hey(url, args.rate, args.seconds, args.connections, sampler)
        sampler.stopping.set()
        sampler.join()
        t_end = time.time()
    events = [
        ev for ev in load_events(probe_dir) if t0 <= ev["t"] <= t_end and ev["kind"] != "probe"
    ]
    roles = {ev["pid"]: ev["role"] for ev in load_events(probe_dir)}
    roles.update({pid: "hey" for pid in sampler.extra_pids})

    times = [ms for _, ms, _ in rows]
    print(
        f"hey: {len(rows)} requests ({len(rows) / args.seconds:.0f}/s), non-2xx "
        f"{sum(1 for *_, c in rows if not 200 <= c < 300)}, p50 {pct(times, 50):.1f} ms, "
        f"p90 {pct(times, 90):.1f}, p99 {pct(times, 99):.1f}, max {max(times):.1f}; "
        f"over {args.slow_ms:g} ms: {sum(1 for m in times if m > args.slow_ms)}"
    )

    print("\nprobe events during the run (ms: count / sum / max):")
    summary: dict[tuple[str, str], list[float]] = defaultdict(list)
    for ev in events:
        label = ev["kind"] + (f" gen{ev['gen']}" if ev["kind"] == "gc" else "")
        summary[(ev["role"], label)].append(ev["ms"])
    for (role, label), values in sorted(summary.items()):
        print(f"  {role:22} {label:12} {len(values):5d} / {sum(values):8.1f} / {max(values):7.1f}")

    series = by_thread(sampler.samples)
    whole = per_thread_in(series, t0, t_end)
    procs: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (pid, tid, _), (cpu, wait) in whole.items():
        label = f"{roles.get(pid, pid)}" + (" main" if pid == tid else " others")
        procs[label][0] += cpu
        procs[label][1] += wait
    print("\nper process over the run (CPU ms / run-queue wait ms; main thread, other threads):")
    for label, (cpu, wait) in sorted(procs.items()):
        print(f"  {label:30} {cpu:8.1f} / {wait:7.1f}")
    print("\nthreads over the run (CPU ms / run-queue wait ms), busiest first:")
    for (pid, _tid, name), (cpu, wait) in sorted(whole.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"  {roles.get(pid, pid)!s:22} {name:16} {cpu:8.1f} / {wait:7.1f}")

    eps = episodes(rows, args.slow_ms)
    slow_total = sum(n for _, _, n, _ in eps)
    explained: dict[str, int] = defaultdict(int)
    for s, e, n, _ in eps:
        kinds = {ev["kind"] for ev in overlapping(events, s, e)}
        for k in kinds:
            explained[k] += n
        if not kinds:
            explained["nothing logged"] += n
    print(
        f"\n{len(eps)} episodes of {slow_total} slow requests; slow requests whose episode "
        "overlapped each kind of probe event: "
        + ", ".join(f"{k} {v}" for k, v in sorted(explained.items()))
    )

    for s, e, n, worst in sorted(eps, key=lambda x: -x[3])[: args.episodes]:
        print(f"\n[{s - t0:7.3f} s .. {e - t0:7.3f} s] {n} slow requests, worst {worst:.1f} ms")
        for ev in sorted(overlapping(events, s, e), key=lambda ev: ev["t"]):
            extra = {k: v for k, v in ev.items() if k not in ("kind", "pid", "role", "t", "ms")}
            print(
                f"    {ev['t'] - t0:7.3f} s {ev['role']:22} {ev['kind']:7} {ev['ms']:7.1f} ms "
                f"{json.dumps(extra)[:90]}"
            )
        busy = per_thread_in(series, s, e)
        top = sorted(busy.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:6]
        cells = [
            f"{roles.get(p, p)}/{name} {cpu:.0f}/{wait:.0f}"
            for (p, _, name), (cpu, wait) in top
            if cpu + wait >= 1
        ]
        print(f"    threads (CPU/wait ms, ±{args.sample_ms:g} ms): " + "; ".join(cells))


if __name__ == "__main__":
    main()
