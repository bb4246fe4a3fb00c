"""The dashboard's funnel, segment and goal tables (schema/093, 094, 098) on real chDB: filled
by their materialized views from inserts through the store, the funnel read from
``dash_funnel`` equals the same ``windowFunnel`` over ``events``, the overview's segment totals
from ``dash_segments`` and the goals and outcomes from ``dash_goals`` equal ``events``, on
varied generated data: repeated and out-of-order steps, events of one second, bots and server
events, two hosts, rows inserted out of time order in several batches (several parts).
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import pytest_twisted

from sfpltracker.dashboard import queries as q
from sfpltracker.ingest.ids import short_hash

DAY0 = date(2026, 3, 2)
T0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)
HOSTS = ["www.shop.test", "blog.shop.test"]
ENAMES = ["a", "b", "c", "d", ""]


def generated(seed: int = 7, visitors: int = 60) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(visitors):
        vid = str(uuid.UUID(int=rng.getrandbits(128)))
        country, device = rng.choice(["DE", "US", "BR"]), rng.choice(["Desktop", "Mobile"])
        t = T0 + rng.randrange(3 * 86_400_000)
        for _ in range(rng.randrange(1, 5)):  # sessions
            sid = str(uuid.UUID(int=rng.getrandbits(128)))
            source = rng.choice(["", "", "google", "news"])
            for _ in range(rng.randrange(1, 12)):
                # gaps from the same second (and millisecond) to days: windows of 1 s - 7 days
                t += rng.choice([0, 0, 300, 900, 1_000, 30_000, 600_000, 3_600_000, 90_000_000])
                host = HOSTS[0] if rng.random() < 0.8 else HOSTS[1]
                rows.append({
                    "eid": str(uuid.UUID(int=rng.getrandbits(128))), "vid": vid, "sid": sid,
                    "created_at": t, "ename": rng.choice(ENAMES), "hostname": host,
                    "hhash": short_hash(host), "url": rng.choice(["", "https://s.test/p"]),
                    "country": country if rng.random() < 0.9 else "FR", "device": device,
                    "source": source, "medium": "cpc" if source == "google" else "",
                    "campaign": "spring" if source else "",
                    "outcome": rng.choice(["", "", "", "lead", "sale"]),
                    "bot": int(rng.random() < 0.05), "server": int(rng.random() < 0.05),
                })  # fmt: skip
    rng.shuffle(rows)  # not in time order, as batches of several gateways may arrive
    return rows


@pytest.fixture
def loaded(store):
    rows = generated()
    for i in range(0, len(rows), 400):
        pytest_twisted.blockon(store.insert("events", rows[i : i + 400]))
    return store, rows


def rows_of(store, query: q.Query):
    d = store.query(query.sql, "JSONEachRow", query.params)
    return d.addCallback(lambda out: [json.loads(line) for line in out.decode().splitlines()])


STEPS = [
    ["a", "b", "c"],
    ["a", "a"],  # a repeated step: a second "a" after the first
    ["a", "b", "a", "b"],
    ["c", "b", "a"],  # the reverse order of the first
    ["b", "a", "a", "c", "d"],
    ["d"],
    ["a", "nothing"],
]
WINDOWS = [0, 1, 3_600, 7 * 86_400]
FILTERS = [
    {},
    {"host": HOSTS[1]},
    {"country": "DE"},
    {"device": "Mobile", "source": "google"},
    {"start": DAY0 + timedelta(days=1), "end": DAY0 + timedelta(days=1)},
]


@pytest_twisted.inlineCallbacks
def test_funnel_from_its_table_equals_windowfunnel_over_events(loaded):
    store, rows = loaded
    levels_seen = set()
    for steps in STEPS:
        for window in WINDOWS:
            for extra in FILTERS:
                f = q.Filters(
                    start=extra.get("start", DAY0),
                    end=extra.get("end", DAY0 + timedelta(days=6)),
                    **{k: v for k, v in extra.items() if k not in ("start", "end")},
                )
                want = yield rows_of(store, q.funnel_events("sfpla", f, steps, window))
                want = {r["level"]: r["visitors"] for r in want}
                for parts in {1, q.funnel_parts(f), 16}:
                    got: dict[int, int] = {}
                    for part in range(parts):
                        query = q.funnel("sfpla", f, steps, window, part, parts)
                        for r in (yield rows_of(store, query)):
                            got[r["level"]] = got.get(r["level"], 0) + r["visitors"]
                    assert got == want, (steps, window, extra, parts)
                levels_seen |= set(want)
    assert levels_seen == {1, 2, 3, 4, 5}  # the data reaches every level of some funnel


@pytest_twisted.inlineCallbacks
def test_funnel_table_holds_the_client_events_with_an_ename(loaded):
    store, rows = loaded
    want = sorted(r["eid"] for r in rows if not r["bot"] and not r["server"] and r["ename"] != "")
    got = yield rows_of(store, q.Query("SELECT toString(eid) AS eid FROM sfpla.dash_funnel", {}))
    assert sorted(r["eid"] for r in got) == want and len(want) > 500


@pytest_twisted.inlineCallbacks
def test_segment_table_equals_events_per_combination(loaded):
    store, rows = loaded
    key = "toString(day) AS d, hhash, toString(country) AS c, toString(device) AS dev, source, medium, campaign"
    got = yield rows_of(store, q.Query(
        f"SELECT {key}, toUInt32(uniqCombinedMerge(14)(visitors)) AS v, toUInt32(uniqCombinedMerge(14)"
        f"(sessions)) AS s, toUInt32(sum(events)) AS e, toUInt32(sum(pageviews)) AS p FROM "
        f"sfpla.dash_segments GROUP BY d, hhash, c, dev, source, medium, campaign ORDER BY ALL", {},
    ))  # fmt: skip
    want = yield rows_of(store, q.Query(
        f"SELECT toDate(created_at) AS day, {key}, toUInt32(count(DISTINCT vid)) AS v, "
        f"toUInt32(count(DISTINCT sid)) AS s, toUInt32(count()) AS e, toUInt32(countIf(url != '')) "
        f"AS p FROM sfpla.events WHERE bot = 0 AND server = 0 "
        f"GROUP BY day, d, hhash, c, dev, source, medium, campaign ORDER BY d, hhash, c, dev, source, medium, campaign", {},
    ))  # fmt: skip
    assert got == [{k: v for k, v in r.items() if k != "day"} for r in want] and len(got) > 100
    yield from segment_figures_equal_events(store)


def segment_figures_equal_events(store):
    """The overview and its daily series, countries and campaigns with segment filters (read
    from dash_segments) equal the same figures over events."""
    for extra in FILTERS[1:4]:
        f = q.Filters(start=DAY0 + timedelta(days=3), end=DAY0 + timedelta(days=5), **extra)
        got = {r["period"]: r for r in (yield rows_of(store, q.overview("sfpla", f)))}
        where, params = q.event_conditions(f, start=f.previous().start)
        params["cur"] = f"{f.start.isoformat()} 00:00:00.000"
        want = yield rows_of(store, q.Query(
            f"SELECT if(created_at >= {{cur:{q.TS}}}, 'current', 'previous') AS period, "
            f"toUInt32(count(DISTINCT vid)) AS visitors, toUInt32(count(DISTINCT sid)) AS "
            f"sessions, toUInt32(count()) AS events, toUInt32(countIf(url != '')) AS pageviews "
            f"FROM sfpla.events WHERE {where} GROUP BY period", params,
        ))  # fmt: skip
        assert got == {r["period"]: r for r in want} and len(want) == 2, extra
        series = yield rows_of(store, q.timeseries("sfpla", f))
        where, params = q.event_conditions(f)
        want = yield rows_of(store, q.Query(
            f"SELECT toString(toDate(created_at)) AS t, toUInt32(count(DISTINCT vid)) AS "
            f"visitors, toUInt32(countIf(url != '')) AS pageviews FROM sfpla.events "
            f"WHERE {where} GROUP BY t ORDER BY t", params,
        ))  # fmt: skip
        assert series == want and want, extra
        where, params = q.event_conditions(f)
        got = yield rows_of(store, q.countries("sfpla", f))
        want = yield rows_of(store, q.Query(
            f"SELECT toString(country) AS country, toUInt32(count(DISTINCT vid)) AS visitors, "
            f"toUInt32(count()) AS events FROM sfpla.events WHERE {where} GROUP BY country "
            f"ORDER BY visitors DESC, events DESC, country LIMIT 10", params,
        ))  # fmt: skip
        assert got == want and want, extra
        got = yield rows_of(store, q.campaigns("sfpla", f))
        want = yield rows_of(store, q.Query(
            f"SELECT source, medium, campaign, toUInt32(count(DISTINCT vid)) AS visitors, "
            f"toUInt32(count()) AS events FROM sfpla.events WHERE {where} AND (source != '' OR "
            f"medium != '' OR campaign != '') GROUP BY source, medium, campaign "
            f"ORDER BY visitors DESC, events DESC, source, medium, campaign LIMIT 10", params,
        ))  # fmt: skip
        assert got == want, extra


@pytest_twisted.inlineCallbacks
def test_goal_table_equals_events_per_combination(loaded):
    store, rows = loaded
    key = (
        "toString(day) AS d, hhash, toString(country) AS c, toString(device) AS dev, source, "
        "medium, campaign, toString(ename) AS e, outcome"
    )
    group = "d, hhash, c, dev, source, medium, campaign, e, outcome"
    got = yield rows_of(store, q.Query(
        f"SELECT {key}, toUInt32(uniqMerge(visitors)) AS v, toUInt32(sum(events)) AS n "
        f"FROM sfpla.dash_goals GROUP BY {group} ORDER BY {group}", {},
    ))  # fmt: skip
    want = yield rows_of(store, q.Query(
        f"SELECT toDate(created_at) AS day, {key}, toUInt32(count(DISTINCT vid)) AS v, "
        f"toUInt32(count()) AS n FROM sfpla.events WHERE bot = 0 AND server = 0 "
        f"AND (ename != '' OR outcome != '') GROUP BY day, {group} ORDER BY {group}", {},
    ))  # fmt: skip
    assert got == [{k: v for k, v in r.items() if k != "day"} for r in want] and len(got) > 100
    # the goals and outcomes with segment filters (read from dash_goals) equal SQL over events
    for extra in FILTERS[2:4] + [{"host": HOSTS[0], "country": "US"}]:
        f = q.Filters(start=DAY0 + timedelta(days=1), end=DAY0 + timedelta(days=4), **extra)
        where, params = q.event_conditions(f)
        got = yield rows_of(store, q.goals("sfpla", f))
        want = yield rows_of(store, q.Query(
            f"SELECT toString(ename) AS ename, toUInt32(count()) AS events, toUInt32(count("
            f"DISTINCT vid)) AS visitors FROM sfpla.events WHERE {where} AND ename != '' "
            f"GROUP BY ename ORDER BY events DESC, ename LIMIT 10", params,
        ))  # fmt: skip
        assert got == want and want, extra
        got = yield rows_of(store, q.outcomes("sfpla", f))
        want = yield rows_of(store, q.Query(
            f"SELECT outcome, toUInt32(count()) AS events FROM sfpla.events WHERE {where} "
            f"AND outcome != '' GROUP BY outcome ORDER BY events DESC, outcome LIMIT 10", params,
        ))  # fmt: skip
        assert got == want and want, extra
