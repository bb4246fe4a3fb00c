"""The dashboard API (``/dashboard/api/`` on the query listener) against a real gateway with
known data (tests/dashboard_data.py): each figure equals SQL over the same stored rows, and
sign-in, sessions, CSRF and the login throttle hold.

The expected numbers come from plain SQL through the query listener (``FINAL``, exact
``count(DISTINCT ...)``), written independently of sfpltracker/dashboard/queries.py.
"""

from __future__ import annotations

import datetime
import json

import pytest

from sfpltracker.dashboard.api import json_rows
from tests import dashboard_data as dd
from tests.gateway_process import GatewayProcess, http_request

CLIENT = "bot = 0 AND server = 0"
ZERO = "00000000-0000-0000-0000-000000000000"
FIGURES = ["overview", "engagement", "pages", "entry-exit", "referrers", "campaigns", "countries",
           "devices", "goals", "links", "revenue", "consent"]  # fmt: skip


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("dashboard"), dd.CONFIG) as gateway:
        gateway.data = dd.load(gateway)
        yield gateway


@pytest.fixture(scope="module")
def dash(gw):
    d = dd.Dashboard(gw)
    r = d.login(gw.data["account"]["uid"], gw.data["account"]["secret"])
    assert r.status == 200, r.body
    return d


def ints(rows):
    return [{k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in r.items()}
            for r in rows]  # fmt: skip


def sql(gw, text):
    return ints(gw.query(text))


# -- figures equal SQL -----------------------------------------------------------------------


def test_overview_equals_sql(gw, dash):
    got = dash.get("overview")
    totals = sql(gw, f"SELECT count(DISTINCT vid) AS visitors, count(DISTINCT sid) AS sessions, "
                     f"countIf(url != '') AS pageviews, count() AS events "
                     f"FROM sfpla.events FINAL WHERE {CLIENT}")[0]  # fmt: skip
    assert got["current"] == totals
    assert totals["visitors"] == 7  # v1-v4 and three link clicks; the bot is not counted
    assert got["previous"] == {"visitors": 0, "sessions": 0, "pageviews": 0, "events": 0}
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert [p for p in got["series"] if p["pageviews"]] == [
        {"t": today, "visitors": totals["visitors"], "pageviews": totals["pageviews"]}
    ]
    assert len(got["series"]) == 30
    assert got["realtime"]["visitors"] == totals["visitors"]  # all sent just now
    # the same from events (a segment filter) and per hour (a range of one day)
    segment = dash.get("overview", device="Mobile")["current"]
    assert segment == sql(gw, f"SELECT count(DISTINCT vid) AS visitors, count(DISTINCT sid) AS "
                              f"sessions, countIf(url != '') AS pageviews, count() AS events FROM "
                              f"sfpla.events FINAL WHERE {CLIENT} AND device = 'Mobile'")[0]  # fmt: skip
    hourly = dash.get("overview", **{"from": today, "to": today})
    assert hourly["bucket"] == "hour" and len(hourly["series"]) == 24
    assert sum(p["pageviews"] for p in hourly["series"]) == totals["pageviews"]


def test_engagement_equals_sql(gw, dash):
    per_session = sql(gw, f"SELECT sid, count() AS n, dateDiff('second', min(created_at), "
                          f"max(created_at)) AS d FROM sfpla.events FINAL WHERE {CLIENT} "
                          f"GROUP BY sid")  # fmt: skip
    sessions = len(per_session)
    got = dash.get("engagement")
    assert got["current"] == {
        "sessions": sessions,
        "bounce_rate": round(100 * sum(1 for s in per_session if s["n"] == 1) / sessions, 1),
        "visit_duration": round(sum(s["d"] for s in per_session) / sessions),
    }
    assert got["current"]["bounce_rate"] == round(100 * 4 / 7, 1)  # v3 and the three clicks
    assert got["previous"] == {"sessions": 0, "bounce_rate": 0.0, "visit_duration": 0}


def test_pages_entry_exit_equal_sql(gw, dash):
    pages = dash.get("pages")["pages"]
    want = sql(gw, f"SELECT url, count() AS pageviews FROM sfpla.events FINAL "
                   f"WHERE {CLIENT} AND url != '' GROUP BY url ORDER BY pageviews DESC, url LIMIT 10")  # fmt: skip
    assert pages == want
    got = dash.get("entry-exit")
    for kind, pick in (("entry", "argMin"), ("exit", "argMax")):
        want = sql(gw, f"SELECT page AS url, count() AS sessions FROM (SELECT {pick}(url, created_at) AS page "
                       f"FROM sfpla.events FINAL WHERE {CLIENT} AND url != '' GROUP BY sid) "
                       f"GROUP BY page ORDER BY sessions DESC, page")  # fmt: skip
        assert got[kind] == want


def test_entry_exit_top_with_a_limit_equals_sql(gw, dash):
    # With a segment filter the API adds the parts' counts up and keeps the top ``limit``:
    # ties in sessions go by url, as ORDER BY sessions DESC, url (Desktop's exits are 2, 1, 1
    # sessions: limit 2 cuts in the tie).
    for segment in ({"device": "Desktop"}, {"country": "DE"}, {}):
        for limit in (1, 2):
            got = dash.get("entry-exit", limit=limit, **segment)
            cond = "".join(f" AND {k} = '{v}'" for k, v in segment.items())
            for kind, pick in (("entry", "min"), ("exit", "max")):
                want = sql(gw, f"SELECT page AS url, count() AS sessions FROM (SELECT "
                               f"{pick}((created_at, url)).2 AS page FROM sfpla.events FINAL "
                               f"WHERE {CLIENT} AND url != ''{cond} GROUP BY sid) GROUP BY page "
                               f"ORDER BY sessions DESC, page LIMIT {limit}")  # fmt: skip
                assert got[kind] == want and want, (segment, limit, kind)
    tied = dash.get("entry-exit", limit=3, device="Desktop")["exit"]
    assert [e["sessions"] for e in tied] == [2, 1, 1], tied


def test_session_rollup_equals_events_and_segments_count_alike(gw, dash):
    # dash_sessions (read by engagement and entry-exit): per day, host and session, what the
    # session's client events of that day are.
    want = sql(gw, f"SELECT toString(toDate(created_at)) AS day, hhash, toString(sid) AS sid, "
                   f"count() AS events, toString(min(created_at)) AS first_at, "
                   f"toString(max(created_at)) AS last_at, argMinIf(url, created_at, url != '') "
                   f"AS entry, argMaxIf(url, created_at, url != '') AS exit FROM sfpla.events "
                   f"FINAL WHERE {CLIENT} GROUP BY day, hhash, sid ORDER BY sid")  # fmt: skip
    got = sql(gw, "SELECT toString(day) AS day, hhash, toString(sid) AS sid, events, "
                  "toString(first_at) AS first_at, toString(last_at) AS last_at, "
                  "entry.2 AS entry, exit.2 AS exit FROM sfpla.dash_sessions FINAL ORDER BY sid")  # fmt: skip
    assert got == want and len(got) == 7
    # with a segment filter the figures read events, counting sessions the same way
    for segment in ({"device": "Desktop"}, {"country": "DE"}):
        ((name, value),) = segment.items()
        per_session = sql(gw, f"SELECT count() AS n, dateDiff('second', min(created_at), "
                              f"max(created_at)) AS d FROM sfpla.events FINAL WHERE {CLIENT} "
                              f"AND {name} = '{value}' GROUP BY sid")  # fmt: skip
        got = dash.get("engagement", **segment)["current"]
        assert got["sessions"] == len(per_session) > 0
        assert got["bounce_rate"] == round(
            100 * sum(1 for s in per_session if s["n"] == 1) / len(per_session), 1
        )
        assert got["visit_duration"] == round(sum(s["d"] for s in per_session) / len(per_session))
        entries = sql(gw, f"SELECT page AS url, count() AS sessions FROM (SELECT argMin(url, "
                          f"created_at) AS page FROM sfpla.events FINAL WHERE {CLIENT} AND "
                          f"url != '' AND {name} = '{value}' GROUP BY sid) GROUP BY page "
                          f"ORDER BY sessions DESC, page")  # fmt: skip
        assert dash.get("entry-exit", **segment)["entry"] == entries


def test_sources_equal_sql(gw, dash):
    got = dash.get("referrers")["referrers"]
    assert got == sql(gw, f"SELECT domain(last) AS referrer, count() AS events FROM sfpla.events "
                          f"FINAL WHERE {CLIENT} AND {dd.REFERRAL} GROUP BY referrer "
                          f"ORDER BY events DESC, referrer")  # fmt: skip
    # no spam.example (a bot), no shop.example (internal); blog.example is another tracked host
    assert got == [{"referrer": "www.google.com", "events": 2},
                   {"referrer": "blog.example", "events": 1},
                   {"referrer": "news.example", "events": 1}]  # fmt: skip
    got = dash.get("campaigns")["campaigns"]
    assert got == sql(gw, f"SELECT source, medium, campaign, count(DISTINCT vid) AS visitors, "
                          f"count() AS events FROM sfpla.events FINAL WHERE {CLIENT} AND "
                          f"(source != '' OR medium != '' OR campaign != '') GROUP BY source, medium, "
                          f"campaign ORDER BY visitors DESC, events DESC, source")  # fmt: skip
    assert len(got) == 2


def test_countries_and_devices_equal_sql_without_bots(gw, dash):
    got = dash.get("countries")["countries"]
    assert got == sql(gw, f"SELECT toString(country) AS country, count(DISTINCT vid) AS visitors, "
                          f"count() AS events FROM sfpla.events FINAL WHERE {CLIENT} "
                          f"GROUP BY country ORDER BY visitors DESC, events DESC, country")  # fmt: skip
    assert "CN" not in {r["country"] for r in got}
    got = dash.get("devices")
    for kind in ("device", "browser", "os"):
        want = sql(gw, f"SELECT toString({kind}) AS name, count(DISTINCT vid) AS visitors, "
                       f"count() AS events FROM sfpla.events FINAL WHERE {CLIENT} GROUP BY name "
                       f"ORDER BY visitors DESC, events DESC, name")  # fmt: skip
        assert got[kind] == want
    assert "Bot" not in {r["name"] for r in got["device"]}
    assert "Googlebot" not in {r["name"] for r in got["browser"]}


def test_goals_and_funnel_equal_sql(gw, dash):
    got = dash.get("goals", steps="page_view,signup,purchase")
    assert got["enames"] == sql(gw, f"SELECT toString(ename) AS ename, count() AS events, "
                                    f"count(DISTINCT vid) AS visitors FROM sfpla.events FINAL "
                                    f"WHERE {CLIENT} AND ename != '' GROUP BY ename "
                                    f"ORDER BY events DESC, ename")  # fmt: skip
    assert got["outcomes"] == sql(gw, f"SELECT outcome, count() AS events FROM sfpla.events FINAL "
                                      f"WHERE {CLIENT} AND outcome != '' GROUP BY outcome "
                                      f"ORDER BY events DESC, outcome")  # fmt: skip
    # Visitors who did each step after the one before (the known data: v1-v4, v1+v2, v1).
    assert got["funnel"] == [
        {"step": "page_view", "visitors": 4},
        {"step": "signup", "visitors": 2},
        {"step": "purchase", "visitors": 1},
    ]


def test_links_equal_sql(gw, dash):
    got = dash.get("links")
    want = sql(gw, "SELECT toString(r.id) AS id, r.urlfrom AS urlfrom, r.urlto AS urlto, "
                   "(SELECT count() FROM sfpla.events FINAL WHERE bot = 0 AND rid = r.id) AS clicks "
                   "FROM sfpla.redirects AS r FINAL WHERE deleted = 0")  # fmt: skip
    assert got["links"] == want and want[0]["clicks"] == 3
    assert sum(p["clicks"] for p in got["clicks"]) == 3
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert got["clicks"][-1] == {"t": today, "clicks": 3}


def test_revenue_equals_sql(gw, dash):
    got = dash.get("revenue")
    totals = sql(gw, "SELECT sum(revenue) AS revenue, count() AS payments, "
                     "count(DISTINCT uid) AS customers FROM sfpla.payments FINAL")[0]  # fmt: skip
    assert got["totals"] == totals and totals["payments"] == 3
    assert got["series"][-1]["lifetime_revenue"] == pytest.approx(totals["revenue"])
    assert got["top_customers"] == sql(gw, "SELECT toString(uid) AS uid, sum(revenue) AS ltv, "
                                           "count() AS payments FROM sfpla.payments FINAL "
                                           "GROUP BY uid ORDER BY ltv DESC")  # fmt: skip


def test_consent_equals_sql(gw, dash):
    got = dash.get("consent")["decisions"]
    rows = sql(gw, "SELECT toString(vid) AS vid, cflags, toString(country) AS country, region "
                   "FROM sfpla.agreed FINAL")  # fmt: skip
    jurisdictions = sql(gw, "SELECT toString(regulation) AS regulation, countries, regions "
                            "FROM sfpla.jurisdictions FINAL")  # fmt: skip

    def where(row):
        place = f"{row['country']}-{row['region']}".upper()
        for j in jurisdictions:
            if place in [r.upper() for r in j["regions"]]:
                return j["regulation"]
        for j in jurisdictions:
            if row["country"].upper() in j["countries"]:
                return j["regulation"]
        return "none"

    want: dict = {}
    for row in rows:
        key = (int(row["cflags"]), where(row))
        want[key] = want.get(key, 0) + 1
    assert {(r["cflags"], r["jurisdiction"]): r["decisions"] for r in got} == want
    assert want[(256, "CCPA/CPRA")] == 1 and want[(1280, "GDPR")] == 1


def test_segment_and_host_filters_equal_sql(gw, dash):
    got = dash.get("pages", device="Desktop")["pages"]
    assert got == sql(gw, f"SELECT url, count() AS pageviews FROM sfpla.events FINAL "
                          f"WHERE {CLIENT} AND url != '' AND device = 'Desktop' "
                          f"GROUP BY url ORDER BY pageviews DESC, url")  # fmt: skip
    got = dash.get("overview", country="DE", source="google")["current"]
    assert got["visitors"] == 1 and got["pageviews"] == 2
    # host: the host the events were sent to (the short-link host here)
    got = dash.get("pages", host="go.example")["pages"]
    assert got == [{"url": "http://go.example/spring", "pageviews": 3}]
    got = dash.get("referrers", host="go.example")["referrers"]
    assert got == []
    # the referrers of one host, with and without a segment filter (dash_page_segs)
    for segment, want in (({}, [("blog.example", 1), ("www.google.com", 1)]),
                          ({"country": "DE"}, [("blog.example", 1)])):  # fmt: skip
        got = dash.get("referrers", host="shop.example", **segment)["referrers"]
        cond = "".join(f" AND {k} = '{v}'" for k, v in segment.items())
        assert got == sql(gw, f"SELECT domain(last) AS referrer, count() AS events FROM "
                              f"sfpla.events FINAL WHERE {CLIENT} AND {dd.REFERRAL} AND "
                              f"hostname = 'shop.example'{cond} GROUP BY referrer "
                              f"ORDER BY events DESC, referrer")  # fmt: skip
        assert [(r["referrer"], r["events"]) for r in got] == want, segment
    # every host, a segment filter: v1's (www.shop.example) and v4's shop.example are internal
    got = dash.get("referrers", country="DE")["referrers"]
    assert got == [{"referrer": "blog.example", "events": 1},
                   {"referrer": "www.google.com", "events": 1}]  # fmt: skip


def test_a_range_without_data_is_empty(dash):
    got = dash.get("overview", **{"from": "2020-01-01", "to": "2020-01-31"})
    assert got["current"]["visitors"] == 0 and got["filters"]["from"] == "2020-01-01"
    assert dash.get("pages", **{"from": "2020-01-01", "to": "2020-01-02"})["pages"] == []


# -- bad input, no session, CSRF, the page ----------------------------------------------------


@pytest.mark.parametrize(
    "query, reason",
    [
        ("from=2026-13-01", "'from' is not a date"),
        ("from=yesterday", "'from' must be a date YYYY-MM-DD"),
        ("from=2026-02-02&to=2026-02-01", "'from' is after 'to'"),
        ("limit=0", "'limit' must be a whole number from 1 to 100"),
        ("country=" + "x" * 300, "'country' is longer than 256 characters"),
        ("from=2000-01-01&to=2026-01-01", "the date range is longer than 3660 days"),
        ("from=0001-01-01", "'from' must be a day from 1980 to 2100"),
        ("to=9999-12-31", "'to' must be a day from 1980 to 2100"),
    ],
)
def test_bad_filters_are_400_with_a_reason(dash, query, reason):
    r = dash.request("GET", f"/dashboard/api/pages?{query}")
    assert r.status == 400 and r.json() == {"error": reason}


def test_sql_in_a_filter_is_only_a_value(gw, dash):
    evil = "x' OR 1=1 --"
    got = dash.get("pages", device=evil.replace(" ", "%20").replace("'", "%27").replace("=", "%3D"))
    assert got["pages"] == [] and got["filters"]["device"] == evil


def test_funnel_of_too_many_steps_is_400(dash):
    r = dash.request("GET", "/dashboard/api/goals?steps=" + ",".join("abcdefghi"))
    assert r.status == 400 and "at most 8 steps" in r.json()["error"]


def test_every_figure_needs_a_session(gw):
    anonymous = dd.Dashboard(gw)
    for figure in FIGURES:
        r = anonymous.request("GET", f"/dashboard/api/{figure}")
        assert r.status == 401 and r.json() == {"error": "sign in first"}, figure
    forged = anonymous.request(
        "GET", "/dashboard/api/pages", headers={"Cookie": "sfpl_dashboard=x"}
    )
    assert forged.status == 401
    assert anonymous.request("GET", "/dashboard/api/session").json() == {"signed_in": False}


def test_session_cookie_flags_and_csrf(gw):
    d = dd.Dashboard(gw)
    r = d.login(gw.data["account"]["uid"], gw.data["account"]["secret"])
    flags = [f.strip().lower() for f in r.header("set-cookie").split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/dashboard" in flags
    assert "secure" not in flags  # plain HTTP on loopback; Secure is set on TLS
    assert d.get("session")["csrf"] == d.csrf
    # A state-changing request without, or with a wrong, CSRF token is refused.
    assert d.request("POST", "/dashboard/api/logout").status == 403
    r = d.request("POST", "/dashboard/api/logout", headers={"X-CSRF-Token": d.csrf + "x"})
    assert r.status == 403 and r.json() == {"error": "missing or wrong CSRF token"}
    assert d.request("GET", "/dashboard/api/pages").status == 200  # still signed in
    r = d.request("POST", "/dashboard/api/logout", headers={"X-CSRF-Token": d.csrf})
    assert r.status == 200
    assert d.request("GET", "/dashboard/api/pages").status == 401


def test_login_refusals(gw):
    account = gw.data["account"]
    r = http_request(gw.query_port, "POST", "/dashboard/api/login",
                     body=f"uid={account['uid']}&secret={account['secret']}".encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status == 415  # a cross-site form cannot sign anyone in
    r = dd.Dashboard(gw).login(account["uid"], account["secret"],
                               headers={"Origin": "https://evil.example"})  # fmt: skip
    assert r.status == 403
    r = http_request(gw.query_port, "POST", "/dashboard/api/login", body=b"[1",
                     headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status == 400 and "error" in r.json()
    assert dd.Dashboard(gw).login("", "").status == 401


def test_the_page_and_its_files(gw):
    r = http_request(gw.query_port, "GET", "/dashboard")
    assert r.status == 301 and r.header("location") == "/dashboard/"
    r = http_request(gw.query_port, "GET", "/dashboard/")
    assert r.status == 200 and b'src="app.js"' in r.body
    assert "script-src 'self'" in r.header("content-security-policy")
    r = http_request(gw.query_port, "GET", "/dashboard/uPlot.iife.min.js")
    assert r.status == 200 and b"uPlot" in r.body
    for path in ("/dashboard/../config.json", "/dashboard/index.html/..", "/dashboard/nope.js"):
        assert http_request(gw.query_port, "GET", path).status == 404
    # the query interface is still there
    assert gw.query("SELECT 1 AS one") == [{"one": 1}]


def test_login_throttle_applies(gateway_factory):
    gw = gateway_factory({**dd.CONFIG, "LoginFailureLimit": 2})
    account = dd.create_account(gw, "t")
    d = dd.Dashboard(gw)
    for _ in range(2):
        assert d.login(account["uid"], "wrong").status == 401
    r = d.login(account["uid"], account["secret"])  # right, but too late
    assert r.status == 429 and r.header("retry-after") and "too many" in r.json()["error"]
    # the admin API shares the throttle
    r = gw.http("GET", "/tr/v1/rpi/redirects/x.example",
                headers={"Authorization": f"Bearer {account['uid']}.{account['secret']}"})  # fmt: skip
    assert r.status == 429


def test_random_filters_never_fail_the_server(gw, dash):
    """Hypothesis: any query string on any figure is answered 200 or 400 with a reason."""
    from urllib.parse import urlencode

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    keys = st.sampled_from(["from", "to", "host", "source", "medium", "campaign", "country",
                            "device", "limit", "steps", "window", "x"])  # fmt: skip
    values = st.one_of(
        st.text(max_size=40),
        st.dates().map(str),
        st.integers(-10, 10**12).map(str),
        st.sampled_from(["2026-02-30", "page_view,signup", "' OR 1=1 --", "%", "\x00"]),
    )

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(figure=st.sampled_from(FIGURES), params=st.dictionaries(keys, values, max_size=4))
    def check(figure, params):
        r = dash.request("GET", f"/dashboard/api/{figure}?{urlencode(params)}")
        assert r.status in (200, 400), (figure, params, r.status, r.body[:300])
        if r.status == 400:
            assert r.json()["error"]

    check()


def test_links_and_revenue_are_per_day_for_a_one_day_range(gw, dash):
    """Found by the OpenAPI schema check: a range of 1-2 days gave hourly buckets that the
    per-day clicks and payments never matched (all zero)."""
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    got = dash.get("links", **{"from": today, "to": today})
    assert got["clicks"] == [{"t": today, "clicks": 3}]
    got = dash.get("revenue", **{"from": today, "to": today})
    assert [p["t"] for p in got["series"]] == [today]
    assert got["series"][0]["payments"] == 3
    assert got["series"][0]["revenue"] == pytest.approx(got["totals"]["revenue"])


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("TRACE", "/dashboard/api/session", "GET, HEAD"),
        ("GET", "/dashboard/api/logout", "POST"),
        ("PUT", "/dashboard/api/login", "POST"),
        ("DELETE", "/dashboard/api/pages", "GET, HEAD"),
        ("POST", "/dashboard/app.js", "GET, HEAD"),
    ],
)
def test_a_405_names_the_methods_that_work(dash, method, path, allowed):
    """Found by schemathesis (tests/test_openapi.py): signed in or not, a method a route does
    not take is 405 with ``Allow`` (RFC 9110 15.5.6), not 200, 403 or 404."""
    for who in (dash, dd.Dashboard(dash.gw)):
        r = who.request(method, path)
        assert r.status == 405 and r.header("allow") == allowed, (method, path, r.status)
        assert r.json()["error"]


def test_answers_read_as_one_json_array():
    # The API reads a JSONEachRow answer in one parser call: a row's strings may hold what
    # separates rows and values (an escaped newline, commas, braces), and no rows is [].
    rows = [{"url": "https://s.test/a?x=1,2&y={}\n}{", "sessions": 3},
            {"url": "https://s.test/ü\\n\"", "sessions": 1}]  # fmt: skip
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    assert json_rows(body) == rows
    assert json_rows(b"") == [] and json_rows(b"\n") == []
