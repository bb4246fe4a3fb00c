"""Workers > 1: the kernel spreads connections over the workers (one SO_REUSEPORT socket each).

Real processes (``twistd sfpltracker`` with ``Workers: 2``). Which worker serves a connection is
read from ``/health`` asked over that same connection (a worker's spool series is its name).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import time
from collections import Counter

import pytest

from tests.gateway_process import GatewayProcess, http_request
from tests.servers import free_port
from tests.test_workers import Load, assert_stored_once, health, process, wait_until

CONNECTIONS = 40


def worker_of(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/health")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    return json.loads(body)["spool"]["series"]


def track(conn: http.client.HTTPConnection, name: str) -> None:
    conn.request("GET", f"/tr/v1/tr/ename/{name}")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, name


def open_at_once(conns: list[http.client.HTTPConnection]) -> None:
    """Every TCP connection made before any request is sent: a burst of new connections."""
    for c in conns:
        c.connect()


def over_tls(raw: socket.socket) -> http.client.HTTPConnection:
    """An HTTP connection over TLS (the self-signed default certificate) on a connected socket."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPConnection("localhost", timeout=30)
    conn.sock = ctx.wrap_socket(raw, server_hostname="localhost")
    return conn


def test_a_burst_of_keep_alive_connections_is_spread_over_both_workers(tmp_path):
    tls_port = free_port()
    config = {
        "Workers": 2,
        "ProxyPortTLS": f"127.0.0.1:{tls_port}",
        "ProxyExceptHTTP": "127.0.0.1:0",  # a free port: every worker's socket on the same one
    }
    with GatewayProcess(tmp_path, config) as gw:
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        conns = [
            http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30) for _ in range(CONNECTIONS)
        ]
        # w2 is busy (here: stopped) while the burst arrives. With one socket shared by the
        # workers the one awake accepted every connection and kept it (keep-alive); with a
        # socket per worker the kernel hands each connection to one as it is made.
        w2 = process(gw, "w2")["pid"]
        os.kill(w2, signal.SIGSTOP)
        try:
            open_at_once(conns)
            raw_tls = [
                socket.create_connection(("127.0.0.1", tls_port), timeout=30)
                for _ in range(CONNECTIONS // 2)
            ]
            time.sleep(0.5)  # (the old code's w1 accepts them all meanwhile)
        finally:
            os.kill(w2, signal.SIGCONT)
        tls = [over_tls(raw) for raw in raw_tls]
        acked: list[str] = []
        try:
            for i, c in enumerate(conns + tls):
                for j in range(3):  # keep-alive: each connection stays with its worker
                    track(c, f"c{i}r{j}")
                    acked.append(f"c{i}r{j}")
            served = Counter(worker_of(c) for c in conns)
            served_tls = Counter(worker_of(c) for c in tls)
        finally:
            for c in conns + tls:
                c.close()
        # Each worker took a share of the burst, over HTTP and over TLS alike.
        assert set(served) == {"w1", "w2"}, served
        assert set(served_tls) == {"w1", "w2"}, served_tls
        assert_stored_once(gw, acked)
        ports = dict(
            re.findall(r"\[(w\d) \S+\] ProxyExceptHTTP listening on [\d.]+:(\d+)", gw.log_text())
        )
        assert set(ports) == {"w1", "w2"} and len(set(ports.values())) == 1, ports
        assert http_request(int(ports["w1"]), "GET", "/ping").status == 200


def _exited(pid: int) -> bool:
    """The process ended (a zombie its stopped parent has not reaped counts: its sockets are
    closed by then)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_connections_made_while_a_worker_is_dead_wait_for_it_and_are_answered(tmp_path):
    with GatewayProcess(tmp_path, {"Workers": 2}) as gw:
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        victim = process(gw, "w1")["pid"]
        supervisor = gw.proc.pid
        conns = [
            http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60) for _ in range(CONNECTIONS)
        ]
        names = [f"d{i}" for i in range(CONNECTIONS)]
        with Load(gw, "k") as load:
            load.wait_acked(50)
            # The supervisor stopped holds the restart back: every connection below is made
            # while w1 is dead, whatever the machine's speed.
            os.kill(supervisor, signal.SIGSTOP)
            try:
                os.kill(victim, signal.SIGKILL)
                wait_until(lambda: _exited(victim), 30, "w1 gone")
                open_at_once(conns)
                for c, name in zip(conns, names, strict=True):
                    c.request("GET", f"/tr/v1/tr/ename/{name}")
            finally:
                os.kill(supervisor, signal.SIGCONT)
            try:
                # Those the kernel gave to w1's socket waited in its queue for the new w1.
                statuses = []
                for c in conns:
                    response = c.getresponse()
                    response.read()
                    statuses.append(response.status)
                served = Counter(worker_of(c) for c in conns)
            finally:
                for c in conns:
                    c.close()
            wait_until(lambda: process(gw, "w1")["pid"] not in (None, victim), what="new w1")
            load.wait_acked(50)  # both workers serve new connections again
        assert statuses == [200] * CONNECTIONS
        assert served["w1"] > 0 and served["w2"] > 0, served
        assert load.non_2xx == []
        assert_stored_once(gw, load.acked + names)


def test_a_second_gateway_on_the_same_port_is_refused_not_sharing_it(tmp_path):
    with GatewayProcess(tmp_path, {"Workers": 2}, name="first") as first:
        second = GatewayProcess(tmp_path, {"Workers": 2}, name="second")
        second.config["ProxyPort"] = first.config["ProxyPort"]
        # Both would bind with SO_REUSEPORT as the same user: the kernel would let the second
        # take a share of the first's connections if it did not check the port first.
        try:
            with pytest.raises(RuntimeError, match="gateway exited"):
                second.start()
        finally:
            second.__exit__(None, None, None)
        assert "Address already in use" in second.log_text()
        # The first gateway's workers take every connection (each new: any socket of its).
        names = [f"a{i}" for i in range(20)]
        for name in names:
            conn = http.client.HTTPConnection("127.0.0.1", first.port, timeout=10)
            try:
                track(conn, name)
            finally:
                conn.close()
        assert_stored_once(first, names)
