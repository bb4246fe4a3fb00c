"""Both HTTP layers (``HTTPServer: twisted`` and ``fast``) give the same answers: status, body
and headers, framing apart (twisted.web chunks an empty body the fast layer gives a length).
Real gateway processes over loopback sockets."""

from __future__ import annotations

import socket

import pytest

from tests.gateway_process import GatewayProcess

PATHS = [
    b"/ping",
    b"/tr/v1/rdr/?url=%2Flanding&ename=parity",  # a bodiless redirect
    b"/tr/v1/rdr/?url=https%3A%2F%2Fevil.example%2F",  # refused: JSON 400
    b"/no-such-slug",  # the fallbacks' 404
]
FRAMING = {"date", "connection", "content-length", "transfer-encoding"}


def answer(port: int, path: bytes) -> tuple[bytes, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":  # only empty bodies here: "0\r\n\r\n"
        body = b"" if body == b"0\r\n\r\n" else body
    return status.encode(), headers, body


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    with (
        GatewayProcess(tmp_path_factory.mktemp("t"), {"HTTPServer": "twisted"}) as t,
        GatewayProcess(tmp_path_factory.mktemp("f"), {"HTTPServer": "fast"}) as f,
    ):
        yield t, f


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.decode().split("?")[0])
def test_the_layers_answer_alike(both, path):
    t, f = both
    t_status, t_headers, t_body = answer(t.port, path)
    f_status, f_headers, f_body = answer(f.port, path)
    assert f_status == t_status
    assert f_body == t_body
    assert f_headers["server"].startswith("TwistedWeb/")
    same = {k: v for k, v in t_headers.items() if k not in FRAMING}
    assert {k: v for k, v in f_headers.items() if k not in FRAMING} == same
