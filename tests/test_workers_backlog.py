"""Workers > 1: a backlog in every worker's series is stored, in inserts the store can take.

The store process has one batcher for every worker series, each series' loader holding up to
``loader.MAX_IN_FLIGHT_BYTES`` of frames: with backlogs in several series (the store process
down or behind under load) a batch grew to ``MAX_INSERT_ROWS`` page views, which the embedded
store refuses (MEMORY_LIMIT_EXCEEDED under its memory limit); begun in the insert journal, it
was re-sent whole again and again and nothing more was stored. Real processes and chDB.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from sfpltracker.pipeline.spool import MAGIC, encode_frame, list_segments, segment_path
from tests.gateway_process import GatewayProcess
from tests.test_workers import health, wait_until

SERIES = ("w1", "w2", "w3")
EVENTS_PER_SERIES = 20_000  # ~9 MiB of frames each: more than a loader holds in flight
PER_FRAME = 20


def page_view(n: int, now_ms: int) -> dict:
    """An ``events`` row as a worker spools a page view (its fields, a real-sized url)."""
    return {
        "ename": "page_view",
        "etyp": "view",
        "app": "backlog",
        "eid": str(uuid.uuid4()),
        "vid": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "created_at": now_ms + n,
        "hhash": "2eauxq",
        "hostname": "shop.example.com",
        "url": f"https://shop.example.com/catalogue/category-{n % 97}/item-{n}?ref=newsletter",
        "ja4h": "ge11nr030000_f07b30782785_000000000000_000000000000",
        "new_vid": 1,
        "ip": "127.0.0.0",
        "iphash": "cb724a4bc778b0b0dfde14302a",
        "bhash": "109vei4",
        "params": "{}",
        "server": 0,
        "bot": 0,
        "browser": "Chrome",
        "os": "Linux",
        "device": "Desktop",
    }


def write_backlog(series_dir: Path, first: int, now_ms: int) -> set[str]:
    """A new segment of page views after the series' own; their eids."""
    seq = max(list_segments(series_dir), default=0) + 1
    eids = set()
    with open(segment_path(series_dir, seq), "wb") as f:
        f.write(MAGIC)
        for start in range(first, first + EVENTS_PER_SERIES, PER_FRAME):
            rows = [page_view(n, now_ms) for n in range(start, start + PER_FRAME)]
            eids.update(r["eid"] for r in rows)
            f.write(encode_frame([["events", r] for r in rows], now_ms))
    return eids


def test_backlogs_in_every_series_are_stored_in_inserts_the_store_takes(tmp_path):
    config = {"Workers": len(SERIES)}
    with GatewayProcess(tmp_path, config) as gw:
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        gw.stop()
        spool = Path(gw.config["DataDirectory"]) / "spool"
        now_ms = int(time.time() * 1000)
        eids: set[str] = set()
        for i, name in enumerate(SERIES):
            eids |= write_backlog(spool / name, i * EVENTS_PER_SERIES, now_ms)
        gw.start()
        want = len(eids)
        rows = gw.wait_for(
            "SELECT count() AS n, uniqExact(eid) AS u FROM sfpla.events WHERE app = 'backlog'",
            lambda r: int(r[0]["n"]) >= want,
            timeout=120,
        )
        assert (int(rows[0]["n"]), int(rows[0]["u"])) == (want, want), gw.log_tail()
