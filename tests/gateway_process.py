"""A real gateway process for integration tests: ``twistd -n sfpltracker`` on free ports.

    with GatewayProcess(tmp_path, {"MaxBatchEvents": 10}) as gw:
        requests = gw.http("POST", "/tr/v1/tr/", json=[...])
        rows = gw.query("SELECT count() FROM sfpla.events FINAL")

Every listener binds 127.0.0.1 on a free port; the data directory is the test's temp dir; the
process is stopped (SIGTERM, then SIGKILL) when the block ends. Logs go to ``twistd.log`` in
the temp dir and their tail is shown when start-up fails.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sfpltracker.testing import Response
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    host: str = "127.0.0.1",
    timeout: float = 30,
) -> Response:
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        overrides: dict[str, Any] | None = None,
        name: str = "gw",
        twistd_args: tuple[str, ...] = (),  # e.g. ("-r", "asyncio")
    ):
        self.twistd_args = tuple(twistd_args)
        self.workdir = Path(workdir) / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.alt_port = free_port()
        self.query_port = free_port()
        self.config: dict[str, Any] = {
            "ProxyPort": f"127.0.0.1:{self.port}",
            "ProxyExceptHTTP": f"127.0.0.1:{self.alt_port}",
            "ProxyPortTLS": "",
            "QueryPort": f"127.0.0.1:{self.query_port}",
            "DataDirectory": str(self.workdir / "data"),
            "StaticDirectory": str(ROOT / "static"),
            "Domains": ["localhost"],
            # One process unless a test asks for workers (tests/test_workers.py).
            "Workers": 1,
        }
        self.config.update(overrides or {})
        self.config_path = self.workdir / "config.json"
        self.log_path = self.workdir / "twistd.log"
        self.proc: subprocess.Popen | None = None

    # -- process ----------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The gateway's command line (a subclass may run the service another way)."""
        return [
            *TWISTD,
            *self.twistd_args,
            "-n",
            "--pidfile=",
            "sfpltracker",
            "--config",
            str(self.config_path),
        ]

    def start(self, timeout: float = 60) -> GatewayProcess:
        if self.proc is not None and self.proc.poll() is None:
            # a second process would replace the first here and leak it (it keeps running)
            raise RuntimeError("the gateway is already running")
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if http_request(self.port, "GET", "/health", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gateway did not become healthy:\n{self.log_tail()}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (graceful: flush and exit), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"gateway did not stop on SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self):
        # ``with gw.start():`` starts it once: the with block then only stops it at the end
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        return self

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            self.kill()
            if getattr(self, "_log", None):
                self._log.close()

    # -- clients ----------------------------------------------------------------------------

    def http(self, method: str, path: str, **kw) -> Response:
        return http_request(self.port, method, path, **kw)

    def query_raw(self, sql: str, fmt: str = "JSONEachRow", **params) -> Response:
        qs = urlencode({"default_format": fmt, **params})
        return http_request(self.query_port, "POST", f"/?{qs}", body=sql.encode())

    def query(self, sql: str) -> list[dict]:
        """Rows of a SELECT through the query listener, as dicts."""
        resp = self.query_raw(sql)
        if resp.status != 200:
            raise AssertionError(f"query failed ({resp.status}): {resp.body.decode()}")
        return [json.loads(line) for line in resp.body.decode().splitlines() if line.strip()]

    def wait_for(self, sql: str, predicate, timeout: float = 30) -> list[dict]:
        """Poll ``sql`` until ``predicate(rows)`` holds (rows reach the store in batches)."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.query(sql)
            if predicate(rows):
                return rows
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting on {sql!r}; last rows: {rows[:5]}")

    def wait_settled(self, timeout: float = 30) -> None:
        """Wait until no spool record is pending, i.e. every insert has returned. An insert
        commits its table's part before its views' parts, so a row can be visible in a table
        while the tables its views fill (dash_daily, agreements, hits, ...) still lack it."""
        deadline = time.monotonic() + timeout
        while json.loads(self.http("GET", "/health").body)["spool"]["records_pending"]:
            if time.monotonic() > deadline:
                raise AssertionError(f"spool records still pending after {timeout} s")
            time.sleep(0.1)
