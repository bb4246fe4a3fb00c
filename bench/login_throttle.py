"""What a flood of wrong admin-API logins costs, with and without the login throttle, in one run.

    /work/venv/bin/python bench/login_throttle.py [--seconds 10] [--connections 20]

wrk posts wrong credentials (``/tr/v1/rpi/redirect/{uid}/guess``) from one address:
(a) ``LoginFailureLimit: 0`` (throttle off): every request runs a scrypt check and gets 401;
(b) the default throttle: ten checks, then every request gets 429 without a check.
Columns: requests/s, the gateway's CPU time per request (all threads: scrypt runs on the
reactor's thread pool), and the password checks it ran (``sfpl_rpi_password_checks_total``).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import uuid
from pathlib import Path

from common import CpuMeter, GatewayProcess, table, wrk

WRONG_LOGIN = """
wrk.method = "POST"
wrk.body = '{"urlfrom": "bench.test/a", "urlto": "https://example.com/"}'
wrk.headers["Content-Type"] = "application/json"
"""


def checks(gw: GatewayProcess) -> int:
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    return int(float(re.search(r"^sfpl_rpi_password_checks_total (\S+)$", text, re.M).group(1)))


def run_case(work: Path, name: str, limit: int, seconds: int, connections: int) -> list:
    with GatewayProcess(work, {"LoginFailureLimit": limit}, name=name) as gw:
        url = f"http://127.0.0.1:{gw.port}/tr/v1/rpi/redirect/{uuid.uuid4()}/guess"
        before = checks(gw)
        meter = CpuMeter(gw.proc.pid).start()
        result = wrk(url, seconds=seconds, connections=connections, threads=1, script=WRONG_LOGIN)
        meter.stop()
        ran = checks(gw) - before
    per_request_us = meter.total / max(1, result.requests) * 1e6
    return [name, result.rps, per_request_us, ran, result.latency_p50_ms, result.latency_p99_ms]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            run_case(Path(tmp), "(a) throttle off, 401", 0, args.seconds, args.connections),
            run_case(Path(tmp), "(b) throttle on, 429", 10, args.seconds, args.connections),
        ]
    base_rps, base_cpu = rows[0][1], rows[0][2]
    out = []
    for name, rps, cpu, ran, p50, p99 in rows:
        out.append([name, rps, rps / base_rps, cpu, cpu / base_cpu, ran, p50, p99])
    print(
        table(
            ["case", "req/s", "vs (a)", "CPU us/req", "vs (a)", "checks run", "p50 ms", "p99 ms"],
            out,
        )
    )


if __name__ == "__main__":
    main()
