"""Helpers for the edge tests: the upstream process, raw HTTP(S) clients, process memory."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from tests.gateway_process import Response
from tests.servers import free_port, wait_for_port

HERE = Path(__file__).resolve().parent


class UpstreamProcess:
    """``tests/edge_upstream.py`` on free ports (HTTP and WebSocket)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.ws_port = free_port()
        self.log_path = Path(workdir) / "upstream.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "edge_upstream.py"), str(self.port), str(self.ws_port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout=30, proc=self.proc)
        wait_for_port("127.0.0.1", self.ws_port, timeout=30, proc=self.proc)
        return self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 30,
    source_ip: str | None = None,
) -> Response:
    """One request over a fresh connection (HTTP, or HTTPS with ``tls``).

    ``source_ip`` (another loopback address, e.g. 127.0.0.2) makes it come from another client.
    """
    source = (source_ip, 0) if source_ip else None
    if tls is not None:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=tls, source_address=source
        )
        if server_hostname:
            _set_sni(conn, server_hostname)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=source)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def _set_sni(conn: http.client.HTTPSConnection, name: str) -> None:
    """Make ``conn`` send ``name`` as SNI while connecting to 127.0.0.1."""
    context = conn._context

    def connect():
        sock = socket.create_connection(("127.0.0.1", conn.port), conn.timeout)
        conn.sock = context.wrap_socket(sock, server_hostname=name)

    conn.connect = connect


def insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def metric_value(text: str, name: str, labels: str = "") -> float:
    """A sample's value from Prometheus text (``name{labels} value``)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    raise AssertionError(f"{wanted} not in metrics:\n{text}")


def trickle(port: int, head: bytes, drip: bytes = b"X") -> tuple[bytes, float]:
    """Send ``head``, then one ``drip`` byte every 0.25 s (never idle, never done) for up to
    10 s; returns what the server answered and how long until it did (or closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        started = time.monotonic()
        data = b""
        try:
            for _ in range(40):
                s.sendall(drip)
                time.sleep(0.25)
                s.settimeout(0.01)
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                data += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
        return data, time.monotonic() - started
