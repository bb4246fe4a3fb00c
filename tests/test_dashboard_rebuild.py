"""``python -m sfpltracker dashboard rebuild``: the dashboard's rollups made again from
``events`` in a running gateway, while events keep arriving (dashboard/rollups.py).

A real gateway stores the known data of tests/dashboard_data.py; with it stopped, the rollups
are corrupted in a separate process on the same data directory (``dash_sessions`` and
``dash_goals`` emptied, ``dash_totals`` doubled, ``dash_daily`` made again with the older sort
key and ``dash_funnel`` with the older DateTime64 time, both empty) and a
few events of three days ago are inserted. The restarted gateway answers wrong figures; the
CLI's rebuild (``--since`` today, then whole) runs through its admin socket while a client
keeps sending events; afterwards every rollup equals SQL over ``events`` and the dashboard's
figures equal SQL.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
import uuid

from tests import dashboard_data as dd
from tests.gateway_process import ROOT, GatewayProcess

CLIENT = "bot = 0 AND server = 0"

CORRUPT = """
import sys
from pathlib import Path
from sfpltracker.store.embedded.store import EmbeddedStore
store = EmbeddedStore(Path(sys.argv[1]), reactor=None)
store._open_and_load()
w = store._writer
for sql in (
    "TRUNCATE TABLE sfpla.dash_sessions",
    "TRUNCATE TABLE sfpla.dash_session_segs",
    "INSERT INTO sfpla.dash_page_segs SELECT * FROM sfpla.dash_page_segs",
    "TRUNCATE TABLE sfpla.dash_device_segs",
    "INSERT INTO sfpla.dash_totals SELECT * FROM sfpla.dash_totals",
    "DROP TABLE sfpla.dash_daily_mv",
    "DROP TABLE sfpla.dash_daily",
    # the sort key of a store made before (dim, day, ...): same columns, other order
    '''CREATE TABLE sfpla.dash_daily (day Date, hhash String, dim LowCardinality(String),
       value String, visitors AggregateFunction(uniq, UUID),
       sessions AggregateFunction(uniq, UUID), events SimpleAggregateFunction(sum, UInt64),
       pageviews SimpleAggregateFunction(sum, UInt64))
       ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(day)
       ORDER BY (day, hhash, dim, value)''',
    "TRUNCATE TABLE sfpla.dash_goals",
    "DROP TABLE sfpla.dash_funnel_mv",
    "DROP TABLE sfpla.dash_funnel",
    # the time of a store made before: DateTime64 (the table keeps it until rebuilt)
    '''CREATE TABLE sfpla.dash_funnel (vid UUID, created_at DateTime64(3, 'UTC'), eid UUID,
       ename LowCardinality(String), hostname LowCardinality(String), source String,
       medium String, campaign String, country LowCardinality(String),
       device LowCardinality(String), uid UUID, sid UUID, ehash String, region String)
       ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(created_at)
       ORDER BY (vid, created_at, eid)''',
):
    w.query(sql)
store._load_schema()  # the view again (the table exists: its old key stays)
w.query(
    "INSERT INTO sfpla.events (eid, vid, sid, hhash, hostname, created_at, url, country, "
    "device) SELECT generateUUIDv4(number), generateUUIDv4(number % 2), "
    "generateUUIDv4(number % 3), 'old_host', 'old.example', now64(3) - toIntervalDay(3), "
    "concat('https://old.example/', toString(number)), 'FR', 'Desktop' FROM numbers(6)"
)
w.close()
"""


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=300,
    )


def ints(rows: list[dict]) -> list[dict]:
    return [{k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in r.items()}
            for r in rows]  # fmt: skip


def rollups_equal_events(gw: GatewayProcess) -> None:
    q = lambda sql: ints(gw.query(sql))  # noqa: E731
    # dash_totals and dash_daily's 'all': per day and host, events, page views, visitors
    want = q(f"SELECT toString(toDate(created_at)) AS d, hhash, count() AS events, "
             f"countIf(url != '') AS pageviews, uniqExact(vid) AS visitors, uniqExact(sid) AS "
             f"sessions FROM sfpla.events WHERE {CLIENT} GROUP BY d, hhash ORDER BY d, hhash")  # fmt: skip
    totals = q("SELECT toString(day) AS d, hhash, sum(events) AS events, sum(pageviews) AS "
               "pageviews, uniqCombinedMerge(14)(visitors) AS visitors, "
               "uniqCombinedMerge(14)(sessions) AS sessions FROM sfpla.dash_totals "
               "GROUP BY d, hhash ORDER BY d, hhash")  # fmt: skip
    assert totals == want
    daily = q("SELECT toString(day) AS d, hhash, sum(events) AS events, sum(pageviews) AS "
              "pageviews, uniqMerge(visitors) AS visitors, uniqMerge(sessions) AS sessions "
              "FROM sfpla.dash_daily WHERE dim = 'all' GROUP BY d, hhash ORDER BY d, hhash")  # fmt: skip
    assert daily == want
    for dim in ("country", "device", "ename"):
        got = q(f"SELECT value, sum(events) AS n FROM sfpla.dash_daily WHERE dim = '{dim}' "
                f"GROUP BY value ORDER BY value")  # fmt: skip
        only_set = " AND ename != ''" if dim == "ename" else ""  # as the view keeps them
        expect = q(f"SELECT toString({dim}) AS value, count() AS n FROM sfpla.events "
                   f"WHERE {CLIENT}{only_set} GROUP BY value ORDER BY value")  # fmt: skip
        assert got == expect, dim
    goals = q("SELECT toString(ename) AS e, outcome, sum(events) AS n, uniqMerge(visitors) AS v "
              "FROM sfpla.dash_goals GROUP BY e, outcome ORDER BY e, outcome")  # fmt: skip
    assert goals == q(f"SELECT toString(ename) AS e, outcome, count() AS n, uniqExact(vid) AS v "
                      f"FROM sfpla.events WHERE {CLIENT} AND (ename != '' OR outcome != '') "
                      f"GROUP BY e, outcome ORDER BY e, outcome")  # fmt: skip
    funnel = q("SELECT toString(eid) AS eid, toUInt32(created_at) AS t FROM sfpla.dash_funnel "
               "ORDER BY eid")  # fmt: skip
    assert funnel == q(f"SELECT toString(eid) AS eid, toUInt32(toDateTime(created_at)) AS t "
                       f"FROM sfpla.events WHERE {CLIENT} AND ename != '' ORDER BY eid")  # fmt: skip
    sessions = q("SELECT toString(day) AS d, toString(sid) AS s, events, entry.2 AS entry "
                 "FROM sfpla.dash_sessions FINAL ORDER BY d, s")  # fmt: skip
    assert sessions == q(
        f"SELECT toString(toDate(created_at)) AS d, toString(sid) AS s, count() AS events, "
        f"argMinIf(url, created_at, url != '') AS entry FROM sfpla.events WHERE {CLIENT} "
        f"GROUP BY d, hhash, sid ORDER BY d, s"
    )  # fmt: skip
    # the per-segment rollups (schema/095-097)
    segs = q("SELECT toString(day) AS d, toString(country) AS c, toString(sid) AS s, "
             "sum(events) AS events, substring(min(entry), 17) AS entry, "
             "substring(max(exit), 17) AS exit "
             "FROM sfpla.dash_session_segs GROUP BY d, c, s ORDER BY d, c, s")  # fmt: skip
    assert segs == q(
        f"SELECT toString(toDate(created_at)) AS d, toString(country) AS c, toString(sid) AS s, "
        f"count() AS events, minIf((created_at, url), url != '').2 AS entry, "
        f"maxIf((created_at, url), url != '').2 AS exit FROM sfpla.events WHERE {CLIENT} "
        f"GROUP BY d, c, s ORDER BY d, c, s"
    )  # fmt: skip
    pages = q("SELECT dim, value, sum(events) AS n FROM sfpla.dash_page_segs "
              "GROUP BY dim, value ORDER BY dim, value")  # fmt: skip
    assert pages == q(
        f"SELECT dim, value, count() AS n FROM sfpla.events ARRAY JOIN ['page', 'referrer'] "
        f"AS dim, [url, if(domain(last) != '', domain(last), last)] AS value "
        f"WHERE {CLIENT} AND value != '' GROUP BY dim, value ORDER BY dim, value"
    )  # fmt: skip
    devices = q("SELECT toString(device) AS d, toString(browser) AS b, sum(events) AS n, "
                "uniqCombinedMerge(14)(visitors) AS v FROM sfpla.dash_device_segs "
                "GROUP BY d, b ORDER BY d, b")  # fmt: skip
    assert devices == q(
        f"SELECT toString(device) AS d, toString(browser) AS b, count() AS n, uniqExact(vid) "
        f"AS v FROM sfpla.events WHERE {CLIENT} GROUP BY d, b ORDER BY d, b"
    )  # fmt: skip


def test_rebuild_in_a_running_gateway_equals_events(tmp_path):
    gw = GatewayProcess(tmp_path, dd.CONFIG)
    with gw:
        account = dd.load(gw)["account"]
    corrupt = subprocess.run(
        [sys.executable, "-c", CORRUPT, gw.config["DataDirectory"]],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert corrupt.returncode == 0, corrupt.stderr
    with gw:
        dash = dd.Dashboard(gw)
        assert dash.login(account["uid"], account["secret"]).status == 200
        truth = ints(gw.query(f"SELECT count() AS events FROM sfpla.events WHERE {CLIENT}"))[0]
        assert dash.get("overview")["current"]["events"] != truth["events"]  # corrupted
        key = "SELECT sorting_key AS k FROM system.tables WHERE database = 'sfpla' AND name = "
        assert gw.query(key + "'dash_daily'") == [{"k": "day, hhash, dim, value"}]
        time_type = ("SELECT type AS t FROM system.columns WHERE database = 'sfpla' "
                     "AND table = 'dash_funnel' AND name = 'created_at'")  # fmt: skip
        assert gw.query(time_type) == [{"t": "DateTime64(3, 'UTC')"}]

        # Events keep arriving while the rollups are rebuilt: each stored once in them.
        sent: list[int] = []
        stop = threading.Event()
        vids = [str(uuid.uuid4()) for _ in range(40)]
        sids = [str(uuid.uuid4()) for _ in range(120)]

        def send():
            while not stop.is_set() and len(sent) < 5000:
                # few visitors and sessions: uniqCombined(14) counts them exactly
                n = len(sent)
                body = {"vid": vids[n % 40], "sid": sids[n % 120], "ename": "during",
                        "url": f"https://shop.example/d{len(sent)}", "country": "NL"}  # fmt: skip
                r = gw.http(
                    "POST", "/tr/v1/tr/", json_body=body, headers={"User-Agent": dd.UA["phone"]}
                )
                assert r.status == 200, r.body
                sent.append(1)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            today = datetime.datetime.now(datetime.UTC).date().isoformat()
            partial = cli(gw, "dashboard", "rebuild", "--since", today)
            whole = cli(gw, "dashboard", "rebuild")
        finally:
            stop.set()
            sender.join(60)
        assert partial.returncode == 0, partial.stderr
        assert "dash_daily: rebuilt from " + today in partial.stdout, partial.stdout
        assert whole.returncode == 0, whole.stderr
        assert {
            "dash_daily",
            "dash_sessions",
            "dash_totals",
            "dash_session_segs",
            "dash_page_segs",
            "dash_device_segs",
            "dash_funnel",
            "dash_goals",
        } <= {line.split(":")[0] for line in whole.stdout.splitlines()}
        assert sent
        gw.wait_for(
            "SELECT count() AS n FROM sfpla.events WHERE ename = 'during'",
            lambda rows: int(rows[0]["n"]) == len(sent),
        )
        gw.wait_settled()
        rollups_equal_events(gw)
        assert gw.query(key + "'dash_daily'") == [{"k": "dim, day, hhash, value"}]
        assert gw.query(time_type) == [{"t": "DateTime('UTC')"}]  # as the schema declares now
        left = gw.query("SELECT name FROM system.tables WHERE database = 'sfpla' "
                        "AND name LIKE '%rebuild%'")  # fmt: skip
        assert left == []
        # The dashboard's figures equal SQL again (the three-day-old events included).
        truth = ints(gw.query(f"SELECT uniqExact(vid) AS visitors, uniqExact(sid) AS sessions, "
                              f"countIf(url != '') AS pageviews, count() AS events "
                              f"FROM sfpla.events WHERE {CLIENT}"))[0]  # fmt: skip
        assert dash.get("overview")["current"] == truth
        assert dash.get("engagement")["current"]["sessions"] == truth["sessions"]
        nl = ints(gw.query(f"SELECT uniqExact(sid, toDate(created_at)) AS sessions, "
                           f"count() AS events FROM sfpla.events "
                           f"WHERE {CLIENT} AND country = 'NL'"))[0]  # fmt: skip
        assert dash.get("engagement", country="NL")["current"]["sessions"] == nl["sessions"] > 0
        devices = dash.get("devices", country="NL")["device"]
        assert sum(d["events"] for d in devices) == nl["events"]
        bad = cli(gw, "dashboard", "rebuild", "--since", "yesterday")
        assert bad.returncode != 0 and "since must be a date" in bad.stderr, bad
    # With no gateway running, the CLI opens the store itself and runs the same command.
    offline = cli(gw, "dashboard", "rebuild")
    assert offline.returncode == 0, offline.stderr
    assert "dash_totals: rebuilt from events" in offline.stdout
