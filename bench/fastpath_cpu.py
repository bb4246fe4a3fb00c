"""CPU per request of the fast layer's own answers, in one process, without sockets.

    /work/venv/bin/python bench/fastpath_cpu.py [--requests 20000]

Raw HTTP/1.1 requests fed to the gateway's fast-layer factory over a ``StringTransport``, as
``bench/hotpath.py`` does for the tracking routes (its ``drive()``: the fastest of 20 rounds
counts), for ``GET /ping``, a 4 KiB static file of a ``Sites`` root and a short-link hit (302 +
the click handed to a serialising intake; the link put in the link cache). To compare two
versions of the code, run this file from a copy of each tree (``git archive <rev> | tar -x``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import edge  # noqa: E402
import hotpath  # noqa: E402

from sfpltracker.links.model import Link  # noqa: E402

CASES = {
    "GET /ping": (b"/ping", b"127.0.0.1:8080", b"HTTP/1.1 200"),
    "GET static file 4 KiB": (b"/page.html", b"127.0.0.1:8080", b"HTTP/1.1 200"),
    "short-link hit, 302 + click": (b"/spring", b"go.bench", b"HTTP/1.1 302"),
}


def fast_site(workdir: Path):
    (workdir / "www").mkdir()
    (workdir / "www" / "page.html").write_bytes(edge.PAGE)
    clock = hotpath.MemoryReactorClock()
    clock.advance(time.time())
    cfg = hotpath.load_dict(
        {
            "DataDirectory": str(workdir / "data"),
            "ProxyPortTLS": "",
            "HTTPServer": "fast",
            "RedirectAllowHosts": ["example.com"],
            "Sites": {"*": {"Root": str(workdir / "www"), "CacheControl": "public, max-age=60"}},
        }
    )
    gateway = hotpath.Gateway(cfg, clock, store=hotpath.StubStore())
    gateway.intake = hotpath.SerialisingIntake(clock)
    root = hotpath.GatewayRoot(gateway)
    front = hotpath.Edge(gateway, root, clock)
    root.fallbacks.extend(front.fallbacks())
    link = Link(
        id="0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e",
        host="go.bench",
        path="/spring",
        urlto="https://example.com/landing",
        location="https://example.com/landing",
    )
    root.links.cache.apply(link.key, link)
    return front.site()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    site = fast_site(Path(tempfile.mkdtemp(prefix="sfpl-bench-fastcpu-")))
    print(f"{'request':<30}{'CPU us/request':>16}")
    for name, (path, host, status) in CASES.items():
        raw = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)
        best, first = hotpath.drive(site, raw, args.requests, rounds=hotpath.ROUNDS)
        assert first.startswith(status), first[:200]
        print(f"{name:<30}{best * 1e6:>16.1f}")


if __name__ == "__main__":
    main()
