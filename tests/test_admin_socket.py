"""Admin commands over the gateway's Unix-domain socket, never over TCP (issue 12).

Before, ``POST /admin/<command>`` on the query listener ran any admin command for whoever sent
the token kept in ``DataDirectory/admin.token``; chDB reads any file the process can, so only
the query guard stood between a query and every admin command. Now there is no token: the
commands are served on ``DataDirectory/admin/admin.sock`` (directory 0700, socket 0600, peer
checked with ``SO_PEERCRED``), and nothing a query could read grants anything. Real gateway
processes, the real CLI, real sockets; another user is ``nobody`` (the tests run as root).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sfpltracker import admin
from sfpltracker.cli import client
from sfpltracker.config import load
from sfpltracker.web.admin import ADMIN_MAX_BODY_BYTES
from tests.gateway_process import ROOT, GatewayProcess

NOBODY = 65534


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("admin")) as gateway:
        yield gateway


def data_dir(gw) -> Path:
    return Path(gw.config["DataDirectory"])


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path):
        super().__init__("localhost", timeout=30)
        self.path_ = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path_))


def admin_post(path: Path, name: str, body: bytes = b"{}") -> tuple[int, dict]:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("POST", f"/admin/{name}", body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def cli(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )


def test_nothing_in_the_data_directory_runs_an_admin_command_over_tcp(gw):
    # Every file a query could read, were the guard passed, tried as the old bearer token
    # (was: DataDirectory/admin.token ran every command).
    answers = {}
    for path in data_dir(gw).rglob("*"):
        if not path.is_file() or path.stat().st_size > 4096:
            continue
        value = path.read_bytes().strip().decode("latin-1")
        if not value or any(c in value for c in "\r\n\0"):
            continue
        conn = http.client.HTTPConnection("127.0.0.1", gw.query_port, timeout=30)
        try:
            conn.request("POST", "/admin/ping", body=b"{}", headers={"X-Sfpl-Admin-Token": value})
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        finally:
            conn.close()
        answers[path.name] = (status, json.loads(body).get("error"))
    assert len(answers) >= 2  # secret.key, the config of chDB, ...
    assert not [name for name, (status, _) in answers.items() if status == 200], answers
    # Not even a refusal that says a token exists: there is no admin on TCP at all.
    assert {a for a in answers.values()} == {
        (404, "admin commands are served on DataDirectory/admin/admin.sock only")
    }, answers
    assert not (data_dir(gw) / "admin.token").exists()


def test_the_cli_runs_admin_commands_over_the_socket(gw):
    sock = admin.socket_path(data_dir(gw))
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    with pytest.raises(OSError):  # a socket is not a file anything can read
        sock.read_bytes()
    assert admin_post(sock, "ping") == (200, {"ok": True, "store": "embedded"})
    done = cli(gw, "schema")  # the embedded store is the gateway's: only over the socket
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("schema loaded:"), done.stdout
    status, answer = admin_post(sock, "no-such-command")
    assert status == 400 and "unknown command" in answer["error"]
    status, answer = admin_post(sock, "ping", b"[1]")
    assert status == 400 and "JSON object" in answer["error"]
    status, answer = admin_post(sock, "ping", b"{" + b" " * ADMIN_MAX_BODY_BYTES + b"}")
    assert status == 413 and "larger than" in answer["error"]


def _connect_as_nobody(path: Path) -> str:
    """What a process of another user gets from the socket: an error name, or the answer."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(20)\n"
        "try:\n"
        f"    s.connect({str(path)!r})\n"
        "    s.sendall(b'POST /admin/ping HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\n\\r\\n{}')\n"
        "    print(repr(s.recv(65536)))\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    done = subprocess.run(
        # The system's Python: nobody may not reach the test's virtualenv.
        [shutil.which("python3", path="/usr/bin:/bin") or sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_another_user_is_refused_by_the_modes_and_by_the_peer_check(gw):
    sock = admin.socket_path(data_dir(gw))
    # The data directory may be anywhere: let nobody reach the admin directory's parent
    # (for this test only).
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in sock.parents[1:]}
    try:
        for parent, mode in modes.items():
            os.chmod(parent, mode | 0o005)
        assert _connect_as_nobody(sock) == "PermissionError"
        # Modes loosened by mistake: the gateway itself closes the connection unanswered.
        os.chmod(sock.parent, 0o777)
        os.chmod(sock, 0o777)
        closed = ("b''", "ConnectionResetError", "BrokenPipeError")
        assert _connect_as_nobody(sock) in closed
    finally:
        os.chmod(sock.parent, 0o700)
        os.chmod(sock, 0o600)
        for parent, mode in modes.items():
            os.chmod(parent, mode)
    assert "a peer of another user was refused" in gw.log_text()
    assert admin_post(sock, "ping")[0] == 200  # its own user still is served


def test_a_long_data_directory_a_stale_socket_and_no_gateway(tmp_path):
    # Over the 107 bytes a socket address holds: reached through the directory's descriptor.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with GatewayProcess(deep, {"DataDirectory": str(deep / "data")}) as gw:
        cfg = load(gw.config_path)
        sock = admin.socket_path(cfg.data_dir)
        assert len(str(sock)) > admin.MAX_SOCKET_PATH and sock.exists()
        assert client.call_running_gateway(cfg, "ping", {}) == {"ok": True, "store": "embedded"}
        gw.kill()  # SIGKILL: the socket file stays behind, nobody listens on it
        assert sock.exists()
        with pytest.raises(client.GatewayNotRunning):
            client.call_running_gateway(cfg, "ping", {})
        done = cli(gw, "schema")  # the CLI opens the store itself
        assert done.returncode == 0 and done.stdout.startswith("schema loaded:"), done.stderr
        gw.start()  # the stale socket is replaced
        assert client.call_running_gateway(cfg, "ping", {})["ok"] is True
        gw.stop()
        assert not sock.exists()  # removed on a clean stop
        with pytest.raises(client.GatewayNotRunning):
            client.call_running_gateway(cfg, "ping", {})
