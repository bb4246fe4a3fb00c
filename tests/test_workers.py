"""Workers > 1: a supervisor, a store process and ingest workers, as real processes.

Each test starts ``twistd sfpltracker`` with ``Workers: 2`` (tests/gateway_process.py) and
asserts outcomes: every acknowledged event stored exactly once, whichever worker took it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gateway_process import GatewayProcess, http_request

EVENTS_SQL = "SELECT count() AS n, uniqExact(ename) AS u FROM sfpla.events"


def send(gw: GatewayProcess, names: list[str], threads: int = 8) -> list[str]:
    """One GET tracking request per name, each on its own connection; the names acknowledged."""

    def one(name: str) -> str | None:
        try:
            r = http_request(gw.port, "GET", f"/tr/v1/tr/ename/{name}", timeout=10)
        except OSError:
            return None
        return name if 200 <= r.status < 300 else None

    with ThreadPoolExecutor(threads) as pool:
        return [n for n in pool.map(one, names) if n is not None]


def stored(gw: GatewayProcess, acked: list[str], timeout: float = 60) -> dict:
    """Wait until every acknowledged name is stored; the counts of rows and distinct names."""
    want = len(acked)
    rows = gw.wait_for(EVENTS_SQL, lambda r: int(r[0]["u"]) >= want, timeout=timeout)
    return {"n": int(rows[0]["n"]), "u": int(rows[0]["u"])}


def names_stored(gw: GatewayProcess, names: list[str]) -> set[str]:
    rows = gw.query("SELECT DISTINCT ename FROM sfpla.events")
    return {r["ename"] for r in rows} & set(names)


@pytest.fixture
def workers(tmp_path):
    with GatewayProcess(tmp_path, {"Workers": 2}) as gw:
        yield gw


def test_two_workers_store_every_event_once(workers):
    gw = workers
    names = [f"ev{i}" for i in range(300)]
    acked = send(gw, names)
    assert len(acked) == len(names)
    counts = stored(gw, acked)
    assert counts == {"n": len(names), "u": len(names)}
    # Both workers wrote a series of their own; the store process loaded them all.
    spool = gw.workdir / "data" / "spool"
    assert {"w1", "w2"} <= {p.name for p in spool.iterdir()}
    health = json.loads(gw.http("GET", "/health").body)
    roles = sorted((p["role"], p["name"]) for p in health["processes"])
    assert roles == [("store", "store"), ("worker", "w1"), ("worker", "w2")]
    assert all(p["pid"] for p in health["processes"])
