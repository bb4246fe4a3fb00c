"""Resource soak: a real gateway under random input, its memory and descriptors every second.

    .venv/bin/python bench/soak.py [--requests 20000] [--workers 6] [--config config.json]

Starts the gateway of ``--config`` (the embedded chDB store by default) with free ports and a
fresh data directory, and sends ``--requests`` mixed requests over keep-alive connections:

* GET ``/tr/v1/tr/`` and the pixel ``/tr/v1/img/`` with 50 random query keys;
* POST ``/tr/v1/tr/`` batches (1-4 events) and ``/tr/v1/str/`` events whose ``params`` hold
  50 random keys of random JSON types (numbers, text, booleans, null, arrays, objects; depth
  <= 5), the input that made one ``events`` part hold ~10,000 files (issue 12);
* garbage bodies (malformed JSON, JSON that is not an object) that must get a 4xx;
* every 20th request a *good* event with a known ``eid`` (GET, POST alone, POST inside a
  random batch, or pixel).

A sampler reads ``VmRSS`` and ``RssAnon`` (``/proc/PID/status``), the descriptor count
(``/proc/PID/fd``) and the memory chDB tracks (``system.metrics``, through the query
listener) of the gateway every second, from start-up until every acknowledged good event is stored,
plus a few seconds for the merges that follow. It prints the curve, then checks that every
good event answered 2xx is stored exactly once (``count()`` per eid, without ``FINAL``).
``tests/test_soak.py`` runs the same and asserts the budgets (docs/resources.md).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import string
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import all_up  # noqa: E402
from params_column import random_key, random_params  # noqa: E402

from tests.gateway_process import GatewayProcess  # noqa: E402

GOOD = "soak_good"
GOOD_EVERY = 20  # one good event per this many requests
LISTENER_KEYS = {"ProxyPort", "ProxyPortTLS", "ProxyExceptHTTP", "QueryPort"}
LISTENER_KEYS |= {"DataDirectory", "StaticDirectory", "Domains"}


@dataclass
class Sample:
    t: float
    rss_mb: int
    anon_mb: int  # of which anonymous memory (the rest is mostly chDB's mapped library)
    engine_mb: int  # memory chDB tracks (MemoryTracking), -1 when the query is refused
    fds: int
    sent: int
    stored: int


@dataclass
class SoakResult:
    requests: int
    statuses: Counter = field(default_factory=Counter)
    acked_good: list[str] = field(default_factory=list)
    stored_good: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    max_part_files: int = 0
    send_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    # Workers > 1: the samples are the store process's (it holds chDB); the workers' own peaks:
    worker_max_rss_mb: int = 0
    worker_max_anon_mb: int = 0
    worker_max_fds: int = 0

    @property
    def max_rss_mb(self) -> int:
        return max(s.rss_mb for s in self.samples)

    @property
    def max_anon_mb(self) -> int:
        return max(s.anon_mb for s in self.samples)

    @property
    def max_fds(self) -> int:
        return max(s.fds for s in self.samples)

    @property
    def missing(self) -> list[str]:
        return [e for e in self.acked_good if self.stored_good.get(e, 0) == 0]

    @property
    def duplicated(self) -> dict[str, int]:
        return {e: n for e, n in self.stored_good.items() if n != 1}


# -- the gateway's process --------------------------------------------------------------------


def proc_status_mb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def engine_mb(gw: GatewayProcess) -> int:
    """chDB's tracked memory, through the query listener (-1 when it does not answer)."""
    try:
        resp = gw.query_raw(
            "SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'", "TabSeparated"
        )
        return int(resp.body) // 2**20 if resp.status == 200 else -1
    except (OSError, ValueError):
        return -1


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def max_part_files(data_dir: Path) -> int:
    """The most files in one part directory of any chDB table (``store/<x>/<uuid>/<part>``)."""
    most = 0
    for part in (data_dir / "chdb" / "store").glob("*/*/*"):
        if part.is_dir() and part.name != "detached":
            most = max(most, sum(1 for _ in part.iterdir()))
    return most


# -- requests ----------------------------------------------------------------------------------


def _scalar_text(rnd: random.Random) -> str:
    kind = rnd.randrange(5)
    if kind == 0:
        return str(rnd.randrange(-(10**9), 10**9))
    if kind == 1:
        return f"{rnd.uniform(-1e4, 1e4):.3f}"
    if kind == 2:
        return rnd.choice(("true", "false"))
    if kind == 3:
        return "".join(rnd.choices(string.ascii_letters + " -", k=rnd.randrange(0, 20)))
    return f"2026-01-0{rnd.randrange(1, 10)}T10:00:00Z"


def _query(rnd: random.Random, keys: int = 50) -> str:
    return urlencode({random_key(rnd): _scalar_text(rnd) for _ in range(keys)})


def _random_event(rnd: random.Random) -> dict:
    return {"ename": "soak_random", "etyp": "soak", "params": random_params(rnd)}


def _good_event(eid: str) -> dict:
    return {"eid": eid, "ename": GOOD, "etyp": "soak", "params": {"plan": "pro"}}


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    good: list[str] = field(default_factory=list)  # eids of good events it carries
    garbage: bool = False


def make_request(rnd: random.Random, i: int) -> Request:
    """Request number ``i``: a good event every GOOD_EVERY, else random input."""
    if i % GOOD_EVERY == GOOD_EVERY - 1:
        eid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        form = rnd.randrange(4)
        if form == 0:
            q = urlencode({"eid": eid, "ename": GOOD, "etyp": "soak", "plan": "pro"})
            return Request("GET", f"/tr/v1/tr/?{q}", good=[eid])
        if form == 1:
            q = urlencode({"eid": eid, "ename": GOOD, "etyp": "soak", "plan": "pro"})
            return Request("GET", f"/tr/v1/img/?{q}", good=[eid])
        if form == 2:
            return Request("POST", "/tr/v1/tr/", json.dumps(_good_event(eid)).encode(), [eid])
        batch = [_random_event(rnd) for _ in range(rnd.randrange(1, 4))]
        batch.insert(rnd.randrange(len(batch) + 1), _good_event(eid))
        return Request("POST", "/tr/v1/tr/", json.dumps(batch).encode(), [eid])
    kind = rnd.random()
    if kind < 0.30:
        return Request("GET", f"/tr/v1/tr/ename/soak_random/?{_query(rnd)}")
    if kind < 0.45:
        return Request("GET", f"/tr/v1/img/?ename=soak_random&{_query(rnd)}")
    if kind < 0.80:
        batch = [_random_event(rnd) for _ in range(rnd.randrange(1, 5))]
        return Request("POST", "/tr/v1/tr/", json.dumps(batch).encode())
    if kind < 0.95:
        return Request("POST", "/tr/v1/str/", json.dumps(_random_event(rnd)).encode())
    garbage = rnd.choice(
        [b'{"ename": "x", "params": {', b"[1, 2, 3]", b'"text"', b"\xff\xfe{}", b"{" * 40]
    )
    return Request("POST", "/tr/v1/tr/", garbage, garbage=True)


class Client:
    """One keep-alive connection per worker thread; reconnects after an error."""

    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()

    def send(self, req: Request) -> int:
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, 60)
            try:
                headers = {"Content-Type": "application/json"} if req.body is not None else {}
                conn.request(req.method, req.path, body=req.body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self.local.conn = None
                return resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    return 0  # no answer: not acknowledged
        return 0


# -- the run -------------------------------------------------------------------------------------


def gateway_overrides(config: Path) -> dict:
    """The config file's settings, without its listeners and directories (free ports and a
    fresh data directory are the harness's)."""
    cfg = json.loads(config.read_text())
    return {k: v for k, v in cfg.items() if k not in LISTENER_KEYS}


def _stored_good(gw: GatewayProcess) -> dict[str, int]:
    rows = gw.query(
        f"SELECT toString(eid) AS eid, count() AS n FROM sfpla.events "
        f"WHERE ename = '{GOOD}' GROUP BY eid"
    )
    return {r["eid"]: int(r["n"]) for r in rows}


def run(
    workdir: Path,
    requests: int = 20_000,
    workers: int = 6,
    seed: int = 12,
    config: Path = ROOT / "config.json",
    drain_timeout: float = 120,
    settle: float = 5,
    log=print,
    gateway_workers: int = 1,
) -> SoakResult:
    """``gateway_workers``: the gateway's ``Workers`` (1 whatever config.json says, so the
    samples stay one process's unless asked; past 1 they are the store process's, and the
    workers' peaks are kept apart)."""
    result = SoakResult(requests)
    rnd = random.Random(seed)
    plan = [make_request(rnd, i) for i in range(requests)]
    overrides = {**gateway_overrides(config), "Workers": gateway_workers}
    gw = GatewayProcess(Path(workdir), overrides, name="soak")
    sent = [0]
    stored = [0]
    stop = threading.Event()
    t0 = time.monotonic()

    def sample_forever(pid: int) -> None:
        workers: list[int] = []
        if gateway_workers > 1:
            procs = all_up(gw)
            pid = next(p["pid"] for p in procs if p["role"] == "store")
            workers = [p["pid"] for p in procs if p["role"] == "worker"]
        while not stop.is_set():
            for w in workers:
                try:
                    result.worker_max_rss_mb = max(
                        result.worker_max_rss_mb, proc_status_mb(w, "VmRSS")
                    )
                    result.worker_max_anon_mb = max(
                        result.worker_max_anon_mb, proc_status_mb(w, "RssAnon")
                    )
                    result.worker_max_fds = max(result.worker_max_fds, proc_fds(w))
                except OSError:
                    pass  # restarted: the next sample reads the new one's via /health
            try:
                result.samples.append(
                    Sample(
                        time.monotonic() - t0,
                        proc_status_mb(pid, "VmRSS"),
                        proc_status_mb(pid, "RssAnon"),
                        engine_mb(gw),
                        proc_fds(pid),
                        sent[0],
                        stored[0],
                    )
                )
            except OSError:  # the process ended
                return
            stop.wait(1.0)

    with gw:
        sampler = threading.Thread(target=sample_forever, args=(gw.proc.pid,), daemon=True)
        sampler.start()
        client = Client(gw.port)

        def one(req: Request) -> tuple[Request, int]:
            status = client.send(req)
            sent[0] += 1
            return req, status

        t_send = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            for req, status in pool.map(one, plan):
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.acked_good.extend(req.good)
                elif req.garbage and not 400 <= status < 500:
                    result.errors.append(f"garbage {req.body[:40]!r} answered {status}")
        result.send_seconds = time.monotonic() - t_send
        log(f"sent {requests} requests in {result.send_seconds:.0f} s: {dict(result.statuses)}")

        deadline = time.monotonic() + drain_timeout
        while True:
            try:
                result.stored_good = _stored_good(gw)
            except (AssertionError, OSError) as e:
                result.errors.append(f"query: {e}"[:300])
            stored[0] = len(result.stored_good)
            if len(result.stored_good) >= len(set(result.acked_good)):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        time.sleep(settle)  # merges after the last insert
        result.stored_good = _stored_good(gw)
        stop.set()
        sampler.join()
        result.max_part_files = max_part_files(gw.workdir / "data")
    return result


def report(result: SoakResult, log=print, every: int = 5) -> None:
    log(
        f"{'t s':>6} {'RSS MB':>7} {'anon MB':>7} {'chDB MB':>7} {'fds':>5} {'sent':>6} "
        f"{'stored good':>11}"
    )
    shown = result.samples[::every]
    if result.samples and result.samples[-1] is not shown[-1]:
        shown.append(result.samples[-1])
    for s in shown:
        log(
            f"{s.t:6.0f} {s.rss_mb:7d} {s.anon_mb:7d} {s.engine_mb:7d} {s.fds:5d} {s.sent:6d} "
            f"{s.stored:11d}"
        )
    first = result.samples[0]
    log(
        f"RSS MB: first {first.rss_mb}, max {result.max_rss_mb}, last "
        f"{result.samples[-1].rss_mb}; descriptors: max {result.max_fds}; "
        f"most files in one part: {result.max_part_files}"
    )
    if result.worker_max_rss_mb:
        log(
            f"(Workers > 1: the samples are the store process's) workers: RSS MB max "
            f"{result.worker_max_rss_mb}, anon MB max {result.worker_max_anon_mb}, "
            f"descriptors max {result.worker_max_fds}"
        )
    log(
        f"good events acknowledged {len(result.acked_good)}, stored "
        f"{sum(1 for e in result.acked_good if e in result.stored_good)}, missing "
        f"{len(result.missing)}, stored more than once {len(result.duplicated)}"
    )
    for e in result.errors[:10]:
        log(f"error: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--config", type=Path, default=ROOT / "config.json")
    ap.add_argument("--workdir", type=Path, help="keep the gateway's directory here")
    ap.add_argument("--every", type=int, default=5, help="print every Nth sample (1 s each)")
    ap.add_argument("--gateway-workers", type=int, default=1, help="the gateway's Workers")
    args = ap.parse_args()
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    result = run(
        workdir,
        args.requests,
        args.workers,
        args.seed,
        args.config,
        gateway_workers=args.gateway_workers,
    )
    report(result, every=args.every)
    if not args.workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    ok = not result.missing and not result.duplicated and not result.errors
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
