"""The dashboard's per-segment rollups (schema/095-097: ``dash_session_segs``,
``dash_page_segs``, ``dash_device_segs``) on real chDB: filled by their materialized views
from inserts through the store, the figures they serve with a segment filter (engagement,
entry/exit pages, pages, referrers, devices) equal the same figures computed by plain SQL over
``events``, on generated data where a session's events differ in country, device and campaign,
pages share a millisecond, referrers with and without a host, bots and server events, two
hosts, sessions across midnight, rows inserted out of time order in several batches.
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
PAGES = ["", "https://s.test/", "https://s.test/a", "https://s.test/b", "https://s.test/c?x=1"]
# and the tracked hosts' own pages: internal navigation (not a referral) when the referrer is
# the event's own host (any case, with or without "www."), a referral from the other host
REFERRERS = ["", "", "https://www.google.com/search?q=x", "https://News.example/s",
             "android-app://com.google.android.gm/", "not a url", "http://a.test:8080/x",
             "https://WWW.Shop.test/a", "https://shop.test/", "http://blog.shop.test:8080/b"]  # fmt: skip
CLIENTS = [("Desktop", "Chrome", "Windows"), ("Mobile", "Safari", "iOS"),
           ("Mobile", "Chrome", "Android"), ("Tablet", "Safari", "iOS")]  # fmt: skip


def generated(seed: int = 11, visitors: int = 80) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(visitors):
        vid = str(uuid.UUID(int=rng.getrandbits(128)))
        country, client = rng.choice(["DE", "US", "BR"]), rng.choice(CLIENTS)
        t = T0 + rng.randrange(5 * 86_400_000)
        for _ in range(rng.randrange(1, 4)):  # sessions
            sid = str(uuid.UUID(int=rng.getrandbits(128)))
            source = rng.choice(["", "", "google", "news"])
            for i in range(rng.randrange(1, 9)):
                # gaps of 0 ms (pages of one millisecond) to a day (a session over midnight)
                t += rng.choice([0, 0, 1, 1_000, 60_000, 3_600_000, 30_000_000])
                host = HOSTS[0] if rng.random() < 0.8 else HOSTS[1]
                # a session's events differ now and then in country, device and campaign
                device, browser, os = client if rng.random() < 0.9 else rng.choice(CLIENTS)
                utm = source if i == 0 or rng.random() < 0.3 else ""
                # a later page's referrer: mostly the previous page (of either host)
                last = f"https://{rng.choice(HOSTS)}/prev" if rng.random() < 0.7 else ""
                rows.append({
                    "eid": str(uuid.UUID(int=rng.getrandbits(128))), "vid": vid, "sid": sid,
                    "created_at": t, "ename": "page_view", "hostname": host,
                    "hhash": short_hash(host), "url": rng.choice(PAGES),
                    "last": rng.choice(REFERRERS) if i == 0 else last,
                    "country": country if rng.random() < 0.8 else "FR",
                    "region": "CA" if country == "US" and rng.random() < 0.5 else "",
                    "device": device, "browser": browser, "os": os,
                    "source": utm, "medium": {"google": "cpc", "news": "email"}.get(utm, ""),
                    "campaign": "spring" if utm else "",
                    "bot": int(rng.random() < 0.05), "server": int(rng.random() < 0.05),
                })  # fmt: skip
    rng.shuffle(rows)  # not in time order, as batches of several gateways may arrive
    return rows


@pytest.fixture
def loaded(store):
    rows = generated()
    for i in range(0, len(rows), 300):
        pytest_twisted.blockon(store.insert("events", rows[i : i + 300]))
    return store, rows


def rows_of(store, query: q.Query):
    d = store.query(query.sql, "JSONEachRow", query.params)
    return d.addCallback(lambda out: [json.loads(line) for line in out.decode().splitlines()])


def sql(store, text: str, params: dict):
    return rows_of(store, q.Query(text, params))


FILTERS = [
    {},
    {"country": "DE"},
    {"country": "FR"},
    {"device": "Mobile"},
    {"source": "google"},
    {"medium": "email", "campaign": "spring"},
    {"country": "US", "device": "Mobile"},
    {"host": HOSTS[1], "country": "DE"},
    {"country": "DE", "start": DAY0 + timedelta(days=2), "end": DAY0 + timedelta(days=2)},
]


def filters(extra: dict) -> q.Filters:
    return q.Filters(
        start=extra.get("start", DAY0),
        end=extra.get("end", DAY0 + timedelta(days=7)),
        limit=100,  # every row: ties at the limit would cut either way
        **{k: v for k, v in extra.items() if k not in ("start", "end")},
    )


@pytest_twisted.inlineCallbacks
def test_segment_figures_equal_sql_over_events(loaded):
    store, rows = loaded
    checked = 0
    for extra in FILTERS:
        f = filters(extra)
        where, params = q.event_conditions(f)
        # A session: a sid's events of one day; with a segment filter only its events that
        # have the segment (of any host), without one those of one host.
        session = "sid, toDate(created_at)" + ("" if f.segmented else ", hhash")
        for period in (f, f.previous()):
            got = yield rows_of(store, q.engagement("sfpla", period))
            pw, pp = q.event_conditions(period)
            want = yield sql(store, f"""
                SELECT toUInt32(count()) AS sessions, toUInt32(countIf(n = 1)) AS bounces,
                       toUInt64(sum(dateDiff('second', a, b))) AS duration_total
                FROM (SELECT count() AS n, min(created_at) AS a, max(created_at) AS b
                      FROM sfpla.events WHERE {pw} GROUP BY {session})""", pp)  # fmt: skip
            mine = [r for r in got if r["period"] == "current"]
            want = [r for r in want if r["sessions"]]  # an empty period: no row
            assert [{k: v for k, v in r.items() if k != "period"} for r in mine] == want, extra
            checked += bool(want)
        got = yield rows_of(store, q.entry_exit("sfpla", f))
        want = yield sql(store, f"""
            SELECT kind, url, toUInt32(count()) AS sessions FROM (
                SELECT min((created_at, url)).2 AS entry_url, max((created_at, url)).2 AS exit_url
                FROM sfpla.events WHERE {where} AND url != '' GROUP BY {session})
            ARRAY JOIN ['entry', 'exit'] AS kind, [entry_url, exit_url] AS url
            GROUP BY kind, url ORDER BY kind, sessions DESC, url""", params)  # fmt: skip
        assert got == want and want, extra
        got = yield rows_of(store, q.top_pages("sfpla", f))
        want = yield sql(
            store,
            f"""
            SELECT url, toUInt32(count()) AS pageviews FROM sfpla.events
            WHERE {where} AND url != '' GROUP BY url ORDER BY pageviews DESC, url""",
            params,
        )
        assert got == want and want, extra
        got = yield rows_of(store, q.referrers("sfpla", f))
        # not a referral: the event's own host (hostname), in any case, "www." or not
        want = yield sql(store, f"""
            SELECT if(domain(last) != '', domain(last), last) AS referrer,
                   toUInt32(count()) AS events FROM sfpla.events WHERE {where} AND last != ''
                   AND lower(referrer) NOT IN (hostname, concat('www.', hostname))
                   AND concat('www.', lower(referrer)) != hostname
            GROUP BY referrer ORDER BY events DESC, referrer""", params)  # fmt: skip
        assert got == want and want, extra
        if not extra:  # each host refers to the other now and then: those are referrals
            assert set(HOSTS) <= {r["referrer"] for r in got}, got
        got = yield rows_of(store, q.devices("sfpla", f))
        want = yield sql(store, f"""
            SELECT kind, name, toUInt32(count(DISTINCT vid)) AS visitors,
                   toUInt32(count()) AS events FROM sfpla.events
            ARRAY JOIN ['device', 'browser', 'os'] AS kind,
                       [toString(device), toString(browser), toString(os)] AS name
            WHERE {where} GROUP BY kind, name
            ORDER BY kind, visitors DESC, events DESC, name""", params)  # fmt: skip
        assert got == want and want, extra
    assert checked > len(FILTERS)  # every range and a previous day hold sessions


@pytest_twisted.inlineCallbacks
def test_segment_figures_asked_in_parts_of_days_add_up(loaded, monkeypatch):
    # As the API asks them with a segment filter (each part groups only its own sessions):
    # parts of 2 days over the 8 days of data, each with sessions.
    store, rows = loaded
    monkeypatch.setattr(q, "SESSION_DAYS_PER_PART", 2)
    for extra in FILTERS[1:]:
        f = filters(extra)
        parts = q.day_parts(f)
        assert [(p.start, p.end) for p in parts][0] == (f.start, min(f.end, f.start + timedelta(1)))
        assert sum(p.days for p in parts) == f.days
        whole = yield rows_of(store, q.engagement("sfpla", f))
        summed = {"sessions": 0, "bounces": 0, "duration_total": 0}
        for part in parts:
            for r in (yield rows_of(store, q.engagement("sfpla", part))):
                for k in summed:
                    summed[k] += r[k]
        assert [{k: r[k] for k in summed} for r in whole] == [summed], extra
        whole = yield rows_of(store, q.entry_exit("sfpla", f))
        counts: dict = {}
        for part in parts:
            for r in (yield rows_of(store, q.entry_exit("sfpla", part, part=True))):
                counts[(r["kind"], r["url"])] = counts.get((r["kind"], r["url"]), 0) + r["sessions"]
        ranked = sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
        assert [{"kind": k, "url": u, "sessions": n} for (k, u), n in ranked] == whole, extra


@pytest_twisted.inlineCallbacks
def test_segment_tables_hold_every_client_event_once(loaded):
    store, rows = loaded
    client = [r for r in rows if not r["bot"] and not r["server"]]
    got = yield sql(store, """
        SELECT (SELECT sum(events) FROM sfpla.dash_session_segs) AS sessions,
               (SELECT sumIf(events, dim = 'page') FROM sfpla.dash_page_segs) AS pages,
               (SELECT sumIf(events, dim = 'referrer') FROM sfpla.dash_page_segs) AS referrers,
               (SELECT sum(events) FROM sfpla.dash_device_segs) AS devices""", {})  # fmt: skip
    assert {k: int(v) for k, v in got[0].items()} == {
        "sessions": len(client),
        "pages": sum(1 for r in client if r["url"]),
        "referrers": sum(1 for r in client if r["last"]),
        "devices": len(client),
    }
