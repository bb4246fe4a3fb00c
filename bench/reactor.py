"""What Twisted's asyncio reactor (needed for NATS) costs the HTTP API, vs the default epoll one.

    /work/venv/bin/python bench/reactor.py [--seconds 8] [--connections 50] [--rounds 2]

The same gateway (embedded store, no NATS entry, default batching) is started under
``twistd -r epoll`` and ``twistd -r asyncio``; ``wrk`` drives, with 50 keep-alive connections:

* ``GET /ping`` (the HTTP stack and the reactor alone);
* ``POST /tr/v1/tr/`` with a JSON array of 20 events (ingestion; rows reach the store).

The reactors alternate for ``--rounds`` rounds so a noisy neighbour on this shared machine
hits both alike; the table shows the median requests/s of each, the gateway's CPU time per
request (steadier than req/s when neighbours take CPU) and asyncio's ratio to epoll.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import check_wrk_stderr, post_script  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402


def batch_body() -> str:
    events = [
        {
            "ename": "page_view",
            "etyp": "view",
            "url": f"https://shop.example.com/products/{n}?ref=newsletter",
            "app": "shop",
            "vid": "0190aaaa-bbbb-7ccc-8ddd-000000000001",
            "params": {"sku": f"A-{n}", "price": 19.99},
        }
        for n in range(20)
    ]
    return json.dumps(events, separators=(",", ":"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: float, connections: int, script: Path | None) -> tuple[float, int]:
    """(requests/s, non-2xx answers) of one wrk run."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", url]
    if script is not None:
        argv[1:1] = ["-s", str(script)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    check_wrk_stderr(proc.stderr)
    out = proc.stdout
    rate, bad = 0.0, 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
        if line.startswith("Non-2xx or 3xx responses:"):
            bad = int(line.split(":")[1])
    return rate, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="sfpl-bench-reactor-"))
    script = workdir / "post.lua"
    script.write_text(post_script(batch_body()))
    cases = {"GET /ping": ("/ping", None), "POST 20 events": ("/tr/v1/tr/", script)}
    rates: dict[tuple[str, str], list[float]] = {}
    cpu_us: dict[tuple[str, str], list[float]] = {}
    try:
        for round_no in range(args.rounds):
            for reactor in ("epoll", "asyncio"):
                name = f"{reactor}{round_no}"
                with GatewayProcess(workdir, {}, name=name, twistd_args=("-r", reactor)) as gw:
                    log = gw.log_text()
                    expected = "AsyncioSelectorReactor" if reactor == "asyncio" else "EPollReactor"
                    assert expected in log, f"twistd did not run the {reactor} reactor"
                    for case, (path, body) in cases.items():
                        url = f"http://127.0.0.1:{gw.port}{path}"
                        cpu_before = cpu_seconds(gw.proc.pid)
                        rate, bad = wrk(url, args.seconds, args.connections, body)
                        cpu = cpu_seconds(gw.proc.pid) - cpu_before
                        if bad:
                            print(f"{reactor} {case}: {bad} answers not 2xx", file=sys.stderr)
                        rates.setdefault((case, reactor), []).append(rate)
                        per_request = cpu / max(rate * args.seconds, 1) * 1e6
                        cpu_us.setdefault((case, reactor), []).append(per_request)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nwrk, {args.connections} connections, {args.seconds:.0f} s per run, "
        f"{args.rounds} rounds (median)\n"
    )
    print(
        f"{'case':<16} {'epoll req/s':>12} {'asyncio req/s':>14} {'ratio':>6}"
        f" {'epoll CPU us/req':>17} {'asyncio CPU us/req':>19} {'ratio':>6}"
    )
    for case in cases:
        epoll = statistics.median(rates[(case, "epoll")])
        aio = statistics.median(rates[(case, "asyncio")])
        epoll_cpu = statistics.median(cpu_us[(case, "epoll")])
        aio_cpu = statistics.median(cpu_us[(case, "asyncio")])
        print(
            f"{case:<16} {epoll:>12.0f} {aio:>14.0f} {aio / epoll:>5.2f}x"
            f" {epoll_cpu:>17.0f} {aio_cpu:>19.0f} {aio_cpu / epoll_cpu:>5.2f}x"
        )
    print(
        "\nreq/s ratio: asyncio/epoll (lower = slower); CPU ratio: asyncio/epoll (higher = costlier)"
    )


if __name__ == "__main__":
    main()
