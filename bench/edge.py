"""Edge benchmark: reverse proxy and static files, sfpltracker vs nginx, in one run.

    /work/venv/bin/python bench/edge.py [--seconds 10] [--connections 50] [--nginx-workers 1]
        [--layers twisted,fast]

Servers, all on 127.0.0.1 with free ports, stopped at the end:
- upstream: nginx (1 worker) answering ``/api/hello`` with a 6-byte body — the same
  upstream for both proxies (``proxy POST`` sends it a 120-byte JSON body, wrk's Lua script);
- nginx: ``proxy_pass`` to it (keep-alive upstream connections) and a static root;
- sfpltracker: a real gateway process (``twistd``) whose ``Sites`` has the same proxy route
  and the same static root, once per ``--layers`` value of ``HTTPServer`` (``twisted``:
  twisted.web's HTTPChannel; ``fast``: edge/http.py).
``reference: GET /ping`` is a fixed 4-byte answer on both (the gateway's ops route), to show
what one CPython process can do at all. Each case is measured with wrk (2 threads, 50 connections) after a 2 s warm-up. Neither
server writes an access log. The gateway is one CPython process; nginx runs
``--nginx-workers`` workers (default 1, so the ratio compares one process with one).
Numbers on a shared 2-core machine are noisy: compare the rows of one run.
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
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_process import GatewayProcess, free_port  # noqa: E402

POST_BODY = '{"ename":"bench","etyp":"post","vid":"' + "0" * 36 + '","params":{"n":1}}' + " " * 27
PAGE = (b"<!doctype html><title>bench</title>\n" + b"<p>" + b"x" * 60 + b"</p>\n" * 60)[:4096]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Nginx:
    """nginx in the foreground with a private config (``servers`` are server blocks)."""

    def __init__(self, workdir: Path, name: str, servers: str, workers: int = 1):
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        user = "user root;" if os.geteuid() == 0 else ""  # workers must read the temp dirs
        conf = textwrap.dedent(
            f"""
            {user}
            worker_processes {workers};
            daemon off;
            pid {self.dir}/nginx.pid;
            error_log {self.dir}/error.log;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {self.dir}/body;
                proxy_temp_path {self.dir}/proxy;
                fastcgi_temp_path {self.dir}/fastcgi;
                uwsgi_temp_path {self.dir}/uwsgi;
                scgi_temp_path {self.dir}/scgi;
                include /etc/nginx/mime.types;
                {servers}
            }}
            """
        )
        (self.dir / "nginx.conf").write_text(conf)
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def wrk(
    url: str, seconds: int, connections: int, script: str | None = None
) -> tuple[float, float, int]:
    """(requests/s, p99 latency ms, non-2xx + socket errors) of one wrk run."""
    extra = ["-s", script] if script else []
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = int(bad.group(1)) if bad else 0
    failures += sum(int(errors.group(i)) for i in (1, 2, 3, 4)) if errors else 0
    return rps, p99_ms, failures


def measure(url: str, seconds: int, connections: int, script: str | None = None):
    # warm-up: connections, caches, the JIT-less interpreter's dicts
    wrk(url, 2, connections, script)
    return wrk(url, seconds, connections, script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--layers", default="twisted,fast", help="HTTPServer values to compare")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (.ci/install-servers.sh)")

    work = Path(tempfile.mkdtemp(prefix="sfpl-bench-edge-"))
    os.chmod(work, 0o755)
    static_root = work / "www"
    static_root.mkdir()
    (static_root / "page.html").write_bytes(PAGE)
    post = work / "post.lua"
    post.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = '{POST_BODY}'\n"
    )
    up_port, nginx_port = free_port(), free_port()

    upstream = Nginx(
        work,
        "upstream",
        f"""server {{ listen 127.0.0.1:{up_port};
                     location / {{ default_type text/plain; return 200 "hello\\n"; }} }}""",
    )
    proxy = Nginx(
        work,
        "nginx",
        f"""upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
            server {{ listen 127.0.0.1:{nginx_port};
                     location /api/ {{ proxy_pass http://up; proxy_http_version 1.1;
                                      proxy_set_header Connection "";
                                      proxy_set_header X-Forwarded-For $remote_addr; }}
                     location = /ping {{ default_type text/plain; return 200 "pong"; }}
                     location / {{ root {static_root}; add_header Cache-Control "public, max-age=60"; }}
            }}""",
        workers=args.nginx_workers,
    )
    layers = args.layers.split(",")
    config = {
        "Sites": {
            "*": {
                "Root": str(static_root),
                "Proxy": {"/api/": f"http://127.0.0.1:{up_port}"},
                "CacheControl": "public, max-age=60",
            }
        },
        "MaxConnections": 100000,
    }
    cases = [
        ("proxy GET (6 B answer)", "/api/hello", None),
        ("proxy POST (120 B body)", "/api/hello", str(post)),
        ("static file (4 KiB html)", "/page.html", None),
        # The ceiling of one CPython process: a fixed answer, no file, no upstream.
        ("reference: GET /ping", "/ping", None),
    ]
    nginx_results, results = {}, {}
    try:
        with upstream, proxy:
            wait_port(up_port)
            wait_port(nginx_port)
            for name, path, script in cases:
                url = f"http://127.0.0.1:{nginx_port}{path}"
                nginx_results[name] = measure(url, args.seconds, args.connections, script)
            # The gateway behind each HTTP layer (HTTPServer), one process at a time.
            for layer in layers:
                overrides = {**config, "HTTPServer": layer}
                with GatewayProcess(work, overrides, name=f"gateway-{layer}") as gateway:
                    for name, path, script in cases:
                        url = f"http://127.0.0.1:{gateway.port}{path}"
                        results[layer, name] = measure(url, args.seconds, args.connections, script)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nwrk -t2 -c{args.connections} -d{args.seconds}s; nginx {args.nginx_workers} worker(s), "
        "sfpltracker 1 process per HTTPServer layer; same upstream (nginx, 1 worker)\n"
    )
    header = f"{'case':<26}{'nginx req/s':>13}"
    for layer in layers:
        header += f"{layer + ' req/s':>15}{'ratio':>8}{'p99':>9}{'err':>6}"
    header += f"{'nginx p99':>11}"
    print(header)
    print("-" * len(header))
    for name, _, _ in cases:
        n_rps, n_p99, n_bad = nginx_results[name]
        line = f"{name:<26}{n_rps:>13,.0f}"
        for layer in layers:
            g_rps, g_p99, g_bad = results[layer, name]
            line += f"{g_rps:>15,.0f}{g_rps / n_rps:>7.2f}x{g_p99:>7.1f}ms{g_bad:>6}"
        line += f"{n_p99:>9.1f}ms"
        print(line)
    print("\ngoal: ratio >= 0.40x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
