"""How the Conversions API output batches and retries, against the local Graph API contract
server (tests/graph_api.py) and a real gateway process.

    .venv/bin/python bench/capi.py [--events 5000] [--outage 10] [--fail 500]

1. Steady: ``--events`` Purchase events POSTed in requests of 50 as fast as one client can;
   how many Graph API requests carried them, their sizes, how long until the last arrived.
2. Outage: Meta answers ``--fail`` (500 or 429) for ``--outage`` seconds while as many events are
   accepted; how many requests were retried during it and at what intervals (backoff and
   circuit breaker), then how long after Meta is back until every event arrived, in how many
   requests. Both: duplicates and missing events (must be 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_process import GatewayProcess  # noqa: E402
from tests.graph_api import GraphAPI  # noqa: E402

PIXEL, TOKEN = "1234567890", "bench-token"
CONSENT = "CookieConsent=5376"


def send(gw, n: int, per_request: int = 50) -> list[str]:
    eids = []
    for i in range(0, n, per_request):
        batch = [
            {"ename": "purchase", "eid": str(uuid.uuid4()), "value": 10, "currency": "EUR"}
            for _ in range(min(per_request, n - i))
        ]
        resp = gw.http(
            "POST",
            "/tr/v1/tr/",
            json_body=batch,
            headers={"Cookie": CONSENT, "User-Agent": "bench/1.0"},
        )
        assert resp.status in (200, 204), resp
        eids += [e["eid"] for e in batch]
    return eids


def sizes(graph, outcome="ok", since=0) -> list[int]:
    return [n for o, n in graph.requests[since:] if o == outcome]


def check(graph, eids) -> str:
    got = graph.event_ids()
    dup = len(got) - len(set(got))
    missing = len(set(eids) - set(got))
    return f"duplicates {dup}, missing {missing}, contract violations {len(graph.violations)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--outage", type=float, default=10.0)
    ap.add_argument("--fail", default="500", choices=("500", "429"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, GraphAPI(PIXEL, TOKEN) as graph:
        entry = {
            "Type": "facebook",
            "PixelId": PIXEL,
            "AccessToken": TOKEN,
            "Events": ["Purchase"],
            "GraphURL": graph.url,
        }
        with GatewayProcess(Path(tmp), {"Notify": [entry]}) as gw:
            t0 = time.monotonic()
            eids = send(gw, args.events)
            accepted = time.monotonic() - t0
            graph.wait_for(lambda: set(eids) <= set(graph.event_ids()), timeout=600)
            done = time.monotonic() - t0
            s = sizes(graph)
            print(
                f"steady: {len(eids)} events accepted in {accepted:.1f}s, all at Meta after "
                f"{done:.1f}s; {len(s)} requests, events per request min {min(s)} / median "
                f"{statistics.median(s):.0f} / mean {statistics.mean(s):.0f} / max {max(s)}; "
                + check(graph, eids)
            )

            before = len(graph.requests)
            graph.fail_always(args.fail)
            t1 = time.monotonic()
            more = send(gw, args.events)
            time.sleep(max(0.0, args.outage - (time.monotonic() - t1)))
            graph.heal()
            stamps = graph.arrivals[before:]
            healed = time.monotonic()
            graph.wait_for(lambda: set(more) <= set(graph.event_ids()), timeout=600)
            recovered = time.monotonic() - healed
            failed = [o for o, _ in graph.requests[before:] if o == args.fail]
            after = sizes(graph, since=before)
            gaps = [round(b - a, 2) for a, b in zip(stamps, stamps[1:], strict=False)]
            print(
                f"outage ({args.fail} for {args.outage:g}s, {len(more)} events accepted "
                f"meanwhile): {len(failed)} failed attempts, seconds between them {gaps}; "
                f"after Meta was back: all delivered in {recovered:.1f}s in {len(after)} "
                f"requests (sizes {after[:8]}{' ...' if len(after) > 8 else ''}); "
                + check(graph, eids + more)
            )


if __name__ == "__main__":
    main()
