"""A WebSocket message in very many frames cannot fill the gateway's memory (issue 12).

Autobahn keeps each frame of a message as its own object until the message ends: a message
within ``MaxMessageBytes`` sent one byte per frame cost ~50 bytes of memory per byte sent
(two such connections: +92 MB). Now a message in more than ``MAX_FRAGMENTS`` frames is
refused (close 1009) while one in a few frames is still taken. A real gateway process, raw
frames over a socket.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct

import pytest

from tests.gateway_process import GatewayProcess


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("wsfrag"), {"ReadTimeoutSeconds": 30}) as g:
        yield g


def frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """A masked client frame (payloads here are under 126 bytes)."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)])
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgraded(gw) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
    key = base64.b64encode(os.urandom(16))
    s.sendall(
        b"GET /tr/v1/ws?ack=true HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def fragmented(message: bytes, size: int) -> bytes:
    parts = [message[i : i + size] for i in range(0, len(message), size)]
    frames = [frame(1 if n == 0 else 0, p, n == len(parts) - 1) for n, p in enumerate(parts)]
    return b"".join(frames)


def read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def test_a_message_in_too_many_frames_is_refused_with_1009(gw):
    message = json.dumps({"ename": "fragmented_too_much", "pad": "x" * 3000}).encode()
    s = upgraded(gw)
    with s:
        try:
            s.sendall(fragmented(message, 1))  # ~3,000 frames
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while sending: refused before the end
        answer = read_all(s)
    # A close frame: opcode 8, code 1009 (message too big), with the reason.
    assert answer[:1] == b"\x88", answer[:80]
    assert struct.unpack(">H", answer[2:4])[0] == 1009, answer[:80]
    assert b"frames" in answer, answer[:80]
    assert gw.http("GET", "/ping").body == b"pong"


def test_a_message_in_a_few_frames_is_still_taken(gw):
    message = json.dumps({"ename": "fragmented_ok", "url": "https://t.test/"}).encode()
    assert len(message) // 10 + 1 < 100  # frames, well under MAX_FRAGMENTS (1024)
    s = upgraded(gw)
    with s:
        s.sendall(fragmented(message, 10))
        ack = s.recv(65536)
        assert ack[:1] == b"\x81", ack  # the ack, a text frame
    gw.wait_for(
        "SELECT count() AS n FROM sfpla.events WHERE ename = 'fragmented_ok'",
        lambda rows: rows[0]["n"] == 1,
    )
