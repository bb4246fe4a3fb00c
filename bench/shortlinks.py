"""Short-link redirects/s vs a bare Twisted resource answering a 302, in one run.

    /work/venv/bin/python bench/shortlinks.py [--seconds 10] [--connections 50]

(a) a bare twisted.web resource that answers every request with a 302 and a Location (no
access log): the ceiling for one CPython process; (b) the gateway serving a short link (302,
the click built as an event and handed to the intake, batched into the store); (c) the gateway
answering an unknown slug on a link host (404, no store query); (d) ``/tr/v1/rdr/?url=`` to an
allowed host; (b)-(d) once per ``--layers`` value of ``HTTPServer`` (``twisted``: twisted.web's
HTTPChannel; ``fast``: edge/http.py). After (b) the ``short_rdr`` events in the store are counted: every redirect
answered must be a stored click. The goal is (b)/(a) >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_process import GatewayProcess, free_port  # noqa: E402

BARE_302 = """
import sys
from twisted.internet import reactor
from twisted.web import resource, server
class Redirect(resource.Resource):
    isLeaf = True
    def render(self, request):
        request.setResponseCode(302)
        request.setHeader(b"location", b"https://example.com/landing")
        request.setHeader(b"cache-control", b"no-store")
        return b""
site = server.Site(Redirect())
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1", backlog=1024)
reactor.run()
"""


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, all its threads included."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, connections: int, host: str | None = None, pid: int = 0) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    if host:
        args += ["-H", f"Host: {host}"]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    requests = int(m.group(1))
    elapsed = float(m.group(2)) * {"s": 1.0, "ms": 0.001, "m": 60.0}[m.group(3)]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_3xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)

    def ms(match) -> float:
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    return {
        "cpu_us": cpu / requests * 1e6 if requests else 0.0,
        "requests": requests,
        "rps": requests / elapsed,
        "p50": ms(p50) if p50 else 0.0,
        "p99": ms(p99) if p99 else 0.0,
        "errors": sum(int(errors.group(i)) for i in (1, 2, 3, 4)) if errors else 0,
        "non_3xx": int(non_3xx.group(1)) if non_3xx else 0,
    }


def create_link(gw: GatewayProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), "account",
         "create", "--org", "bench"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    token = re.search(r"^token:\s*(\S+)", out.stdout, re.M).group(1)
    r = gw.http(
        "POST",
        "/tr/v1/rpi/redirect",
        json_body={"urlfrom": "https://go.bench/spring", "urlto": "https://example.com/landing"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status == 200, r


def stored_clicks(gw: GatewayProcess) -> int:
    """``short_rdr`` rows in the store once the batcher has drained (the count stops moving)."""
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 3:
        n = gw.query("SELECT count() AS n FROM sfpla.events FINAL WHERE ename = 'short_rdr'")
        n = n[0]["n"]
        if n != last:
            last, stable_since = n, time.monotonic()
        time.sleep(0.5)
    return last


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
        return str(v)

    cells = [headers] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--layers", default="twisted,fast", help="HTTPServer values to compare")
    args = parser.parse_args()
    run = {"seconds": args.seconds, "connections": args.connections}
    work = Path(tempfile.mkdtemp(prefix="sfpl-bench-links-"))
    results = {}

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_302, str(port)], start_new_session=True)
    try:
        wait_port(port)
        wrk(f"http://127.0.0.1:{port}/spring", seconds=2, connections=args.connections)
        results["(a) bare Twisted resource, 302"] = wrk(
            f"http://127.0.0.1:{port}/spring", pid=bare.pid, **run
        )
    finally:
        os.killpg(bare.pid, signal.SIGTERM)
        bare.wait(10)

    hits, stored = {}, {}
    for layer in args.layers.split(","):  # the gateway behind each HTTP layer (HTTPServer)
        overrides = {"RedirectAllowHosts": ["example.com"], "HTTPServer": layer}
        with GatewayProcess(work, overrides, name=f"gw-{layer}") as gw:
            create_link(gw)
            url = f"http://127.0.0.1:{gw.port}"
            wrk(f"{url}/spring", seconds=2, connections=args.connections, host="go.bench")
            before = stored_clicks(gw)
            pid = gw.proc.pid
            hit = hits[layer] = wrk(f"{url}/spring", host="go.bench", pid=pid, **run)
            stored[layer] = stored_clicks(gw) - before
            results[f"(b) gateway short link, 302 + click [{layer}]"] = hit
            results[f"(c) gateway unknown slug, 404 [{layer}]"] = wrk(
                f"{url}/nope", host="go.bench", pid=pid, **run
            )
            results[f"(d) gateway /tr/v1/rdr/?url=, 302 [{layer}]"] = wrk(
                f"{url}/tr/v1/rdr/?url=https%3A%2F%2Fexample.com%2Fa", pid=pid, **run
            )

    bare = results["(a) bare Twisted resource, 302"]
    rows = [
        [name, r["rps"], r["rps"] / bare["rps"], r["cpu_us"], bare["cpu_us"] / r["cpu_us"],
         r["p50"], r["p99"], r["errors"]]
        for name, r in results.items()
    ]  # fmt: skip
    headers = ["case", "req/s", "vs (a)", "CPU us/req", "capacity vs (a)", "p50 ms", "p99 ms",
               "socket errors"]  # fmt: skip
    print(table(headers, rows))
    for layer, hit in hits.items():
        answered = hit["requests"] - hit["non_3xx"]
        n = stored[layer]
        print(
            f"\n[{layer}] short-link redirects answered in (b): {answered}, clicks stored: {n}"
            f" ({'none missing' if n >= answered else 'MISSING ' + str(answered - n)};"
            " wrk does not count requests still in flight when it stops)"
        )
        print(
            f"[{layer}] ratio short link / bare 302: {hit['rps'] / bare['rps']:.2f} in req/s, "
            f"{bare['cpu_us'] / hit['cpu_us']:.2f} in CPU per request (goal >= 0.80)"
        )


if __name__ == "__main__":
    main()
