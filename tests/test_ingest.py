"""Unit tests: every input form, field typing, ids, cookie rules and the events row."""

import json
import uuid

import pytest

from sfpltracker.ingest.event import EventModel
from sfpltracker.ingest.fields import param_value, to_float, to_int
from sfpltracker.ingest.ids import parse_uuid, short_hash, uuid7
from sfpltracker.ingest.parse import BadInput, json_events, path_pairs, query_pairs
from sfpltracker.ingest.payments import payment_rows
from sfpltracker.ingest.request import RequestInfo, host_only
from sfpltracker.privacy.identity import CookielessIds, CookiePolicy, DailySalts
from sfpltracker.privacy.ip import IPPolicy, TrustedProxies

NOW = 1_795_000_000_000  # a fixed clock: 2026-11-18


def model(**kw):
    args = dict(
        ip_policy=IPPolicy("truncate", b"k"),
        cookie_policy=CookiePolicy(require_consent=False, honor_dnt=False),
        cookieless=CookielessIds(DailySalts(secret=b"salt")),
        hash_key=b"h",
    )
    args.update(kw)
    return EventModel(**args)


def req(**kw):
    base = dict(
        ip="203.0.113.77",
        host="example.com",
        user_agent="Mozilla/5.0 Test",
        uri="/tr/v1/tr/",
        now_ms=NOW,
    )
    base.update(kw)
    return RequestInfo(**base)


def row_for(raw, m=None, r=None, server=False):
    m = m or model()
    r = r or req()
    return m.event_row(raw, r, m.visitor(r, raw), server=server)


# -- parsing -------------------------------------------------------------------------------


def test_path_pairs_start_after_the_route_and_keep_case():
    assert path_pairs("vid/ABC/ename/Page_View/etyp/view") == {
        "vid": "ABC",
        "ename": "Page_View",
        "etyp": "view",
    }
    assert path_pairs("vid/ABC/ename") == {"vid": "ABC"}  # odd tail ignored
    assert path_pairs("") == {}
    assert path_pairs("url/https%3A%2F%2Fx.com%2Fa") == {"url": "https://x.com/a"}
    assert "v1" not in path_pairs("vid/1/ename/x")


def test_query_pairs_map_utm_and_honour_the_ignore_key():
    assert query_pairs("utm_source=Google&UTM_Medium=cpc&plan=3&plan=4", "igqp") == {
        "source": "Google",
        "medium": "cpc",
        "plan": "3",
    }
    assert query_pairs("utm_source=x&igqp=1", "igqp") == {}


@pytest.mark.parametrize(
    "body,error",
    [
        (b"{", "malformed JSON"),
        (b"[1,2", "malformed JSON"),
        (b'"text"', "expected a JSON object"),
        (b"\xff\xfe", "malformed JSON"),
    ],
)
def test_bad_json_bodies_are_refused_with_a_reason(body, error):
    with pytest.raises(BadInput, match=error):
        json_events(body, 10)


def test_batches_are_limited():
    assert len(json_events(json.dumps([{}] * 10).encode(), 10)) == 10
    with pytest.raises(BadInput, match="too many events"):
        json_events(json.dumps([{}] * 11).encode(), 10)


def test_host_only_strips_port_and_case():
    assert host_only("Example.COM:8443") == "example.com"
    assert host_only("[::1]:80") == "::1"
    assert host_only("localhost") == "localhost"


# -- typing --------------------------------------------------------------------------------


def test_field_coercion():
    assert to_int("12") == 12 and to_int(12.0) == 12 and to_int("x") is None
    assert to_int(1.5) is None and to_int("9" * 30) is None
    assert to_float("1.5") == 1.5 and to_float("nan") is None and to_float(True) is None
    assert param_value("3") == 3 and param_value("true") is True
    assert param_value("02134") == "02134" and param_value("1.50") == 1.5
    assert param_value("007.5") == "007.5" and param_value({"a": "2"}) == {"a": 2}


def test_one_badly_typed_field_is_dropped_alone():
    row = row_for(
        {
            "ename": "x",
            "lat": "north",
            "zip": 94107,
            "duration": "long",
            "uid": "not-a-uuid",
            "ver": 2**40,
            "app": {"nested": 1},
        }
    )
    assert row["ename"] == "x"
    assert row["zip"] == "94107"  # coerced
    for dropped in ("lat", "duration", "uid", "ver", "app"):
        assert dropped not in row


def test_values_keep_their_case_except_the_normalised_fields():
    row = row_for(
        {
            "ename": "Page_View",
            "etyp": "VIEW",
            "source": "Google",
            "medium": "CPC",
            "campaign": "Black_Friday",
            "country": "us",
            "city": "San Francisco",
            "url": "https://Ex.com/A?q=1",
            "app": "MyApp",
        }
    )
    assert (row["ename"], row["etyp"], row["source"]) == ("page_view", "view", "google")
    assert (row["medium"], row["campaign"], row["country"]) == ("cpc", "black_friday", "US")
    assert row["city"] == "San Francisco"
    assert row["url"] == "https://Ex.com/A?q=1"
    assert row["app"] == "MyApp"


def test_unknown_keys_land_in_params_the_same_from_every_form():
    from_get = row_for({**path_pairs("ename/x/plan/3"), **query_pairs("color=Red&n=1.5", "igqp")})
    from_post = row_for({"ename": "x", "plan": 3, "color": "Red", "n": 1.5})
    explicit = row_for({"ename": "x", "params": {"plan": "3", "color": "Red", "n": 1.5}})
    expected = {"plan": 3, "color": "Red", "n": 1.5}
    assert json.loads(from_get["params"]) == expected
    assert json.loads(from_post["params"]) == expected
    assert json.loads(explicit["params"]) == expected


def test_content_becomes_ename_when_no_ename():
    row = row_for({"content": "Signup"})
    assert row["ename"] == "signup" and "content" not in row


# -- ids -----------------------------------------------------------------------------------


def test_eid_is_the_clients_valid_uuid_else_a_new_uuid7():
    given = str(uuid.uuid4())
    assert row_for({"eid": given})["eid"] == given
    minted = row_for({"eid": "nope"})["eid"]
    assert uuid.UUID(minted).version == 7
    assert uuid.UUID(uuid7(NOW)).version == 7
    assert uuid7(NOW) < uuid7(NOW + 1)  # time ordered


def test_new_visitor_row_carries_the_vid_the_cookie_gets():
    m, r = model(), req()
    visitor = m.visitor(r, {})
    assert parse_uuid(visitor.vid) and visitor.cookies_allowed
    row = m.event_row({"ename": "x"}, r, visitor, server=False)
    assert row["vid"] == visitor.vid and row["sid"] == visitor.sid


def test_cookie_vid_wins_over_input():
    cookie_vid, body_vid = str(uuid.uuid4()), str(uuid.uuid4())
    m, r = model(), req(cookies={"vid": cookie_vid})
    visitor = m.visitor(r, {"vid": body_vid})
    assert visitor.vid == cookie_vid
    assert m.event_row({"vid": body_vid}, r, visitor, server=False)["vid"] == cookie_vid


def test_original_short_hashes():
    assert short_hash("localhost") == "d4md6"
    assert short_hash("localhost:8880") == "1ehjhx4"


# -- cookie policy and privacy -------------------------------------------------------------


@pytest.mark.parametrize(
    "headers,cookies,policy,allowed",
    [
        ({}, {}, CookiePolicy(False, False), True),
        ({"sec-gpc": "1"}, {}, CookiePolicy(False, False), False),
        ({"dnt": "1"}, {}, CookiePolicy(False, False), True),
        ({"dnt": "1"}, {}, CookiePolicy(False, True), False),
        ({}, {}, CookiePolicy(True, False), False),
        ({}, {"CookieConsent": "1024"}, CookiePolicy(True, False), True),
    ],
)
def test_cookie_rules(headers, cookies, policy, allowed):
    assert policy.cookies_allowed(headers, cookies) is allowed


def test_cookieless_visitor_id_rotates_daily():
    m = model(cookie_policy=CookiePolicy(False, False))
    day1 = req(headers={"sec-gpc": "1"})
    day1_again = req(headers={"sec-gpc": "1"}, now_ms=NOW + 3_600_000)
    day2 = req(headers={"sec-gpc": "1"}, now_ms=NOW + 86_400_000)
    v1, v1b, v2 = (m.visitor(r, {}) for r in (day1, day1_again, day2))
    assert not v1.cookies_allowed
    assert v1.vid == v1b.vid != v2.vid
    other_ip = m.visitor(req(headers={"sec-gpc": "1"}, ip="198.51.100.1"), {})
    assert other_ip.vid != v1.vid


def test_stored_ip_follows_the_ip_mode():
    r = req(ip="203.0.113.77")
    assert row_for({}, m=model(), r=r)["ip"] == "203.0.113.0"
    hashed = row_for({}, m=model(ip_policy=IPPolicy("hash", b"k")), r=r)
    assert hashed["ip"] and "203.0.113" not in hashed["ip"]
    assert row_for({}, m=model(ip_policy=IPPolicy("none", b"k")), r=r)["ip"] == ""
    assert row_for({}, m=model(ip_policy=IPPolicy("full", b"k")), r=r)["ip"] == "203.0.113.77"
    v6 = row_for({}, r=req(ip="2001:db8:abcd:12::1"))
    assert v6["ip"] == "2001:db8:abcd::"


def test_forwarded_headers_only_from_trusted_proxies():
    proxies = TrustedProxies(["10.0.0.0/8"])
    spoof = {"x-forwarded-for": "1.2.3.4", "x-real-ip": "5.6.7.8"}
    assert proxies.client_ip("203.0.113.9", spoof) == "203.0.113.9"
    assert proxies.client_ip("10.1.1.1", {"x-forwarded-for": "1.2.3.4, 10.2.2.2"}) == "1.2.3.4"
    assert proxies.client_ip("10.1.1.1", {"x-real-ip": "5.6.7.8"}) == "5.6.7.8"


def test_email_is_only_stored_hashed():
    row = row_for({"email": " Someone@Example.com "})
    assert row["ehash"] and "someone" not in json.dumps(row).lower()
    assert row["ehash"] == row_for({"email": "someone@example.com"})["ehash"]


# -- payments ------------------------------------------------------------------------------


def test_payment_rows_single_and_batch():
    uid = str(uuid.uuid4())
    single = payment_rows({"uid": uid, "amt": 149.99}, req(), None)
    assert len(single) == 1 and single[0]["revenue"] == 149.99 and single[0]["currency"] == "USD"
    batch = payment_rows(
        {
            "uid": uid,
            "payments": [
                {"amt": "50", "currency": "EUR", "orid": str(uuid.uuid4())},
                "junk",
                {"revenue": 25},
            ],
        },
        req(),
        None,
    )
    assert [r["revenue"] for r in batch] == [50.0, 25.0]
    assert batch[0]["currency"] == "EUR" and all(r["uid"] == uid for r in batch)
    assert len({r["id"] for r in batch}) == 2
    with pytest.raises(BadInput):
        payment_rows({"payments": []}, req(), None)
