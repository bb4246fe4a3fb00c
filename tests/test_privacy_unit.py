"""Privacy logic without a process: cookie policy, cookieless ids across days, IP policy,
trusted proxies, user agents, consent rows, retention and subject conditions.

The clock is driven explicitly (``RequestInfo.now_ms``), so "the next day" is one argument away.
"""

from __future__ import annotations

import uuid

import pytest

from sfpltracker.ingest.consent import agreed_row
from sfpltracker.ingest.event import EventModel
from sfpltracker.ingest.request import RequestInfo
from sfpltracker.privacy import build_enrichers
from sfpltracker.privacy.catalogue import Table
from sfpltracker.privacy.identity import (
    CFLAGS,
    CookielessIds,
    CookiePolicy,
    DailySalts,
    analytics_consented,
)
from sfpltracker.privacy.ip import IPPolicy, TrustedProxies, truncate
from sfpltracker.privacy.retention import Jurisdiction, plan
from sfpltracker.privacy.subject import Subject, SubjectError
from sfpltracker.privacy.useragent import UserAgentEnricher, parse_agent

DAY_MS = 86_400_000
NOON = 1_760_000_400_000  # 2025-10-09 09:00:00 UTC
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CLIENT_IP = "198.51.100.77"


def model(tmp_path, *, mode="truncate", require_consent=False, honor_dnt=False, **kw):
    salts = DailySalts(tmp_path / "cookieless", kw.pop("salt", b""))
    return EventModel(
        ip_policy=IPPolicy(mode, b"ip-secret"),
        cookie_policy=CookiePolicy(require_consent, honor_dnt),
        cookieless=CookielessIds(salts),
        hash_key=b"hash-key",
        **kw,
    )


def request(now_ms=NOON, headers=None, cookies=None, ip=CLIENT_IP, ua=CHROME, host="example.com"):
    return RequestInfo(
        ip=ip,
        host=host,
        user_agent=ua,
        uri="/tr/v1/tr/",
        headers={"user-agent": ua, **(headers or {})},
        cookies=dict(cookies or {}),
        now_ms=now_ms,
    )


def event(m, req, raw=None, server=False):
    raw = dict(raw or {"ename": "page_view"})
    visitor = m.visitor(req, raw, server=server)
    return visitor, m.event_row(raw, req, visitor, server=server)


# -- cookie policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "require, dnt_honoured, headers, cookies, allowed",
    [
        (False, False, {}, {}, True),
        (False, False, {"sec-gpc": "1"}, {"CookieConsent": "1024"}, False),
        (False, False, {"dnt": "1"}, {}, True),
        (False, True, {"dnt": "1"}, {}, False),
        (True, False, {}, {}, False),
        (True, False, {}, {"CookieConsent": "1024"}, True),
        (True, False, {}, {"CookieConsent": str(CFLAGS["analytics"] | CFLAGS["marketing"])}, True),
        (True, False, {}, {"CookieConsent": "256"}, False),  # essential only: a refusal
        (False, False, {}, {"CookieConsent": "0"}, False),  # refusal counts without the key too
        (True, False, {}, {"CookieConsent": "true"}, True),
        (True, False, {}, {"CookieConsent": "deny"}, False),
    ],
)
def test_cookie_policy(require, dnt_honoured, headers, cookies, allowed):
    assert CookiePolicy(require, dnt_honoured).cookies_allowed(headers, cookies) is allowed


def test_consent_flags_keep_the_originals_numbers():
    assert CFLAGS["analytics"] == 1024 and CFLAGS["marketing"] == 4096
    assert analytics_consented("1024") and not analytics_consented("4096")
    assert not analytics_consented(None)


# -- identifiers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, headers, cookies",
    [
        ({}, {"sec-gpc": "1"}, {}),
        ({"honor_dnt": True}, {"dnt": "1"}, {}),
        ({"require_consent": True}, {}, {}),
    ],
    ids=["gpc", "dnt", "no-consent"],
)
def test_no_cookie_visitor_id_is_stable_within_a_day_and_differs_the_next(
    tmp_path, settings, headers, cookies
):
    m = model(tmp_path, **settings)
    sent = str(uuid.uuid4())
    cookie_vid = str(uuid.uuid4())
    morning = request(NOON, headers, {**cookies, "vid": cookie_vid})
    v1, row1 = event(m, morning, {"ename": "a", "vid": sent})
    assert not v1.cookies_allowed and v1.cookieless
    # neither the client's vid nor an old vid cookie is used: the day's id is
    assert row1["vid"] == v1.vid and row1["vid"] not in (sent, cookie_vid)
    _, later_same_day = event(m, request(NOON + 3 * 3600_000, headers, cookies))
    assert later_same_day["vid"] == row1["vid"]
    _, next_day = event(m, request(NOON + DAY_MS, headers, cookies))
    assert next_day["vid"] != row1["vid"]
    _, other_ip = event(m, request(NOON, headers, cookies, ip="198.51.100.78"))
    assert other_ip["vid"] != row1["vid"]
    _, other_site = event(m, request(NOON, headers, cookies, host="other.example"))
    assert other_site["vid"] != row1["vid"]


def test_daily_salts_are_shared_through_the_data_directory_and_old_ones_deleted(tmp_path):
    first = model(tmp_path, require_consent=True)
    vid = first.visitor(request(NOON)).vid
    # a restarted (or second) process reading the same directory computes the same id
    assert model(tmp_path, require_consent=True).visitor(request(NOON)).vid == vid
    salts_dir = tmp_path / "cookieless"
    assert sorted(p.name for p in salts_dir.iterdir()) == ["2025-10-09"]
    for n in range(1, 4):
        first.visitor(request(NOON + n * DAY_MS))
    # only today and yesterday are kept: nobody can recompute an older day's ids
    assert sorted(p.name for p in salts_dir.iterdir()) == ["2025-10-11", "2025-10-12"]
    fresh = model(tmp_path, require_consent=True)
    assert fresh.visitor(request(NOON)).vid != vid  # 2025-10-09's salt is gone


def test_configured_cookieless_salt_gives_the_same_ids_on_every_node(tmp_path):
    a = model(tmp_path / "a", salt=b"shared", require_consent=True)
    b = model(tmp_path / "b", salt=b"shared", require_consent=True)
    assert a.visitor(request()).vid == b.visitor(request()).vid
    assert a.visitor(request()).vid != a.visitor(request(NOON + DAY_MS)).vid
    assert not (tmp_path / "a" / "cookieless").exists()


def test_with_consent_the_stored_vid_is_the_cookie_vid(tmp_path):
    m = model(tmp_path, require_consent=True)
    cookie_vid = str(uuid.uuid4())
    v, row = event(m, request(cookies={"CookieConsent": "1024", "vid": cookie_vid}))
    assert v.cookies_allowed and row["vid"] == cookie_vid and row["cflags"] == 1024
    v, row = event(m, request(cookies={"CookieConsent": "1024"}))
    assert v.cookies_allowed and row["vid"] == v.vid and not v.cookieless


def test_server_events_keep_the_backends_vid_whatever_the_policy(tmp_path):
    m = model(tmp_path, require_consent=True)
    vid = str(uuid.uuid4())
    v, row = event(m, request(headers={"sec-gpc": "1"}), {"ename": "signup", "vid": vid}, True)
    assert row["vid"] == vid and not v.cookies_allowed


# -- IP policy ---------------------------------------------------------------------------------


def _values(row) -> str:
    return " ".join(str(v) for v in row.values())


@pytest.mark.parametrize("ip", [CLIENT_IP, "2a02:1234:5678:9abc:1:2:3:77"])
@pytest.mark.parametrize("mode", ["truncate", "hash", "none", "full"])
def test_ip_modes_store_only_what_the_mode_allows(tmp_path, mode, ip):
    m = model(tmp_path, mode=mode, enrichers=build_enrichers(None))
    _, row = event(m, request(ip=ip))
    if mode == "full":
        assert row["ip"] == ip and row["iphash"] and row["iphash"] != ip
        return
    assert ip not in _values(row)
    if mode == "truncate":
        assert row["ip"] == truncate(ip) and row["ip"] in ("198.51.100.0", "2a02:1234:5678::")
        assert row["iphash"] == IPPolicy("truncate", b"ip-secret").keyed_hash(row["ip"])
    elif mode == "hash":
        assert row["ip"] == row["iphash"] and len(row["ip"]) == 26
        other_key = IPPolicy("hash", b"another-secret").stored(ip)[0]
        assert other_key != row["ip"]  # keyed: not a plain hash anyone can recompute
    else:
        assert row["ip"] == "" and row["iphash"] == ""


def test_hash_mode_ip_of_a_cookieless_visitor_changes_daily(tmp_path):
    m = model(tmp_path, mode="hash")
    gpc = {"sec-gpc": "1"}
    _, today = event(m, request(NOON, gpc))
    _, tomorrow = event(m, request(NOON + DAY_MS, gpc))
    assert today["ip"] != tomorrow["ip"]
    _, consented = event(m, request(NOON))
    _, consented_tomorrow = event(m, request(NOON + DAY_MS))
    assert consented["ip"] == consented_tomorrow["ip"]


def test_spoofed_forwarded_headers_are_ignored_unless_the_peer_is_trusted():
    spoof = {"x-forwarded-for": "203.0.113.9", "x-real-ip": "203.0.113.10"}
    assert TrustedProxies([]).client_ip("198.51.100.1", spoof) == "198.51.100.1"
    assert TrustedProxies(["10.0.0.0/8"]).client_ip("198.51.100.1", spoof) == "198.51.100.1"
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    # the client prepends a fake hop: the rightmost untrusted hop is the real client
    chain = {"x-forwarded-for": "203.0.113.9, 198.51.100.7, 10.0.0.2"}
    assert proxies.client_ip("10.0.0.1", chain) == "198.51.100.7"
    assert proxies.client_ip("127.0.0.1", {"x-real-ip": "198.51.100.8"}) == "198.51.100.8"
    assert proxies.client_ip("::ffff:10.0.0.1", {"x-forwarded-for": "198.51.100.9:4431"}) == (
        "198.51.100.9"
    )
    assert proxies.client_ip("10.0.0.1", {"x-forwarded-for": "[2001:db8::5]:443"}) == "2001:db8::5"
    # every hop is one of ours: the leftmost is a client on the proxies' network
    assert proxies.client_ip("10.0.0.1", {"x-forwarded-for": "10.1.2.3, 10.0.0.2"}) == "10.1.2.3"
    # garbage ends the walk: nothing left of it is believed
    assert proxies.client_ip("10.0.0.1", {"x-forwarded-for": "198.51.100.1, junk"}) == "10.0.0.1"


# -- user agents and bots ----------------------------------------------------------------------


def test_user_agents_parsed_server_side_only_when_the_client_did_not_say():
    assert parse_agent(CHROME).browser == "Chrome" and parse_agent(CHROME).os == "Windows"
    assert parse_agent(CHROME).device == "Desktop" and not parse_agent(CHROME).bot
    assert parse_agent(IPHONE).os == "iOS" and parse_agent(IPHONE).device == "Mobile"
    bot = parse_agent(GOOGLEBOT)
    assert bot.bot and bot.device == "Bot" and bot.browser == "Googlebot"
    row = {"os": "Linux", "server": 0}
    UserAgentEnricher()(row, request(ua=IPHONE))
    assert row == {"os": "Linux", "browser": "Mobile Safari", "device": "Mobile", "server": 0}
    server_row = {"server": 1}
    UserAgentEnricher()(server_row, request(ua=GOOGLEBOT))
    assert server_row == {"server": 1}


def test_bots_are_flagged_and_dropped_with_drop_bots(tmp_path):
    m = model(tmp_path, enrichers=build_enrichers(None))
    _, row = event(m, request(ua=GOOGLEBOT))
    assert row["bot"] == 1
    _, human = event(m, request(ua=CHROME))
    assert human["bot"] == 0 and human["browser"] == "Chrome"
    dropping = model(tmp_path, enrichers=build_enrichers(None), drop_bots=True)
    assert event(dropping, request(ua=GOOGLEBOT))[1] is None
    assert event(dropping, request(ua=CHROME))[1] is not None


# -- consent rows ------------------------------------------------------------------------------


def test_agreed_row_types_fields_and_applies_the_ip_policy():
    req = request(headers={"referer": "https://example.com/privacy"})
    body = {
        "cflags": "5376",
        "uid": str(uuid.uuid4()),
        "ref": "not-a-uuid",  # dropped alone, as in events (the original lost the batch)
        "country": "de",
        "lat": "52.5",
        "w": 1280,
        "compliances": {"gdpr": True},
        "zip": 10115,
    }
    row = agreed_row(body, req, str(uuid.uuid4()), IPPolicy("truncate", b"k"), build_enrichers())
    assert row["cflags"] == 5376 and row["country"] == "DE" and row["lat"] == 52.5
    assert row["vp_w"] == 1280 and row["zip"] == "10115" and "ref" not in row
    assert row["url"] == "https://example.com/privacy" and row["ip"] == "198.51.100.0"
    assert row["compliances"] == '{"gdpr":true}' and row["browser"] == "Chrome"
    assert CLIENT_IP not in _values(row)


# -- retention and subjects --------------------------------------------------------------------


def _tables():
    events = Table(
        "events",
        "ReplacingMergeTree",
        {
            "eid": "UUID",
            "vid": "UUID",
            "uid": "UUID",
            "sid": "UUID",
            "ehash": "String",
            "ref": "UUID",
            "country": "LowCardinality(String)",
            "region": "String",
            "ip": "String",
            "created_at": "DateTime64(3, 'UTC')",
        },
    )
    return {
        "events": events,
        "hits": Table("hits", "SummingMergeTree", {"url": "String", "date": "Date"}),
        "dailies": Table("dailies", "SummingMergeTree", {"ip": "String", "day": "Date"}),
        "ltv": Table("ltv", "SummingMergeTree", {"id": "UUID", "id_type": "String"}),
        "jurisdictions": Table("jurisdictions", "ReplacingMergeTree", {"updated_at": "DateTime64"}),
        "logs": Table("logs", "MergeTree", {"created_at": "DateTime64(3, 'UTC')"}),
    }


def test_retention_plan_combines_global_and_jurisdiction_limits():
    gdpr = Jurisdiction("GDPR", 760, ["DE", "FR"], [])
    ccpa = Jurisdiction("CCPA", 730, [], ["US-CA"])
    steps, skipped = plan(_tables(), 0, [gdpr, ccpa], NOON)
    by_table = {s.table: s for s in steps}
    assert set(by_table) == {"events"}  # only tables with a country know a jurisdiction
    assert by_table["events"].rules == ["GDPR=760", "CCPA=730"]
    assert "upper(concat(`country`, '-', `region`)) IN ('US-CA')" in by_table["events"].where
    assert {"table": "jurisdictions", "why": "configuration table, never pruned"} in skipped
    steps, _ = plan(_tables(), 30, [gdpr], NOON)
    assert {s.table for s in steps} == {"events", "hits", "dailies", "logs"}
    events = next(s for s in steps if s.table == "events")
    assert events.rules == ["DataRetentionDays=30"]  # 760 days is longer: not needed
    assert "toDateTime64('2025-09-09 09:00:00.000', 3, 'UTC')" in events.where
    hits = next(s for s in steps if s.table == "hits")
    assert hits.where == "`date` < toDate('2025-09-09')"
    steps, _ = plan(_tables(), 30, [gdpr], NOON, logs_only=True)
    assert [s.table for s in steps] == ["logs"]


def test_subject_conditions_cover_every_column_that_can_hold_them():
    vid, uid, sid, orid = (str(uuid.uuid4()) for _ in range(4))
    subject = Subject.from_args(
        {"vids": [vid], "uids": [uid], "ehashes": ["abc_DEF-1"], "sids": [sid], "orids": [orid]}
    )
    tables = _tables()
    where = subject.condition(tables["events"])
    for part in (f"`vid` IN (toUUID('{vid}'))", f"`uid` IN (toUUID('{uid}'))", "`ehash` IN"):
        assert part in where
    assert f"`sid` IN (toUUID('{sid}'))" in where
    ltv = subject.condition(tables["ltv"])
    assert f"(`id_type` = 'orid' AND `id` IN (toUUID('{orid}')))" in ltv
    assert subject.condition(tables["hits"]) is None
    assert subject.condition(tables["jurisdictions"]) is None
    assert subject.ref_condition(tables["events"]) == f"`ref` IN (toUUID('{vid}'))"
    with_ips = Subject.from_args({"vids": [vid], "ips": ["abc"]})
    assert with_ips.condition(tables["dailies"]) == "`ip` IN ('abc')"
    assert "`ip`" not in with_ips.condition(tables["events"])  # events go by their ids
    for bad in ({}, {"vids": ["nope"]}, {"uids": ["00000000-0000-0000-0000-000000000000"]}):
        with pytest.raises(SubjectError):
            Subject.from_args(bad)
    with pytest.raises(SubjectError):
        Subject.from_args({"ehashes": ["x' OR 1=1 --"]})
