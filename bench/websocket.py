"""WebSocket ingestion throughput: events stored per second, text vs LZ4 frames vs HTTP POST.

    /work/venv/bin/python bench/websocket.py [--seconds 10] [--connections 50]

One gateway process (``twistd``, embedded chDB store, default batching) serves every case in
turn; the same events are sent

* over 50 WebSockets with ``?ack=1`` (as static/track.js does), one event per frame, as JSON
  text frames and as LZ4 binary frames; each connection keeps ``--window`` messages unacked;
* over 50 keep-alive HTTP connections as ``POST /tr/v1/tr/`` JSON arrays of 20 events (the
  browser client's batch size), driven by ``wrk``.

For each case it prints events acknowledged per second, events *stored* per second (rows counted
in the store during the steady part of the run, the first 2 s left out), the gateway's CPU use
and whether every acknowledged event reached the store. Ratios are to the HTTP batch case.
The WebSocket load comes from Python client processes (``websockets``), which share the two
cores with the gateway; the HTTP load from ``wrk`` (C), which needs far less CPU per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import check_wrk_stderr, post_script  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402

WARMUP = 2.0
HTTP_BATCH = 20


def event(n: int) -> dict:
    """A typical page event (~400 bytes of JSON), as the browser client builds it."""
    return {
        "eid": str(uuid.uuid4()),
        "ename": "page_view",
        "etyp": "view",
        "url": f"https://shop.example.com/products/{n % 500}?ref=newsletter",
        "last": "https://www.google.com/",
        "app": "shop",
        "rel": "2024.05",
        "vid": "0190aaaa-bbbb-7ccc-8ddd-000000000001",
        "sid": "0190aaaa-bbbb-7ccc-8ddd-000000000002",
        "tz": "America/Los_Angeles",
        "lang": "en-US",
        "w": 1920,
        "h": 1080,
        "params": {"sku": f"A-{n % 97}", "price": 19.99, "n": n},
    }


# --------------------------------------------------------------------------- WebSocket load


async def _connection(url: str, lz4: bool, window: int, until: float, counts: list[int]) -> None:
    import lz4.block
    import websockets

    async with websockets.connect(url, compression=None, max_queue=None) as ws:
        sent = acked = 0

        async def reader():
            nonlocal acked
            async for msg in ws:
                acked += len(json.loads(msg).get("ok", ()))

        reading = asyncio.ensure_future(reader())
        while time.time() < until:
            while sent - acked < window and time.time() < until:
                text = json.dumps(event(sent), separators=(",", ":"))
                await ws.send(lz4.block.compress(text.encode()) if lz4 else text)
                sent += 1
            await asyncio.sleep(0.001)
        deadline = time.time() + 30
        while acked < sent and time.time() < deadline:
            await asyncio.sleep(0.01)
        reading.cancel()
        counts.append(acked)


def _ws_worker(url: str, lz4: bool, conns: int, window: int, until: float, out) -> None:
    async def main():
        counts: list[int] = []
        await asyncio.gather(*(_connection(url, lz4, window, until, counts) for _ in range(conns)))
        return sum(counts)

    out.put(asyncio.run(main()))


def ws_load(gw, lz4: bool, seconds: float, connections: int, window: int, procs: int) -> int:
    url = f"ws://127.0.0.1:{gw.port}/tr/v1/ws?ack=1"
    until = time.time() + seconds
    out: multiprocessing.Queue = multiprocessing.Queue()
    share = [connections // procs + (i < connections % procs) for i in range(procs)]
    workers = [
        multiprocessing.Process(target=_ws_worker, args=(url, lz4, n, window, until, out))
        for n in share
    ]
    for w in workers:
        w.start()
    total = sum(out.get(timeout=seconds + 120) for _ in workers)
    for w in workers:
        w.join()
    return total


# --------------------------------------------------------------------------- HTTP load


def http_load(gw, seconds: float, connections: int, workdir: Path) -> tuple[int, int]:
    """wrk POSTs one 20-event JSON array per request; returns (2xx requests, other requests)."""
    batch = [event(n) for n in range(HTTP_BATCH)]
    for e in batch:
        del e["eid"]  # wrk repeats the body: let the gateway mint a new eid per event
    script = workdir / "post.lua"
    script.write_text(post_script(json.dumps(batch, separators=(",", ":"))))
    proc = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "-s",
            str(script),
            "--latency",
            f"http://127.0.0.1:{gw.port}/tr/v1/tr/",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    check_wrk_stderr(proc.stderr)
    total = bad = 0
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "requests in" in line:
            total = int(line.split()[0])
        if line.startswith("Non-2xx or 3xx responses:"):
            bad = int(line.split(":")[1])
    return total - bad, bad


# --------------------------------------------------------------------------- measuring


def stored_rows(gw) -> int:
    return int(gw.query("SELECT count() AS n FROM sfpla.events")[0]["n"])


def rows_stored_metric(gw) -> int:
    """The batcher's count of rows stored: a counter read, cheap even when the gateway is busy."""
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    for line in text.splitlines():
        if line.startswith("sfpl_rows_stored_total "):
            return int(float(line.split()[1]))
    raise RuntimeError("no sfpl_rows_stored_total in /metrics")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(gw, name: str, seconds: float, load) -> dict:
    """Run ``load`` (returns acked events) while sampling stored rows and gateway CPU."""
    before = stored_rows(gw)
    result: dict = {}
    samples: list[tuple[float, int, float]] = []

    def sampler():
        start = time.time()
        while time.time() < start + seconds + 0.5:
            samples.append((time.time(), rows_stored_metric(gw), cpu_seconds(gw.proc.pid)))
            time.sleep(0.25)

    import threading

    t = threading.Thread(target=sampler, daemon=True)
    started = time.time()
    t.start()
    result["acked"] = load()
    t.join()
    steady = [s for s in samples if started + WARMUP <= s[0] <= started + seconds]
    if len(steady) < 2:  # the gateway answered /metrics too slowly to sample the window
        steady = samples
    (t1, c1, u1), (t2, c2, u2) = steady[0], steady[-1]
    # The spool acknowledges faster than the store inserts: wait for the backlog to drain for
    # as long as the store keeps making progress (a stall of 30 s ends the wait).
    stored, progress_at = stored_rows(gw) - before, time.time()
    while stored < result["acked"] and time.time() < progress_at + 30:
        time.sleep(0.5)
        now = stored_rows(gw) - before
        if now > stored:
            stored, progress_at = now, time.time()
    result.update(
        name=name,
        acked_per_s=result["acked"] / seconds,
        stored_per_s=(c2 - c1) / (t2 - t1),
        cpu=(u2 - u1) / (t2 - t1),
        all_stored=stored >= result["acked"],
    )
    return result


# --------------------------------------------------------------------------- CPU per event


def cpu_per_event(n: int = 4000) -> dict[str, float]:
    """CPU microseconds per event in the gateway's own code, in this process, no store.

    The real ``GatewaySite``/``GatewayRoot``/WebSocket resource on a ``MemoryReactorClock``,
    fed the bytes a client sends (masked frames after a real upgrade; HTTP/1.1 POSTs), with a
    store that takes every batch at once: what one event costs the reactor thread, free of
    the store, the load generators and the network.
    """
    import lz4.block
    from twisted.internet import defer
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from bench.common import SerialisingIntake
    from sfpltracker.config import load_dict
    from sfpltracker.gateway import Gateway
    from sfpltracker.web.site import GatewayRoot, GatewaySite

    class TakeEverything:
        kind = "null"

        def insert(self, table, rows, dedup=False):
            return defer.succeed(len(rows))

    reactor = MemoryReactorClock()
    gw = Gateway(load_dict({"DataDirectory": tempfile.mkdtemp()}), reactor, TakeEverything())
    gw.intake = SerialisingIntake(reactor)  # the spool's serialisation, acknowledged at once
    site = GatewaySite(gw, GatewayRoot(gw), reactor=reactor)
    peer = IPv4Address("TCP", "203.0.113.7", 40000)
    ua = b"Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"

    def connection(first: bytes):
        proto = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        if first:  # the WebSocket upgrade: the transport now belongs to the WS protocol
            proto.dataReceived(first)
            return transport, transport.protocol
        return transport, proto

    def frame(payload: bytes, opcode: int) -> bytes:
        key = os.urandom(4)
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        else:
            head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
        body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return head + key + body

    upgrade = (
        b"GET /tr/v1/ws?ack=1 HTTP/1.1\r\nHost: t.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nUser-Agent: " + ua + b"\r\n\r\n"
    )
    texts = [json.dumps(event(i)).encode() for i in range(n)]
    cases = {
        "WebSocket text": [frame(t, 1) for t in texts],
        "WebSocket LZ4": [frame(lz4.block.compress(t), 2) for t in texts],
    }
    out = {}
    for name, frames in cases.items():
        transport, ws = connection(upgrade)
        started = time.process_time()
        for i in range(0, n, 50):  # 50 frames per socket read
            ws.dataReceived(b"".join(frames[i : i + 50]))
        out[name] = (time.process_time() - started) / n * 1e6
        assert transport.value().count(b'"ok"') == n
        reactor.advance(5)
    batch = [event(i) for i in range(HTTP_BATCH)]
    for e in batch:
        del e["eid"]
    body = json.dumps(batch).encode()
    post = (
        b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: t.example.com\r\nContent-Type: application/json\r\n"
        b"User-Agent: " + ua + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    transport, http = connection(b"")
    requests = n // HTTP_BATCH
    started = time.process_time()
    for _ in range(requests):
        http.dataReceived(post)
    out[f"HTTP POST x{HTTP_BATCH}"] = (time.process_time() - started) / n * 1e6
    assert transport.value().count(b"200 OK") == requests
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--window", type=int, default=64, help="unacked messages per connection")
    ap.add_argument("--client-procs", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the HTTP case (apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="sfpl-bench-ws-"))
    results = []
    try:
        with GatewayProcess(workdir, {"MaxConnections": 100000}) as gw:
            s, c, w, p = args.seconds, args.connections, args.window, args.client_procs
            results.append(measure(gw, "WebSocket text", s, lambda: ws_load(gw, False, s, c, w, p)))
            results.append(measure(gw, "WebSocket LZ4", s, lambda: ws_load(gw, True, s, c, w, p)))

            def http():
                ok, bad = http_load(gw, s, c, workdir)
                if bad:
                    print(f"HTTP: {bad} answers were not 2xx", file=sys.stderr)
                return ok * HTTP_BATCH

            results.append(measure(gw, f"HTTP POST x{HTTP_BATCH}", s, http))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    cpu = cpu_per_event()
    base = results[-1]["stored_per_s"] or 1
    print(
        f"\n{args.connections} connections, {args.seconds:.0f} s per case, one gateway process, "
        f"{os.cpu_count()} cores shared with the load generators\n"
    )
    print(
        f"{'case':<18} {'acked/s':>9} {'stored/s':>9} {'vs HTTP':>8} "
        f"{'gw CPU':>7} {'stored/CPU-s':>13} {'all stored':>10}"
    )
    for r in results:
        per_cpu = r["stored_per_s"] / r["cpu"] if r["cpu"] else 0
        print(
            f"{r['name']:<18} {r['acked_per_s']:>9.0f} {r['stored_per_s']:>9.0f} "
            f"{r['stored_per_s'] / base:>7.2f}x {r['cpu'] * 100:>6.0f}% {per_cpu:>13.0f} "
            f"{'yes' if r['all_stored'] else 'NO':>10}"
        )

    http_cpu = cpu[f"HTTP POST x{HTTP_BATCH}"]
    print("\nCPU per event in the gateway's code (in-process, a store that takes everything):\n")
    print(f"{'case':<18} {'us/event':>9} {'events/s/core':>14} {'vs HTTP':>8}")
    for name, micros in cpu.items():
        print(f"{name:<18} {micros:>9.1f} {1e6 / micros:>14.0f} {http_cpu / micros:>7.2f}x")


if __name__ == "__main__":
    main()
