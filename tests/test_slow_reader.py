"""A client that pipelines requests and never reads the answers cannot fill the gateway's
memory (issue 12: exhausting the process).

Twisted stops reading from a socket whose answers are not being read, but it went on parsing
and answering every pipelined request it had already read: four such connections asking for
``/metrics`` made the process grow by 300-700 MB (and on). Now the parsing waits too. Real
gateway processes, both HTTP layers; peak RSS from /proc.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.edge_helpers import peak_rss_kib
from tests.gateway_process import GatewayProcess

CONNECTIONS = 4
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n"


@pytest.mark.parametrize("layer", ["twisted", "fast"])
def test_pipelined_requests_never_read_do_not_grow_the_process(tmp_path, layer):
    with GatewayProcess(tmp_path, {"HTTPServer": layer}) as gw:
        assert len(gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body) > 2000
        before = peak_rss_kib(gw.proc.pid)
        socks = []
        try:
            for _ in range(CONNECTIONS):
                s = socket.create_connection(("127.0.0.1", gw.port))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.setblocking(False)
                data, sent, until = REQUEST * 200_000, 0, time.monotonic() + 8
                while sent < len(data) and time.monotonic() < until:
                    try:
                        sent += s.send(data[sent:])
                    except BlockingIOError:
                        time.sleep(0.01)  # the gateway stopped reading: as it should
                socks.append(s)
            time.sleep(6)  # what it would still answer from what it read, it answers now
            grown = peak_rss_kib(gw.proc.pid) - before
            # Was 300-700 MB on the twisted layer (answers to every request read, held); ~70 MB now.
            assert grown < 200 * 1024, f"peak RSS grew by {grown // 1024} MB"
            assert gw.http("GET", "/ping").body == b"pong"
        finally:
            for s in socks:
                s.close()
