"""How fast the dashboard answers over a large store: p50 / p95 of every ``/dashboard/api/``
figure over the last 30 days.

    .venv/bin/python bench/dashboard.py [--events 10000000] [--dir DIR] [--rounds 20]

1. Loads ``--events`` generated events (90 days up to today, in sessions of 1-5 events; pages,
   referrers, countries, devices, hosts and visitors skewed: a few are most of the traffic;
   3% of visitors bots, 1% of sessions arriving by one of 200 short links, goals) plus
   payments, consent decisions and the short links into an embedded store, with
   ``INSERT ... SELECT`` on chDB itself (not through ingest): the materialized views fill the
   derived tables as they do for the gateway's inserts. Each event carries what the gateway
   stores for static/track.js's events (``EVENTS_SQL``): country, device, browser and OS are
   the visitor's; a campaign session's (20%) utm source/medium/campaign are on its landing
   event only (its url has the utm query; later pages have none); ``last`` is the outside
   referrer (or none) of the landing event and the previous page for each later one.
2. Starts a real gateway on that data directory, creates an account with the CLI, signs in to
   the dashboard and times each figure over HTTP on the query listener (``--rounds`` requests
   each, after one warm-up), without filters and with a segment filter (country), which makes
   the figures read the per-segment rollups (``dash_segments``, ``dash_session_segs``, ...)
   or ``events`` instead of the other derived tables.

``--dir`` keeps the loaded store for another run (loading is skipped when it holds data);
``--rebuild-rollups`` then makes the dashboard's rollups (``dash_*``) again from ``events`` with
their views' own SELECT, as a store made with the current schema holds them (a store loaded
before a rollup existed, or before its sort key changed): ``dashboard/rollups.py``, the code
of ``python -m sfpltracker dashboard rebuild``.
``--figures goals`` times only the figures named (comma-separated); next to each figure's
p50 / p95 the median CPU the gateway's process tree used per request (``/proc``).
``--insert-cost`` times a 1,000-event INSERT into a new store with every materialized view on
``events`` and without the latest the dashboard's speed added (``NEW_VIEWS``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import TreeCpu  # noqa: E402
from sfpltracker.dashboard import rollups  # noqa: E402
from sfpltracker.ingest.ids import short_hash  # noqa: E402
from sfpltracker.store.embedded import store as embedded  # noqa: E402
from sfpltracker.store.embedded.store import EmbeddedStore  # noqa: E402
from sfpltracker.store.schema import load_statements  # noqa: E402
from tests.gateway_process import GatewayProcess, http_request  # noqa: E402

CHUNK = 1_000_000  # events per INSERT ... SELECT (bounded memory, progress shown)

# numbers(n) -> one row per event: event `number` belongs to session intDiv(number, 5) at
# position number % 5, kept when the position is below the session's length (1..5, mean 3).
# What each event carries is what the gateway stores for static/track.js's events:
# - country (GeoIP of the visitor's address), device, browser, OS and bot (its user agent) are a
#   visitor's: drawn per visitor (skewed: a few countries are most visitors);
# - source/medium/campaign come from the page's own utm_ query (track.js sends them from
#   location.search; ingest keeps them per event, no session attribution): the landing event
#   of a campaign session (20%) carries them and its url the query; the session's later pages
#   have no utm query, so their events carry none;
# - `last` is document.referrer: an outside site (or none) for the landing event, the previous
#   page of the session for each later one (the gateway stores it as sent).
EVENTS_SQL = """
INSERT INTO sfpla.events (eid, vid, sid, hhash, hostname, created_at, url, last, source,
    medium, campaign, country, device, browser, os, bot, server, ename, etyp, outcome, rid,
    new_vid, duration)
SELECT
    generateUUIDv4(number) AS eid,
    reinterpretAsUUID(concat(reinterpretAsString(cityHash64(v, 1)),
                             reinterpretAsString(cityHash64(v, 2)))) AS vid,
    reinterpretAsUUID(concat(reinterpretAsString(cityHash64(s, 3)),
                             reinterpretAsString(cityHash64(s, 4)))) AS sid,
    hh AS hhash, host AS hostname,
    fromUnixTimestamp64Milli(toInt64({start_ms} + session_at + pos * 40000)) AS created_at,
    concat('https://', host, if(page = 1, '/', concat('/p/', toString(page))),
           if(pos = 0, utm_query, '')) AS url,
    if(pos = 0,
       if(cityHash64(s, 5) % 2 = 0, concat('https://', ref_domain, '/'), ''),
       concat('https://', host, if(prev_page = 1, '/', concat('/p/', toString(prev_page))),
              if(pos = 1, utm_query, ''))) AS last,
    if(utm AND pos = 0, src, '') AS source,
    if(utm AND pos = 0, med, '') AS medium,
    if(utm AND pos = 0, camp, '') AS campaign,
    ['US', 'DE', 'GB', 'FR', 'IN', 'BR', 'CA', 'NL', 'ES', 'IT', 'JP', 'AU', 'PL', 'SE', 'MX',
     'CH', 'AT', 'BE', 'DK', 'NO', 'FI', 'IE', 'PT', 'CZ', 'RO', 'KR', 'SG', 'ZA', 'AR', 'TR']
        [toUInt32(pow(30, cityHash64(v, 8) / 18446744073709551615.0))] AS country,
    if(bot, 'Bot', ['Desktop', 'Desktop', 'Desktop', 'Mobile', 'Mobile', 'Tablet'][1 + cityHash64(v, 9) % 6])
        AS device,
    if(bot, 'Googlebot', ['Chrome', 'Chrome', 'Safari', 'Firefox', 'Edge', 'Chrome Mobile',
        'Mobile Safari', 'Samsung Internet'][1 + cityHash64(v, 10) % 8]) AS browser,
    if(bot, '', ['Windows', 'Mac OS X', 'Linux', 'Android', 'iOS', 'Windows', 'Android', 'iOS']
        [1 + cityHash64(v, 10) % 8]) AS os,
    bot,
    0 AS server,
    multiIf(link AND pos = 0, 'short_rdr', pos = 0, 'page_view', r(11) < 0.85, 'page_view',
            r(11) < 0.95, 'signup', r(11) < 0.99, 'add_to_cart', 'purchase') AS ename,
    'view' AS etyp,
    multiIf(ename = 'purchase', 'sale', ename = 'signup', 'lead', '') AS outcome,
    if(link AND pos = 0,
       reinterpretAsUUID(concat(reinterpretAsString(cityHash64(link_i, 12)),
                                reinterpretAsString(cityHash64(link_i, 13)))),
       toUUID('00000000-0000-0000-0000-000000000000')) AS rid,
    toUInt8(pos = 0 AND cityHash64(v, 14) % 3 = 0) AS new_vid,
    toInt64(0) AS duration
FROM (
    SELECT number, intDiv(number, 5) AS s, number % 5 AS pos,
           1 + cityHash64(s, 0) % 5 AS len,
           toUInt64(pow({visitors}, cityHash64(s, 15) / 18446744073709551615.0)) AS v,
           cityHash64(s, 16) % ({days} * 86400000) AS session_at,
           toUInt32(pow(2000, cityHash64(number, 17) / 18446744073709551615.0)) AS page,
           -- the page of the session's previous event (its referrer; unused at position 0)
           toUInt32(pow(2000, cityHash64(number - 1, 17) / 18446744073709551615.0)) AS prev_page,
           ['www.shop.example', 'blog.shop.example', 'docs.shop.example']
               [multiIf(cityHash64(s, 18) % 10 < 7, 1, cityHash64(s, 18) % 10 < 9, 2, 3)] AS host,
           {host_hashes} AS hh,
           concat('ref', toString(toUInt32(pow(200, cityHash64(s, 19) / 18446744073709551615.0))),
                  '.example') AS ref_domain,
           cityHash64(s, 20) % 5 = 0 AS utm,
           ['google', 'newsletter', 'facebook', 'twitter', 'partner'][1 + cityHash64(s, 6) % 5]
               AS src,
           ['cpc', 'email', 'social', 'social', 'referral'][1 + cityHash64(s, 6) % 5] AS med,
           concat('campaign-', toString(cityHash64(s, 7) % 12)) AS camp,
           if(utm, concat('?utm_source=', src, '&utm_medium=', med, '&utm_campaign=', camp), '')
               AS utm_query,
           toUInt8(cityHash64(v, 21) % 100 < 3) AS bot,  -- a bot is a visitor (its user agent)
           cityHash64(s, 22) % 100 = 0 AS link,
           cityHash64(s, 23) % 200 AS link_i
    FROM numbers({offset}, {count})
    WHERE pos < len
)
"""

# r(k): a uniform [0, 1) draw per event, the k-th.
R = "(cityHash64(number, {k}) / 18446744073709551615.0)"

LINKS_SQL = """
INSERT INTO sfpla.redirects (hhash, urlfrom, urlto, id, host, path, status, created_at,
    updated_at)
SELECT 'l', concat('go.shop.example/l', toString(number)),
       concat('https://www.shop.example/p/', toString(number)),
       reinterpretAsUUID(concat(reinterpretAsString(cityHash64(number, 12)),
                                reinterpretAsString(cityHash64(number, 13)))),
       'go.shop.example', concat('/l', toString(number)), 302,
       fromUnixTimestamp64Milli(toInt64({start_ms})), fromUnixTimestamp64Milli(toInt64({start_ms}))
FROM numbers(200)
"""

PAYMENTS_SQL = """
INSERT INTO sfpla.payments (id, hhash, uid, vid, revenue, total, created_at, updated_at)
SELECT generateUUIDv4(number),
       '{www_hash}',
       reinterpretAsUUID(concat(reinterpretAsString(cityHash64(u, 30)),
                                reinterpretAsString(cityHash64(u, 31)))),
       reinterpretAsUUID(concat(reinterpretAsString(cityHash64(u, 32)),
                                reinterpretAsString(cityHash64(u, 33)))),
       round(5 + (cityHash64(number, 34) % 20000) / 100, 2) AS revenue, revenue,
       fromUnixTimestamp64Milli(toInt64({start_ms} + cityHash64(number, 35) % ({days} * 86400000))) AS t,
       t
FROM (SELECT number, toUInt64(pow(20000, cityHash64(number, 36) / 18446744073709551615.0)) AS u
      FROM numbers({count}))
"""

AGREED_SQL = """
INSERT INTO sfpla.agreed (id, vid, created_at, updated_at, cflags, hhash, country, region)
SELECT generateUUIDv4(number),
       reinterpretAsUUID(concat(reinterpretAsString(cityHash64(number, 40)),
                                reinterpretAsString(cityHash64(number, 41)))),
       fromUnixTimestamp64Milli(toInt64({start_ms} + cityHash64(number, 42) % ({days} * 86400000))) AS t,
       t,
       [256, 256, 1280, 1792, 7936, 16128][1 + cityHash64(number, 43) % 6],
       '{www_hash}',
       ['US', 'DE', 'GB', 'FR', 'BR', 'JP', 'ES', 'IT'][1 + cityHash64(number, 44) % 8] AS c,
       if(c = 'US', ['CA', 'NY', 'TX'][1 + cityHash64(number, 45) % 3], '')
FROM numbers({count})
"""

HOSTS = ["www.shop.example", "blog.shop.example", "docs.shop.example"]
# The hhash of each host as the gateway computes it, so a host filter finds the derived rows.
HOST_HASHES = f"transform(host, {[h for h in HOSTS]}, {[short_hash(h) for h in HOSTS]}, '')"

FIGURES = [
    ("overview", ""),
    ("engagement", ""),
    ("pages", ""),
    ("entry-exit", ""),
    ("referrers", ""),
    ("campaigns", ""),
    ("countries", ""),
    ("devices", ""),
    ("goals", "steps=page_view,signup,purchase"),
    ("links", ""),
    ("revenue", ""),
    ("consent", ""),
]


def load(
    data_dir: Path, events: int, days: int = 90, optimize: bool = False, rebuild: bool = False
) -> None:
    # Loading only: a larger budget than the gateway's 192 MiB (the 20 views of a 1M-row
    # INSERT ... SELECT hold more); the timed reads run in the gateway with its own budget.
    embedded.SERVER_SETTINGS["max_server_memory_usage"] = 3 * 1024**3
    store = EmbeddedStore(data_dir, reactor=None)
    store._open_and_load()
    w = store._writer
    have = int(w.query("SELECT count() FROM sfpla.events", "TabSeparated").bytes() or 0)
    if have:
        print(f"store holds {have:,} events already: not loading")
        if rebuild:
            rebuild_rollups(w)
        if optimize:
            merge(w)
        w.close()
        return
    start_ms = int(time.time() * 1000) - days * 86_400_000  # up to now
    numbers = events * 5 // 3  # mean session length 3 of 5 positions
    chunk = CHUNK * 5 // 3
    began = time.perf_counter()
    sql = re.sub(r"\br\((\d+)\)", lambda m: R.format(k=m.group(1)), EVENTS_SQL)
    for offset in range(0, numbers, chunk):
        count = min(chunk, numbers - offset)
        w.query(
            sql.format(
                start_ms=start_ms,
                days=days,
                visitors=max(1000, events // 6),
                offset=offset,
                count=count,
                host_hashes=HOST_HASHES,
            )
        )
        n = int(w.query("SELECT count() FROM sfpla.events", "TabSeparated").bytes())
        print(f"  {n:>12,} events  {time.perf_counter() - began:7.1f} s", flush=True)
    w.query(LINKS_SQL.format(start_ms=start_ms))
    www = short_hash(HOSTS[0])
    w.query(PAYMENTS_SQL.format(start_ms=start_ms, days=days, count=max(1000, events // 100),
                                www_hash=www))  # fmt: skip
    w.query(AGREED_SQL.format(start_ms=start_ms, days=days, count=max(1000, events // 30),
                              www_hash=www))  # fmt: skip
    print(f"loaded in {time.perf_counter() - began:.1f} s")
    if optimize:
        merge(w)
    w.close()


ROLLUPS = tuple(r.table for r in rollups.rollups("sfpla"))
# The views --insert-cost weighs: the latest the dashboard's speed added (issue 18; before
# them dash_sessions_mv and dash_totals_mv, then dash_funnel_mv and dash_segments_mv,
# docs/performance.md).
NEW_VIEWS = ("dash_session_segs_mv", "dash_page_segs_mv", "dash_device_segs_mv", "dash_goals_mv")


def rebuild_rollups(w) -> None:
    """Each rollup made again as the schema declares it and filled from ``events`` by its
    view's SELECT: ``dashboard/rollups.py``, which ``dashboard rebuild`` runs in a gateway."""
    rollups.rebuild(
        lambda statements: [w.query(sql, "TabSeparated").bytes().decode() for sql in statements],
        "sfpla",
        say=lambda line: print(line, flush=True),
    )


def merge(w) -> None:
    """Merge the rollup's parts as background merges eventually do. The generated events of
    one INSERT span all 90 days (live traffic arrives in time order), so unmerged, each day
    of ``dash_daily`` holds one row per insert block and a range merges thousands of states."""
    for table in ROLLUPS:
        began = time.perf_counter()
        count = f"SELECT count() FROM sfpla.{table}"
        before = w.query(count, "TabSeparated").bytes().decode()
        w.query(f"OPTIMIZE TABLE sfpla.{table} FINAL")
        after = w.query(count, "TabSeparated").bytes().decode()
        print(f"{table}: {before.strip()} rows merged to {after.strip()} "
              f"in {time.perf_counter() - began:.1f} s")  # fmt: skip


def insert_cost(rounds: int = 30) -> None:
    """Median time of a 1,000-event INSERT into a new store, with every view of the schema
    and without the views of ``NEW_VIEWS`` (what they cost every batch)."""
    embedded.SERVER_SETTINGS["max_server_memory_usage"] = 1024**3
    with tempfile.TemporaryDirectory(prefix="sfpl-bench-insert-") as tmp:
        store = EmbeddedStore(Path(tmp) / "data", reactor=None)
        store._open_and_load()
        w = store._writer
        insert = re.sub(r"\br\((\d+)\)", lambda m: R.format(k=m.group(1)), EVENTS_SQL)
        start_ms = int(time.time() * 1000) - 86_400_000
        offset = 0

        def timed() -> float:
            nonlocal offset
            took = []
            for _ in range(rounds):
                began = time.perf_counter()
                w.query(insert.format(start_ms=start_ms, days=1, visitors=100_000, offset=offset,
                                   count=1667, host_hashes=HOST_HASHES))  # fmt: skip
                took.append((time.perf_counter() - began) * 1000)
                offset += 1667
            return statistics.median(took)

        timed()  # warm-up
        views = [s.sql for s in load_statements() if s.name in NEW_VIEWS]
        with_view, without = [], []
        for _ in range(3):  # alternated: the machine's load drifts
            with_view.append(timed())
            for name in NEW_VIEWS:
                w.query(f"DROP TABLE sfpla.{name}")
            without.append(timed())
            for view in views:
                w.query(view)
        w.close()
    print(f"INSERT of ~1,000 events (median of {rounds}, 3 alternations): with every view "
          f"{' / '.join(f'{t:.1f}' for t in with_view)} ms; without {', '.join(NEW_VIEWS)} "
          f"{' / '.join(f'{t:.1f}' for t in without)} ms")  # fmt: skip


def account(gw: GatewayProcess) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path),
         "account", "create", "--org", "bench"],  # fmt: skip
        capture_output=True, text=True, cwd=ROOT, check=True, timeout=120,
    )  # fmt: skip
    return dict(re.findall(r"^(\w+):\s*(\S+)$", out.stdout, re.M))


def time_figures(
    gw: GatewayProcess, cookie: str, rounds: int, extra: str, only: set[str] | None = None
) -> list[tuple]:
    rows = []
    for name, params in FIGURES:
        if only and name not in only:
            continue
        qs = "&".join(p for p in (params, extra) if p)
        path = f"/dashboard/api/{name}?{qs}"
        took, cpu = [], []
        for i in range(rounds + 1):
            began = time.perf_counter()
            meter = TreeCpu(gw.proc.pid).start()  # the gateway's CPU (one request at a time)
            r = http_request(gw.query_port, "GET", path, headers={"Cookie": cookie}, timeout=120)
            elapsed = (time.perf_counter() - began) * 1000
            if r.status != 200:
                raise SystemExit(f"{path}: {r.status} {r.body[:300]!r}")
            if i:  # the first warms the caches
                took.append(elapsed)
                cpu.append(meter.stop().total * 1000)
        took.sort()
        p95 = took[min(len(took) - 1, round(0.95 * (len(took) - 1)))]
        rows.append((name, extra or "-", statistics.median(took), p95, statistics.median(cpu)))
        print(f"  {name} {extra or '-'}: p50 {rows[-1][2]:.0f} ms, p95 {p95:.0f} ms, "
              f"gateway CPU p50 {rows[-1][4]:.0f} ms", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, help="keep the store here (reused when loaded)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--optimize", action="store_true", help="merge dash_daily first")
    parser.add_argument("--no-segment", action="store_true", help="skip the country=DE runs")
    parser.add_argument("--rebuild-rollups", action="store_true",
                        help="drop the dash_* rollups and fill them again from events")  # fmt: skip
    parser.add_argument("--insert-cost", action="store_true",
                        help="only time 1,000-event inserts with and without NEW_VIEWS")  # fmt: skip
    parser.add_argument("--figures", default="",
                        help="time only these figures (comma-separated, e.g. goals)")  # fmt: skip
    args = parser.parse_args()
    only = {f for f in args.figures.split(",") if f}
    if only - {name for name, _ in FIGURES}:
        parser.error(f"--figures: unknown {sorted(only - {name for name, _ in FIGURES})}")
    if args.insert_cost:
        insert_cost()
        return
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sfpl-bench-dashboard-")
        args.dir = Path(tmp.name)
    data_dir = args.dir / "data"
    load(data_dir, args.events, optimize=args.optimize, rebuild=args.rebuild_rollups)
    with GatewayProcess(args.dir, {"DataDirectory": str(data_dir)}, name="gw") as gw:
        print(gw.query("SELECT count() AS events, min(created_at) AS first, "
                       "max(created_at) AS last FROM sfpla.events"))  # fmt: skip
        acct = account(gw)
        r = http_request(gw.query_port, "POST", "/dashboard/api/login",
                         json_body={"uid": acct["uid"], "secret": acct["secret"]})  # fmt: skip
        assert r.status == 200, r.body
        cookie = r.header("set-cookie").split(";")[0]
        print(json.dumps(json.loads(http_request(
            gw.query_port, "GET", "/dashboard/api/overview", headers={"Cookie": cookie},
            timeout=120,
        ).body)["current"]))  # fmt: skip
        rows = time_figures(gw, cookie, args.rounds, "", only)
        if not args.no_segment:
            rows += time_figures(gw, cookie, args.rounds, "country=DE", only)
    print(f"\n/dashboard/api/ over the last 30 days, {args.rounds} requests each\n")
    print(f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| figure | filter | p50 ms | p95 ms | gateway CPU p50 ms |")
    print("|---|---|---:|---:|---:|")
    for name, extra, p50, p95, cpu in rows:
        print(f"| {name} | {extra} | {p50:.0f} | {p95:.0f} | {cpu:.0f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
