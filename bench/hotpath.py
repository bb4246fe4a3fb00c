"""The per-request hot path of event ingestion, in one process, without sockets.

    /work/venv/bin/python bench/hotpath.py [--requests 20000] [--profile]
    /work/venv/bin/python bench/hotpath.py --instructions --requests 1000   # valgrind, minutes

``bench/ingest.py`` measures the gateway through wrk and the kernel's TCP stack, on a shared
machine where req/s moves with the neighbours' load. This script feeds raw HTTP/1.1 requests
into the same objects the gateway serves with (``EdgeSite`` -> ``EdgeFront`` -> ``GatewayRoot``
-> ``TrackResource`` -> ``EventModel``) over an in-memory transport, and prints microseconds of
CPU per request next to a bare ``twisted.web`` resource fed the same way (and the gateway behind
``HTTPServer: fast``, edge/http.py, fed the same bytes), so what the gateway
adds on top of Twisted's own HTTP handling is visible and repeatable. The intake serialises the
records as the spool does (``encode_frame``) and acknowledges at once: the spool's disk writes
happen on its own thread and are measured by ``bench/ingest.py``.

Then each step of building an event is timed alone (``request_info``, ``visitor``,
``event_row``, ``encode_frame``), for a request as wrk sends it (Host only) and as a browser
sends it (user agent, cookies, referer, accept headers), and for a JSON POST of 20 events.
``--profile`` prints cProfile's top functions of the gateway case. ``--instructions`` counts
instructions per request with valgrind instead of timing them: slow, but the same number on a
busy machine as on an idle one, so it can compare two versions of the code.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402
from twisted.web import resource, server  # noqa: E402

from bench.common import SerialisingIntake  # noqa: E402
from sfpltracker.config import load_dict  # noqa: E402
from sfpltracker.edge.assembly import Edge  # noqa: E402
from sfpltracker.gateway import Gateway  # noqa: E402
from sfpltracker.pipeline.spool import encode_frame  # noqa: E402
from sfpltracker.web.common import request_info  # noqa: E402
from sfpltracker.web.site import GatewayRoot  # noqa: E402

PATH = b"/tr/v1/tr/ename/page_view/etyp/view/app/bench"
WRK_REQUEST = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n" % PATH
BROWSER_REQUEST = (
    b"GET %s?url=https%%3A%%2F%%2Fshop.example.com%%2Fcart&utm_source=news HTTP/1.1\r\n"
    b"Host: t.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
    b"Gecko) Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Accept: image/avif,image/webp,image/apng,image/*,*/*;q=0.8\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://shop.example.com/cart\r\n"
    b"Origin: https://shop.example.com\r\n"
    b"Cookie: vid=0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e; sid=1c7b4d3f-6a2e-4d2b-8e4f-9a3b2c5d6e7f;"
    b" CookieConsent=1792; _ga=GA1.1.123.456\r\n"
    b"Sec-Fetch-Site: same-site\r\n"
    b"\r\n"
) % PATH

ROUNDS = 20  # the fastest of 20 rounds counts (see ``drive``)

_BATCH = json.dumps([{"ename": "bench", "etyp": "batch", "n": i} for i in range(20)]).encode()
POST_REQUEST = (
    b"POST /tr/v1/tr/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BATCH), _BATCH)
)

GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=")


class StubStore:
    kind = "stub"

    def query(self, sql, fmt="JSONEachRow", params=None, database=None):
        return defer.succeed(b"")


class Pixel(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"image/gif")
        return GIF

    render_POST = render_GET


def gateway_site(workdir: Path, layer: str = "twisted"):
    """The gateway's listening factory: ``EdgeSite`` (``twisted``) or ``FastHTTPFactory``."""
    clock = MemoryReactorClock()
    clock.advance(time.time())
    cfg = load_dict(
        {"DataDirectory": str(workdir / "data"), "ProxyPortTLS": "", "HTTPServer": layer}
    )
    gateway = Gateway(cfg, clock, store=StubStore())
    gateway.intake = SerialisingIntake(clock)
    root = GatewayRoot(gateway)
    edge = Edge(gateway, root, clock)
    root.fallbacks.extend(edge.fallbacks())
    return gateway, root, edge.site()


def bare_site():
    site = server.Site(Pixel(), reactor=Clock())
    site.log = lambda request: None
    return site


def drive(site, raw: bytes, n: int, rounds: int = 1) -> tuple[float, bytes]:
    """Feed ``n`` keep-alive requests into one connection; CPU seconds per request.

    With ``rounds`` > 1 the requests are split in rounds and the fastest round counts: the
    neighbours on a shared machine only ever make a round slower.
    """
    addr = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    channel.makeConnection(transport)
    channel.dataReceived(raw)  # warm up (and keep the first answer to show)
    first = transport.value()
    transport.clear()
    per_round = max(1, n // rounds)
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for _ in range(per_round):
            channel.dataReceived(raw)
            transport.clear()
        best = min(best, (time.process_time() - began) / per_round)
    channel.connectionLost(None)
    return best, first


def per_call(fn, n: int, rounds: int = 10) -> float:
    """CPU seconds per call of ``fn``, the fastest of ``rounds`` rounds."""
    fn()
    per_round = max(1, n // rounds)
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for _ in range(per_round):
            fn()
        best = min(best, (time.process_time() - began) / per_round)
    return best


def steps(gateway, root, site, raw: bytes, n: int) -> dict[str, float]:
    """Each step of turning one request into a spool frame, timed alone."""
    captured = {}

    class Capture(resource.Resource):
        isLeaf = True

        def render(self, request):
            captured["request"] = request
            return b""

    root.api[b"probe"] = Capture()  # the same request, through the same channel and front
    drive(site, raw.replace(b"/tr/v1/tr/", b"/tr/v1/probe/", 1), 1)
    request = captured["request"]
    events = gateway.events
    req = request_info(request, gateway)
    raw_event = {"ename": "page_view", "etyp": "view", "app": "bench"}
    visitor = events.visitor(req, raw_event)
    row = events.event_row(raw_event, req, visitor, server=False)
    return {
        "request_info": per_call(lambda: request_info(request, gateway), n),
        "EventModel.visitor": per_call(lambda: events.visitor(req, raw_event), n),
        "EventModel.event_row": per_call(
            lambda: events.event_row(raw_event, req, visitor, server=False), n
        ),
        "encode_frame (1 row)": per_call(lambda: encode_frame([("events", row)], 0), n),
    }


CASES = {
    "get": ("GET, wrk (Host only)", WRK_REQUEST),
    "browser": ("GET, browser", BROWSER_REQUEST),
    "post": ("POST, 20 events", POST_REQUEST),
}


def serve_only(server: str, case: str, n: int) -> None:
    """Warm up, then feed ``n`` requests and stop (what ``--instructions`` runs in valgrind)."""
    raw = CASES[case][1]
    if server == "bare":
        site = bare_site()
    else:
        layer = "fast" if server == "fast" else "twisted"
        site = gateway_site(Path(tempfile.mkdtemp(prefix="sfpl-hotpath-")), layer)[2]
    drive(site, raw, 200)
    drive(site, raw, n)


def instructions(n: int) -> None:
    """Instructions per request, counted by valgrind: the same on a busy machine as on an
    idle one, so two versions of the code can be compared when req/s and CPU time cannot.

    Each case runs twice (0 and ``n`` requests after the same warm-up); the difference divided
    by ``n`` is what one request costs, start-up excluded.
    """
    import shutil
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    def count(server: str, case: str, requests: int) -> int:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--serve-only",
                server,
                case,
                str(requests),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=True,
        ).stderr
        return int(re.search(r"I\s+refs:\s+([\d,]+)", out).group(1).replace(",", ""))

    jobs = [(server, case) for case in CASES for server in ("bare", "gateway", "fast")]
    with ThreadPoolExecutor(2) as pool:
        counted = dict(
            zip(
                jobs,
                pool.map(lambda job: (count(*job, n) - count(*job, 0)) / n, jobs),
                strict=True,
            )
        )
    print(
        f"{'request':<22} {'bare Twisted instr/req':>23} {'gateway instr/req':>18} {'ratio':>6}"
        f" {'gateway fast instr/req':>23} {'ratio':>6}"
    )
    for case, (label, _) in CASES.items():
        bare, gw = counted[("bare", case)], counted[("gateway", case)]
        fast = counted[("fast", case)]
        print(
            f"{label:<22} {bare:>23,.0f} {gw:>18,.0f} {bare / gw:>6.2f}"
            f" {fast:>23,.0f} {bare / fast:>6.2f}"
        )
    print(f"\nvalgrind --tool=cachegrind, {n} requests per case after a warm-up of 200.")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind (slow: minutes; try --requests 1000)",
    )
    parser.add_argument("--serve-only", nargs=3, metavar=("SERVER", "CASE", "N"))
    args = parser.parse_args()
    n = args.requests
    if args.serve_only:
        server, case, count = args.serve_only
        serve_only(server, case, int(count))
        return
    if args.instructions:
        instructions(n)
        return
    workdir = Path(tempfile.mkdtemp(prefix="sfpl-hotpath-"))
    gateway, root, site = gateway_site(workdir)
    fast_site = gateway_site(workdir / "fast", "fast")[2]

    rows = []
    for label, raw in CASES.values():
        bare, _ = drive(bare_site(), raw, n, ROUNDS)
        gw, answer = drive(site, raw, n, ROUNDS)
        fast, fast_answer = drive(fast_site, raw, n, ROUNDS)
        for a in (answer, fast_answer):
            if not a.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"the gateway did not answer 200:\n{a.decode()}")
        rows.append((label, bare, gw, fast))
    print(
        f"{'request':<22} {'bare Twisted us/req':>20} {'gateway us/req':>15} {'ratio':>6}"
        f" {'gateway fast us/req':>20} {'ratio':>6}"
    )
    for label, bare, gw, fast in rows:
        print(
            f"{label:<22} {bare * 1e6:>20.1f} {gw * 1e6:>15.1f} {bare / gw:>6.2f}"
            f" {fast * 1e6:>20.1f} {bare / fast:>6.2f}"
        )

    print(f"\n{'step (browser request)':<26} {'us/call':>8}")
    for name, seconds in steps(gateway, root, site, BROWSER_REQUEST, n).items():
        print(f"{name:<26} {seconds * 1e6:>8.1f}")
    print(
        f"\n{n} requests per case in {ROUNDS} rounds; CPU time of this process "
        "(time.process_time) in the fastest round."
    )

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        drive(site, BROWSER_REQUEST, n)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
