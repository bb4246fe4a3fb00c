"""What the messaging tables cost per event, in one process (no sockets, no store).

    /work/venv/bin/python bench/messaging.py [--seconds 2]

For the same input the script times (CPU microseconds per event, best of 3 runs):
building the ``events`` row, then the records the web layer hands to the intake
(``event_records``: the events row alone without a tid; plus mthreads/mstore/mtriage with one),
then serialising those records as the spool does (``encode_frame``). An event without a tid
pays one dict lookup for messaging; the ratios show what a thread event adds.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sfpltracker.ingest.messaging import event_records  # noqa: E402
from sfpltracker.pipeline.spool import encode_frame  # noqa: E402
from tests.test_ingest import model, req  # noqa: E402

PAGE_VIEW = {
    "ename": "page_view",
    "etyp": "view",
    "url": "https://example.com/a",
    "oid": str(uuid.uuid4()),
    "uid": str(uuid.uuid4()),
}
MESSAGE = {
    **PAGE_VIEW,
    "ename": "message_sent",
    "tid": str(uuid.uuid4()),
    "subject": "Your order shipped",
    "msg": "Track it here",
    "urgency": 3,
    "users": [str(uuid.uuid4()), str(uuid.uuid4())],
    "mtypes": ["email", "push"],
    "repl": {"name": "Ada"},
    "scheduled": "2026-11-18T10:00:00Z",
    "alias": "order:42",
}


def per_event_us(fn, seconds: float) -> float:
    """Best of three runs of ``seconds`` each: CPU microseconds per call."""
    best = float("inf")
    for _ in range(3):
        n, start = 0, time.process_time()
        while time.process_time() - start < seconds:
            for _ in range(200):
                fn()
            n += 200
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    m, r = model(), req()
    visitor = m.visitor(r)
    results = {}
    for name, raw in (("page view, no tid", PAGE_VIEW), ("message, tid", MESSAGE)):
        row = m.event_row(raw, r, visitor, server=True)
        records = event_records(raw, row)
        build = per_event_us(
            lambda raw=raw: m.event_row(raw, r, visitor, server=True), args.seconds
        )
        both = per_event_us(
            lambda raw=raw: event_records(raw, m.event_row(raw, r, visitor, server=True)),
            args.seconds,
        )
        spool = per_event_us(lambda records=records: encode_frame(records, 0), args.seconds)
        results[name] = (len(records), build, both, spool)

    base = results["page view, no tid"]
    print(f"{'event':<20}{'records':>8}{'events row':>12}{'row+records':>13}{'spool frame':>13}"
          f"{'total':>9}{'vs no tid':>11}")  # fmt: skip
    for name, (n, build, both, spool) in results.items():
        total = both + spool
        print(
            f"{name:<20}{n:>8}{build:>10.1f}us{both:>11.1f}us{spool:>11.1f}us{total:>7.1f}us"
            f"{total / (base[2] + base[3]):>10.2f}x"
        )
    print(f"\nCPU microseconds per event, best of 3 x {args.seconds:g} s per case")


if __name__ == "__main__":
    main()
