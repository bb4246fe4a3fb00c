"""The query listener's limits (read deadline, header and body size), over real sockets."""

from __future__ import annotations

import http.client
import socket
import time

import clickhouse_connect
import pytest

from sfpltracker.web.query import QUERY_MAX_BODY_BYTES
from tests.edge_helpers import trickle
from tests.gateway_process import GatewayProcess, http_request


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    config = {
        "ReadTimeoutSeconds": 1,
        "IdleTimeoutSeconds": 5,
        "MaxHeaderBytes": 2048,
        "MaxConnections": 4,
        "QueryTimeoutSeconds": 1,
        "QueryMaxResultBytes": 100_000,
    }
    with GatewayProcess(tmp_path_factory.mktemp("querylimits"), config) as gateway:
        yield gateway


def test_slow_client_on_the_query_port_gets_408(gw):
    data, elapsed = trickle(gw.query_port, b"POST /?default_format=CSV HTTP/1.1\r\nHost: x\r\n")
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"ReadTimeoutSeconds" in data
    assert elapsed < 5  # cut by the read deadline (1 s), not by the idle timeout (5 s)


def test_slow_body_on_the_query_port_gets_408(gw):
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nSELECT "
    data, _ = trickle(gw.query_port, head, drip=b"1")
    assert data.startswith(b"HTTP/1.1 408"), data


def test_oversize_header_is_refused(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.query_port, timeout=10)
    try:
        conn.request("POST", "/", body=b"SELECT 1", headers={"X-Big": "a" * 4000})
        assert conn.getresponse().status == 400
    finally:
        conn.close()


def test_oversize_body_gets_413_and_the_connection_still_answers(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.query_port, timeout=30)
    try:
        big = b"SELECT '" + b"x" * QUERY_MAX_BODY_BYTES + b"'"
        conn.request("POST", "/?default_format=CSV", body=big)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 413, body
        assert f"larger than {QUERY_MAX_BODY_BYTES} bytes".encode() in body
        assert r.getheader("x-clickhouse-exception-code") == "0"
        # The same keep-alive connection answers the next query.
        conn.request("POST", "/?default_format=CSV", body=b"SELECT 40 + 2")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"42\n")
        # A chunked body (no Content-Length) is capped as well.
        conn.putrequest("POST", "/?default_format=CSV")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * 65536
        for _ in range(QUERY_MAX_BODY_BYTES // len(chunk) + 2):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        assert r.status == 413, r.read()
        r.read()
    finally:
        conn.close()
    # A long query (200 kB, within ClickHouse's own max_query_size) is answered as usual.
    r = gw.query_raw("SELECT length('" + "y" * 200_000 + "') FORMAT CSV")
    assert (r.status, r.body) == (200, b"200000\n")


def test_a_normal_select_still_works(gw):
    assert gw.query("SELECT 1 AS one") == [{"one": 1}]
    client = clickhouse_connect.get_client(host="127.0.0.1", port=gw.query_port, database="sfpla")
    try:
        assert client.query("SELECT count() FROM events").result_rows == [(0,)]
    finally:
        client.close()


def test_connection_cap_covers_the_query_listener(gw):
    # MaxConnections counts all listeners together: idle public connections fill it.
    idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(4)]
    try:
        deadline = time.monotonic() + 10
        while (r := gw.query_raw("SELECT 1")).status != 503:  # until the gateway accepted them
            assert time.monotonic() < deadline, r
            time.sleep(0.05)
        assert r.header("retry-after") == "5"
        assert r.json() == {"error": "too many connections (MaxConnections)"}
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while (r := gw.query_raw("SELECT 1")).status != 200:
        assert time.monotonic() < deadline, r
        time.sleep(0.05)


# A query that runs for minutes: a cross join of system tables the guard lets clients read.
ENDLESS = (
    "SELECT count() FROM system.functions AS a, system.functions AS b, "
    "system.functions AS c, system.functions AS d WHERE cityHash64(a.name, b.name, c.name, d.name) = 0"
)


def test_a_query_past_query_timeout_seconds_is_stopped_with_400(gw):
    # Was: it ran on (the client gave up after 20 s), holding a reader thread all along.
    r = _post(gw, ENDLESS)
    assert r.status == 400, r
    assert b"TIMEOUT_EXCEEDED" in r.body and r.header("x-clickhouse-exception-code") == "159"
    # The reader is free again.
    assert gw.query("SELECT 40 + 2 AS x") == [{"x": 42}]


def test_a_result_over_query_max_result_bytes_is_refused_with_400(gw):
    # Was: the whole result, however large (here ~300 kB over a 100 kB cap).
    r = _post(gw, "SELECT * FROM system.functions")
    assert r.status == 400, r
    assert b"TOO_MANY_ROWS_OR_BYTES" in r.body and r.header("x-clickhouse-exception-code") == "396"
    # A result within the cap is answered.
    assert gw.query("SELECT count() > 0 AS ok FROM system.functions") == [{"ok": 1}]


def _post(gw, sql: str):
    return http_request(
        gw.query_port, "POST", "/?default_format=CSV", body=sql.encode(), timeout=20
    )
