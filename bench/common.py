"""Shared pieces of the benchmarks: wrk runs, nginx and bare Twisted baselines, a gateway.

Every server listens on 127.0.0.1 with a free port and is stopped at the end. Numbers on a
shared 2-core machine are noisy: compare the rows of one run, not runs of different days.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer  # noqa: E402

from sfpltracker.pipeline.spool import encode_frame  # noqa: E402
from tests.gateway_process import GatewayProcess, free_port, http_request  # noqa: E402


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    errors: int
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx - self.errors

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def post_script(body: str, content_type: str = "application/json") -> str:
    """A wrk Lua script POSTing ``body``. ``json.dumps`` of ASCII text is a valid Lua string
    literal; a ``[[...]]`` long string is not when the body itself ends in ``]``."""
    return (
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = {json.dumps(content_type)}\n'
        f"wrk.body = {json.dumps(body, ensure_ascii=True)}\n"
    )


def check_wrk_stderr(stderr: str) -> None:
    """wrk reports a broken Lua script on stderr and then runs without it (plain GETs)."""
    if stderr.strip():
        raise RuntimeError(f"wrk: {stderr.strip()[:500]}")


def wrk(
    url: str, seconds: int = 10, connections: int = 50, threads: int = 2, script: str | None = None
) -> WrkResult:
    """Run wrk against ``url``; ``script`` is Lua (e.g. a POST body)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    args = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    tmp = None
    if script:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        tmp.write(script)
        tmp.close()
        args += ["-s", tmp.name]
    try:
        proc = subprocess.run([*args, url], capture_output=True, text=True, check=True)
        check_wrk_stderr(proc.stderr)
        out = proc.stdout
    finally:
        if tmp:
            os.unlink(tmp.name)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    requests, dur, unit = int(m.group(1)), float(m.group(2)), m.group(3)
    seconds_ = dur * {"s": 1.0, "ms": 0.001, "m": 60.0}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    return WrkResult(
        requests=requests,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(errors.group(i)) for i in (1, 2, 3)) if errors else 0,
        seconds=seconds_,
        latency_p50_ms=_ms(*p50.groups()) if p50 else 0.0,
        latency_p99_ms=_ms(*p99.groups()) if p99 else 0.0,
    )


class Nginx:
    """nginx (Debian nginx-light) in the foreground with a private config."""

    def __init__(self, locations: str, workdir: Path):
        self.port = free_port()
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = textwrap.dedent(f"""
            worker_processes auto;
            daemon off;
            pid {self.dir}/nginx.pid;
            error_log {self.dir}/error.log;
            events {{ worker_connections 4096; }}
            http {{
                access_log {self.dir}/access.log;
                client_body_temp_path {self.dir}/body;
                proxy_temp_path {self.dir}/proxy;
                fastcgi_temp_path {self.dir}/fastcgi;
                uwsgi_temp_path {self.dir}/uwsgi;
                scgi_temp_path {self.dir}/scgi;
                server {{
                    listen 127.0.0.1:{self.port};
                    {locations}
                }}
            }}
        """)
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nginx", "-c", str(self.dir / "nginx.conf")],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port)
        return self

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGQUIT)
        self.proc.wait(10)


BARE_TWISTED = """
import sys, base64
from twisted.internet import reactor
from twisted.web import server, resource
GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=")
class Pixel(resource.Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"image/gif")
        return GIF
    render_POST = render_GET
site = server.Site(Pixel())
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1", backlog=1024)
reactor.run()
"""


class BareTwisted:
    """A bare twisted.web resource answering the GIF: the ceiling for one CPython process."""

    def __init__(self):
        self.port = free_port()

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BARE_TWISTED, str(self.port)], start_new_session=True
        )
        _wait_port(self.port)
        return self

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(stat_text: str) -> float:
    """utime + stime of a ``/proc/<pid>/stat`` (or ``.../task/<tid>/stat``) text, in seconds
    (split after the last ")": a thread's name may hold spaces and parentheses)."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds a process used between ``start()`` and ``stop()``, from ``/proc``.

    ``total`` is every thread of the process (for the gateway: the reactor, the spool writer,
    chDB's insert threads); ``main`` is its main thread alone (twisted's reactor thread, where
    HTTP parsing and the per-request Python work run). Linux only.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.total = self.main = 0.0

    def _read(self, path: str) -> float:
        with open(path) as f:
            return stat_cpu_seconds(f.read())

    def _now(self) -> tuple[float, float]:
        return (
            self._read(f"/proc/{self.pid}/stat"),
            self._read(f"/proc/{self.pid}/task/{self.pid}/stat"),
        )

    def start(self) -> CpuMeter:
        self._start = self._now()
        return self

    def stop(self) -> CpuMeter:
        end = self._now()
        self.total = end[0] - self._start[0]
        self.main = end[1] - self._start[1]
        return self


def _wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


__all__ = [
    "BareTwisted",
    "CpuMeter",
    "GatewayProcess",
    "Nginx",
    "WrkResult",
    "http_request",
    "table",
    "wrk",
]


class SerialisingIntake:
    """Serialises records as ``SpoolIntake.accept`` does and acknowledges at once.

    For in-process CPU measurements on a ``MemoryReactorClock``: the durable spool answers
    from its writer thread, which a memory reactor never runs.
    """

    def __init__(self, clock):
        self.clock = clock
        self.records = 0

    def accept(self, records):
        encode_frame(records, int(self.clock.seconds() * 1000))
        self.records += len(records)
        return defer.succeed(None)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (Workers > 1: the supervisor, the store process, workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except FileNotFoundError:
                pass
    return out


class TreeCpu:
    """CPU seconds of a process tree between ``start()`` and ``stop()``, per process too
    (``by_pid``); processes that started or ended meanwhile count from 0 / up to their end."""

    def __init__(self, pid: int):
        self.pid = pid
        self.total = 0.0
        self.by_pid: dict[int, float] = {}
        # (pid, thread name) -> seconds; the main thread is named "main". Threads that ended
        # meanwhile are missing here (chDB's pools come and go) but counted in ``by_pid``.
        self.by_thread: dict[tuple[int, str], float] = {}

    def _read(self) -> dict[int, float]:
        out = {}
        for p in process_tree(self.pid):
            try:
                with open(f"/proc/{p}/stat") as f:
                    out[p] = stat_cpu_seconds(f.read())
            except FileNotFoundError:
                continue
        return out

    def _threads(self, pids) -> dict[tuple[int, int], tuple[str, float]]:
        out = {}
        for p in pids:
            try:
                tids = os.listdir(f"/proc/{p}/task")
            except FileNotFoundError:
                continue
            for t in tids:
                try:
                    with open(f"/proc/{p}/task/{t}/stat") as f:
                        text = f.read()
                except FileNotFoundError:
                    continue
                name = "main" if t == str(p) else text[text.index("(") + 1 : text.rindex(")")]
                out[(p, int(t))] = (name, stat_cpu_seconds(text))
        return out

    def start(self) -> TreeCpu:
        self._start = self._read()
        self._start_threads = self._threads(self._start)
        return self

    def stop(self) -> TreeCpu:
        end = self._read()
        self.by_pid = {p: v - self._start.get(p, 0.0) for p, v in end.items()}
        self.total = sum(self.by_pid.values())
        self.by_thread = {}
        for (p, t), (name, v) in self._threads(end).items():
            used = v - self._start_threads.get((p, t), (name, 0.0))[1]
            self.by_thread[(p, name)] = self.by_thread.get((p, name), 0.0) + used
        return self


def all_up(gw: GatewayProcess, timeout: float = 60) -> list[dict]:
    """Wait until every process of the gateway serves (``/health``'s ``processes``: each with
    a pid and past "starting"), and return them ([] with ``Workers: 1``).
    ``GatewayProcess.start`` returns once one worker answers;
    with ``Workers`` > 1 another may still be starting, and the connections the kernel hashes
    to its socket wait there meanwhile: measured from then, 1% of an 8 s run at 1,950 req/s
    waited ~0.6 s for it, the p99 of the run (docs/performance.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = json.loads(gw.http("GET", "/health").body)
        procs = health.get("processes")
        if procs is None and gw.config.get("Workers") == 1:
            return []
        if procs and all(p["pid"] and p["status"] not in ("starting", "down") for p in procs):
            return procs
        time.sleep(0.1)
    raise RuntimeError("the gateway's processes did not all come up")


@dataclass
class HeyResult:
    requests: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    rps: float


def hey(url: str, rate: int, seconds: int = 8, connections: int = 50) -> HeyResult:
    """Debian's ``hey`` at a fixed total rate (``-q`` is per connection)."""
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed (apt-get install hey)")
    per = max(1, round(rate / connections))
    proc = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(connections), "-q", str(per), url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = proc.stdout

    def pct(p: int) -> float:
        m = re.search(rf"\b{p}% in ([\d.]+) secs", out)
        return float(m.group(1)) * 1000 if m else float("nan")

    codes = dict((int(c), int(n)) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return HeyResult(
        requests=sum(codes.values()),
        non_2xx=sum(n for c, n in codes.items() if not 200 <= c < 300),
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        rps=float(rps.group(1)) if rps else 0.0,
    )
