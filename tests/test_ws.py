"""WebSocket ingestion (``/tr/v1/ws``) against a real gateway process, with real clients.

The ``websockets`` package is the client: text and LZ4 frames, acks, limits and refusals.
Rows are read back through the gateway's query listener.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from pathlib import Path

import lz4.block
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sfpltracker.ingest.parse import BadInput
from sfpltracker.web.ws import MAX_BAD_MESSAGES, decode_message, origin_allowed
from tests.gateway_process import free_port

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def ws_url(gw, query: str = "", port: int | None = None) -> str:
    return f"ws://127.0.0.1:{port or gw.port}/tr/v1/ws{query}"


def connect(url: str, **kw):
    headers = {"User-Agent": UA, **kw.pop("headers", {})}
    return websockets.connect(url, additional_headers=headers, open_timeout=20, **kw)


def lz4_frame(obj) -> bytes:
    return lz4.block.compress(json.dumps(obj).encode())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def eid() -> str:
    return str(uuid.uuid4())


def stored(gw, eids: list[str], columns: str = "*") -> dict[str, dict]:
    keys = ",".join(f"'{e}'" for e in eids)
    rows = gw.wait_for(
        f"SELECT {columns} FROM sfpla.events FINAL WHERE eid IN ({keys})",
        lambda r: len(r) >= len(eids),
    )
    return {r["eid"]: r for r in rows}


# --------------------------------------------------------------------------- pure logic


def test_decode_message_forms():
    assert decode_message(b'{"a":1}', False, 1000, 10) == [{"a": 1}]
    assert decode_message(b'[{"a":1},{"b":2}]', False, 1000, 10) == [{"a": 1}, {"b": 2}]
    assert decode_message(lz4.block.compress(b'{"a":1}'), True, 1000, 10) == [{"a": 1}]
    cases = {
        (b"\x00\x00\x00\x80" + b"\x00" * 8, True): "declared size 2147483648 exceeds",
        (b"\x05\x00", True): "shorter than its 4-byte size prefix",
        (b"\x20\x00\x00\x00" + b"\xff" * 12, True): "invalid LZ4 block",
        (lz4.block.compress(b"[]"), True): "empty message",
        (b"\x00\x00\x00\x00", True): "empty message",
        (b"not json", False): "malformed JSON",
        (b"42", False): "expected a JSON object",
        (json.dumps([{}] * 11).encode(), False): "too many events",
    }
    for (payload, binary), reason in cases.items():
        with pytest.raises(BadInput, match=reason):
            decode_message(payload, binary, 1000, 10)
    # the size check happens before decompression: a valid block just over the limit is refused
    with pytest.raises(BadInput, match="declared size 1001"):
        decode_message(lz4.block.compress(b" " * 1001), True, 1000, 10)


def test_origin_rules():
    assert origin_allowed("", "t.example.com", "https://a.com", [])  # not a browser page
    assert origin_allowed("https://evil.net", "t.example.com", "*", [])
    assert origin_allowed("https://a.com", "t.example.com", "https://b.com, https://a.com", [])
    assert not origin_allowed("https://evil.net", "t.example.com", "https://a.com", [])
    assert origin_allowed("https://t.example.com", "t.example.com", "https://a.com", [])
    assert origin_allowed("https://shop.example.org:8443", "t.example.com", "", ["example.org"])
    assert not origin_allowed("https://badexample.org", "t.example.com", "", ["example.org"])
    assert not origin_allowed("null", "t.example.com", "https://a.com", ["example.org"])


# --------------------------------------------------------------------------- real gateway


def test_text_and_lz4_frames_stored_with_the_upgrade_fields(gateway):
    vid = "0190aaaa-bbbb-7ccc-8ddd-000000000001"
    ids = [eid() for _ in range(4)]

    async def scenario():
        url = ws_url(gateway, "?ack=1&app=shop&utm_source=Newsletter")
        async with connect(url, headers={"Cookie": f"vid={vid}"}) as ws:
            await ws.send(json.dumps({"eid": ids[0], "ename": "Page_View", "color": "red"}))
            await ws.send(
                json.dumps([{"eid": ids[1], "ename": "a"}, {"eid": ids[2], "ename": "b"}])
            )
            await ws.send(lz4_frame({"eid": ids[3], "ename": "lz4_evt", "etyp": "Click", "n": 7}))
            return [json.loads(await ws.recv()) for _ in range(3)]

    replies = run(scenario())
    assert sorted(e for r in replies for e in r["ok"]) == sorted(ids)
    rows = stored(gateway, ids)
    first, packed = rows[ids[0]], rows[ids[3]]
    assert first["ename"] == "page_view" and first["params"] == {"color": "red"}
    assert packed["ename"] == "lz4_evt" and packed["etyp"] == "click"
    assert packed["params"] == {"n": 7}
    for row in rows.values():
        assert row["vid"] == vid  # the cookie sent with the upgrade
        assert row["app"] == "shop" and row["source"] == "newsletter"  # the upgrade's query
        assert row["server"] == 0 and row["bhash"]  # a client event with its user agent
        assert row["ip"] == "127.0.0.0"  # IPMode truncate
        assert row["url"] == ""  # the /tr/v1/ws path is not a page
        assert "ack" not in row["params"]


def test_ack_mode_returns_the_stored_eids(gateway):
    sent = [eid() for _ in range(30)]

    async def scenario():
        acked = []
        async with connect(ws_url(gateway, "?ack=1")) as ws:
            for i, e in enumerate(sent):
                frame = lz4_frame if i % 2 else json.dumps
                await ws.send(frame({"eid": e, "ename": "acked", "i": i}))
            while len(acked) < len(sent):
                acked.extend(json.loads(await ws.recv())["ok"])
            # an event without an eid gets one minted by the gateway, returned in the ack
            await ws.send(json.dumps({"ename": "no_eid"}))
            minted = json.loads(await ws.recv())["ok"]
        return acked, minted

    acked, minted = run(scenario())
    assert sorted(acked) == sorted(sent)
    assert len(minted) == 1 and uuid.UUID(minted[0]).version == 7
    rows = stored(gateway, acked + minted, "eid, ename")
    assert set(rows) == set(acked + minted)
    assert rows[minted[0]]["ename"] == "no_eid"


def test_without_ack_nothing_is_sent_back(gateway):
    good = eid()

    async def scenario():
        async with connect(ws_url(gateway)) as ws:
            await ws.send("not json")
            await ws.send(json.dumps({"eid": good, "ename": "quiet"}))
            await ws.close()
            return [m async for m in ws]

    assert run(scenario()) == []
    assert stored(gateway, [good], "eid")


def test_bad_messages_are_refused_without_closing(gateway):
    good = eid()

    async def scenario():
        async with connect(ws_url(gateway, "?ack=1")) as ws:
            bad = [
                b"\x00\x00\x00\x80" + b"\x00" * 16,  # declares 2 GB
                b"\x40\x00\x00\x00" + b"\xf0" * 40,  # invalid LZ4 block
                b"\x01\x02",  # shorter than the size prefix
                "{not json",
                "[1, 2]",
                lz4.block.compress(b"<html>"),  # valid LZ4, not JSON
            ]
            errors = []
            for frame in bad:
                await ws.send(frame)
                errors.append(json.loads(await ws.recv()))
            await ws.send(json.dumps([{"eid": good, "ename": "after_bad"}, "junk"]))
            mixed = json.loads(await ws.recv())
            return errors, mixed

    errors, mixed = run(scenario())
    assert [set(e) for e in errors] == [{"error"}] * 6
    assert "declared size 2147483648" in errors[0]["error"]
    assert errors[1]["error"] == "invalid LZ4 block"
    assert "not a JSON object" in errors[4]["error"]
    assert mixed == {"ok": [good], "error": "event 1: not a JSON object"}
    assert stored(gateway, [good], "eid")
    assert gateway.http("GET", "/health").status == 200
    assert gateway.proc.poll() is None


def test_repeated_abuse_closes_with_policy_violation(gateway):
    async def scenario():
        async with connect(ws_url(gateway)) as ws:
            for _ in range(MAX_BAD_MESSAGES + 1):
                await ws.send(b"\xff\xff\xff\xff")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd

    close = run(scenario())
    assert close.code == 1008 and close.reason == "too many bad messages"
    # the process and other clients are fine
    assert gateway.http("GET", "/health").status == 200


def test_origin_is_checked(gateway_factory):
    gw = gateway_factory({"AllowOrigin": "https://shop.example.com", "Domains": ["example.org"]})
    ok = eid()

    async def scenario():
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(gw), origin="https://evil.example.net"):
                pass
        for origin in ("https://shop.example.com", "https://www.example.org"):
            async with connect(ws_url(gw, "?ack=1"), origin=origin) as ws:
                await ws.send(json.dumps({"eid": ok, "ename": "from_allowed_origin"}))
                assert json.loads(await ws.recv()) == {"ok": [ok]}
        return refused.value.response

    response = run(scenario())
    assert response.status_code == 403
    assert json.loads(response.body) == {"error": "origin not allowed"}
    assert stored(gw, [ok], "eid")


def test_connection_limit_idle_timeout_and_message_size(gateway_factory):
    gw = gateway_factory({"MaxConnections": 2, "IdleTimeoutSeconds": 1, "MaxMessageBytes": 4096})

    async def scenario():
        async with connect(ws_url(gw, "?ack=1")) as first, connect(ws_url(gw)) as second:
            with pytest.raises(InvalidStatus) as full:
                async with connect(ws_url(gw)):
                    pass
            # the decompressed size counts: 4 KB of LZ4 can declare more than MaxMessageBytes
            await first.send(lz4_frame({"ename": "big", "pad": "x" * 5000}))
            too_big = json.loads(await first.recv())
            # a wire message over MaxMessageBytes cannot be read: RFC 6455 close 1009
            await second.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as oversize:
                await second.recv()
            # idle: no message for IdleTimeoutSeconds closes with 1000
            with pytest.raises(ConnectionClosed) as idle:
                await first.recv()
        return full.value.response, too_big, oversize.value.rcvd, idle.value.rcvd

    full, too_big, oversize, idle = run(scenario())
    assert full.status_code == 503 and full.headers["Retry-After"] == "5"
    assert "exceeds MaxMessageBytes (4096)" in too_big["error"]
    assert oversize.code == 1009
    assert (idle.code, idle.reason) == (1000, "idle timeout")


def test_permessage_deflate_and_every_listener(gateway):
    ids = [eid(), eid()]

    async def scenario():
        extensions = []
        for port, e in zip((gateway.port, gateway.alt_port), ids, strict=True):
            async with connect(ws_url(gateway, "?ack=1", port=port), compression="deflate") as ws:
                extensions.append(ws.response.headers.get("Sec-WebSocket-Extensions", ""))
                await ws.send(json.dumps({"eid": e, "ename": "deflated", "pad": "ab" * 2000}))
                assert json.loads(await ws.recv()) == {"ok": [e]}
        return extensions

    extensions = run(scenario())
    assert all(x.startswith("permessage-deflate") for x in extensions)
    assert set(stored(gateway, ids, "eid")) == set(ids)


def test_plain_get_is_told_to_upgrade(gateway):
    resp = gateway.http("GET", "/tr/v1/ws")
    assert resp.status == 426 and resp.json() == {"error": "this route expects a WebSocket upgrade"}


def test_open_connections_count_returns_to_zero(gateway):
    async def scenario():
        sockets = [await connect(ws_url(gateway)) for _ in range(5)]
        during = gateway.http("GET", "/status?format=object").json()["conns"]
        for ws in sockets:
            await ws.close()
        return during

    during = run(scenario())
    assert during == 6  # five sockets and the /status request itself
    metrics = gateway.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    assert "sfpl_ws_connections_total 5.0" in metrics
    # the server sees each close a moment after the client: poll, do not sleep a fixed time
    deadline = time.monotonic() + 10
    while gateway.http("GET", "/status?format=object").json()["conns"] != 1:
        assert time.monotonic() < deadline, "closed WebSockets still counted as open"
        time.sleep(0.05)


def test_websocket_over_the_tls_listener(gateway_factory):
    """wss:// on ProxyPortTLS, the client trusting the self-signed pair generated at start."""
    tls_port = free_port()
    gw = gateway_factory({"ProxyPortTLS": f"127.0.0.1:{tls_port}"})
    generated = Path(gw.config["DataDirectory"]) / "tls" / "selfsigned.crt"
    assert generated.exists(), "no TLSCert/TLSKey: the gateway generates its default pair"
    context = ssl.create_default_context(cafile=str(generated))  # verifies chain and name
    ids = [eid(), eid()]

    async def scenario():
        url = f"wss://localhost:{tls_port}/tr/v1/ws?ack=1"
        async with connect(url, ssl=context) as ws:
            await ws.send(json.dumps({"eid": ids[0], "ename": "over_tls"}))
            await ws.send(lz4_frame({"eid": ids[1], "ename": "over_tls"}))
            return [json.loads(await ws.recv()) for _ in range(2)]

    replies = run(scenario())
    assert sorted(e for r in replies for e in r["ok"]) == sorted(ids)
    rows = stored(gw, ids, "eid, ename")
    assert {r["ename"] for r in rows.values()} == {"over_tls"}


def test_shutdown_tells_clients_to_go_away(gateway_factory):
    gw = gateway_factory()

    async def scenario():
        async with connect(ws_url(gw, "?ack=1")) as ws:
            e = eid()
            await ws.send(json.dumps({"eid": e, "ename": "before_shutdown"}))
            assert json.loads(await ws.recv()) == {"ok": [e]}
            loop = asyncio.get_running_loop()
            stopping = loop.run_in_executor(None, gw.stop)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            await stopping
            return closed.value.rcvd

    close = run(scenario())
    assert (close.code, close.reason) == (1001, "server shutting down")


# --------------------------------------------------------------------------- MemoryReactorClock


def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame (RFC 6455: clients mask), payloads under 126 bytes."""
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


def test_idle_timer_restarts_with_every_message(tmp_path):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from sfpltracker.config import load_dict
    from sfpltracker.gateway import Gateway
    from sfpltracker.web.site import GatewayRoot, GatewaySite

    clock = MemoryReactorClock()
    # An unstarted spool refuses (503); the memory intake accepts without a running loader.
    cfg = load_dict(
        {"DataDirectory": str(tmp_path), "IdleTimeoutSeconds": 60, "Durability": "memory"}
    )
    gw = Gateway(cfg, clock)  # the store is never started: nothing here reaches it
    site = GatewaySite(gw, GatewayRoot(gw), reactor=clock)
    peer = IPv4Address("TCP", "203.0.113.7", 40000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    channel.dataReceived(
        b"GET /tr/v1/ws HTTP/1.1\r\nHost: t.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 101")
    ws = transport.protocol
    transport.clear()

    clock.advance(59)
    ws.dataReceived(masked_frame(b'{"ename":"keepalive"}'))
    clock.advance(59)  # 118 s since the upgrade, 59 s since the message: still open
    assert transport.value() == b""
    clock.advance(1.5)
    # close frame, code 1000 (0x03e8), reason "idle timeout"
    assert transport.value() == b"\x88\x0e\x03\xe8idle timeout"
    assert gw.counters["events_accepted"] == 1
