"""Ingestion throughput: gateway vs nginx empty_gif vs a bare Twisted resource, in one run.

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 50]

(a) nginx `empty_gif` with an access log, (b) a bare twisted.web resource returning the GIF,
(c) the gateway's GET REST-path tracking, (d) JSON POST batches of 20 events; (c) and (d) once
per ``--layers`` (``HTTPServer``: ``twisted``, twisted.web's HTTPChannel; ``fast``, edge/http.py). For (c) and (d)
the rows in `sfpla.events` are counted after the run, so the table shows events *stored* per
second and how many 2xx-answered events are missing from the store (must be 0).

CPU columns (from ``/proc``, so less noisy than req/s on a shared machine): microseconds of
the server's main thread per request during the wrk run (for the gateway: the reactor thread,
where HTTP and the per-request Python work run), and of the whole process per event from the
start of the run until the events are stored (for the gateway: reactor + spool writer +
loader + chDB inserts).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import BareTwisted, CpuMeter, GatewayProcess, Nginx, table, wrk

BATCH = 20


def count_events(gw: GatewayProcess) -> int:
    """Rows stored, after the batcher has drained (waits until the count stops moving)."""
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 3:
        n = gw.query("SELECT count() AS n FROM sfpla.events FINAL")[0]["n"]
        if n != last:
            last, stable_since = n, time.monotonic()
        time.sleep(0.5)
    return last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--layers", default="twisted,fast", help="HTTPServer values to measure the gateway with"
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

    body = json.dumps([{"ename": "bench", "etyp": "batch", "n": i} for i in range(BATCH)])
    script = (
        f"wrk.method = 'POST'\nwrk.body = {json.dumps(body)}\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
    )
    # Each gateway case behind twisted.web's HTTPChannel and behind edge/http.py.
    for layer in args.layers.split(","):
        overrides = {"HTTPServer": layer}
        with GatewayProcess(work, overrides, name=f"gw-get-{layer}") as gw:
            cpu = CpuMeter(gw.proc.pid).start()
            path = "/tr/v1/tr/ename/page_view/etyp/view/app/bench"
            c = wrk(f"http://127.0.0.1:{gw.port}{path}", **run)
            main = cpu.stop().main  # the reactor thread during the run
            stored = count_events(gw)
            cpu.stop()  # the whole process, until the events are stored
            cpu.main = main
            rows.append([f"(c) gateway GET REST path [{layer}]", c, c.ok, stored, cpu])

        with GatewayProcess(work, overrides, name=f"gw-post-{layer}") as gw:
            cpu = CpuMeter(gw.proc.pid).start()
            d = wrk(f"http://127.0.0.1:{gw.port}/tr/v1/tr/", script=script, **run)
            main = cpu.stop().main
            stored = count_events(gw)
            cpu.stop()
            cpu.main = main
            rows.append([f"(d) POST batches of {BATCH} [{layer}]", d, d.ok * BATCH, stored, cpu])

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
    print(f"\n{args.connections} connections, {args.seconds}s per case, wrk on the same machine.")
    print(
        "events/s counts stored rows for the gateway. Stored may exceed 2xx: requests in flight "
        "when wrk stops are stored, but wrk never reads their answers."
    )


if __name__ == "__main__":
    main()
