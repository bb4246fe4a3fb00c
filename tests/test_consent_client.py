"""static/track.js's consent helpers against a real gateway: agree(), consent(), jurisdictions().

The client runs in Node (a vm with Node's real fetch, tests/js/consent_live.mjs) on a page served
from the gateway's own origin, so the page's cookies travel with its requests to the gateway. The
gateway runs with ``RequireConsent``: a tracking call is cookieless (the page's vid ignored) until
the ``CookieConsent`` cookie grants analytics. The fake browser keeps only what track.js writes
to ``document.cookie`` (not the gateway's Set-Cookie), so a tracking call that follows the
client's consent is proof that the client's cookie is what the gateway read.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.gateway_process import GatewayProcess
from tests.test_static_js import TRACK_JS, UUID_RE, run_node

JS = TRACK_JS.parent.parent / "tests" / "js" / "consent_live.mjs"
PAGE_VID = "0190aaaa-bbbb-7ccc-8ddd-00000000c001"
GPC_VID = "0190aaaa-bbbb-7ccc-8ddd-00000000c002"
IMMEDIATE = {t: {"Strategy": "immediate"} for t in ("events", "agreed")}
COOKIE_ATTRS = "; Path=/; Max-Age=34128000; SameSite=Lax"  # 395 days, like the gateway's
ANY_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with GatewayProcess(
        tmp_path_factory.mktemp("consent_js"), {"RequireConsent": True, "Batching": IMMEDIATE}
    ) as gw:
        out = run_node(str(JS), str(TRACK_JS), f"http://127.0.0.1:{gw.port}", timeout=120)
        yield gw, json.loads(out.strip().splitlines()[-1])


def posts_to(rep, path):
    return [
        json.loads(r["body"])
        for r in rep["requests"]
        if r["method"] == "POST" and urlsplit(r["url"]).path == path
    ]


def agreed_rows(gw, vid, n):
    return gw.wait_for(
        f"SELECT * EXCEPT (ip, iphash, bhash) FROM sfpla.agreed WHERE vid = '{vid}' "
        "ORDER BY created_at, id",
        lambda rows: len(rows) >= n,
    )


def stored_vid(gw, eid):
    (row,) = gw.wait_for(f"SELECT vid FROM sfpla.events WHERE eid = '{eid}'", bool)
    return row["vid"]


def test_agree_sends_the_clients_context_and_is_recorded(run):
    gw, report = run
    rep = report["consented"]
    assert rep["agreed"] == {"value": {"ok": True, "vid": PAGE_VID}}
    first, second = posts_to(rep, "/tr/v1/ppi/agree")
    (event,) = posts_to(rep, "/tr/v1/tr/")[0]
    # the fields the client's events carry, and the site's own extras
    for key in ("vid", "sid", "url", "tz", "w", "h", "device", "os", "app", "rel", "source"):
        assert first[key] == event[key], key
    assert first["cflags"] == 1280 and second["cflags"] == 256
    assert first["compliances"] == {"banner": "v3"} and first["culture"] == "en-US"
    assert "cookie" not in first and "eid" not in first and "ename" not in first

    old, new = agreed_rows(gw, PAGE_VID, 2)
    assert (old["cflags"], new["cflags"]) == (1280, 256)
    assert old["sid"] == event["sid"] and UUID_RE.match(old["sid"])
    assert old["url"] == event["url"] and old["tz"] == "America/Los_Angeles"
    assert (old["vp_w"], old["vp_h"]) == (1280, 800)
    assert (old["app"], old["rel"], old["source"], old["campaign"]) == (
        "shop",
        "2026.11",
        "newsletter",
        "spring",
    )
    assert old["compliances"] == {"banner": "v3"} and old["culture"] == "en-US"
    gw.wait_settled()  # agreements is filled by a view on agreed
    latest = gw.query(f"SELECT cflags FROM sfpla.agreements FINAL WHERE vid = '{PAGE_VID}'")
    assert latest == [{"cflags": 256}]


def test_consent_reads_the_records_back_newest_first(run):
    gw, report = run
    rep = report["consented"]
    records = rep["records"]["value"]
    assert [r["cflags"] for r in records] == [256, 1280]
    assert {r["vid"] for r in records} == {PAGE_VID}
    assert "ip" not in records[0] and "iphash" not in records[0]
    assert records == gw.http("GET", f"/tr/v1/ppi/agree?vid={PAGE_VID}").json()
    # an answer the gateway refuses rejects the promise with its reason
    assert rep["badVid"] == {
        "error": "vid must be a UUID",
        "status": 400,
        "body": {"error": "vid must be a UUID"},
    }


def test_cookie_consent_is_written_and_steers_the_following_tracking_calls(run):
    gw, report = run
    rep = report["consented"]
    assert rep["cookieWrites"] == [
        "CookieConsent=1280" + COOKIE_ATTRS,
        "CookieConsent=256" + COOKIE_ATTRS,
    ]
    assert rep["cookieAfterAgree"] == "1280"
    tracking = [r for r in rep["requests"] if urlsplit(r["url"]).path == "/tr/v1/tr/"]
    assert [r["cookie"] for r in tracking] == [None, "CookieConsent=1280", "CookieConsent=256"]
    eids = rep["eids"]
    before = stored_vid(gw, eids["before"])
    # RequireConsent: the page's vid only counts once CookieConsent grants analytics (1024)
    assert before != PAGE_VID and ANY_UUID.match(before)
    assert stored_vid(gw, eids["after"]) == PAGE_VID
    assert stored_vid(gw, eids["afterWithdrawal"]) == before  # cookieless again, same day


def test_invalid_cflags_are_refused_before_anything_is_sent(run):
    _, report = run
    rep = report["consented"]
    assert rep["noFlags"] == {"error": "cflags (the consent flags, an integer) is required"}
    assert len(posts_to(rep, "/tr/v1/ppi/agree")) == 2


def test_global_privacy_control_sends_no_vid_and_writes_no_cookie(run):
    gw, report = run
    rep = report["gpc"]
    (body,) = posts_to(rep, "/tr/v1/ppi/agree")
    assert "vid" not in body and body["cflags"] == 1280
    assert rep["cookieWrites"] == []
    vid = rep["agreed"]["value"]["vid"]
    assert vid != GPC_VID and ANY_UUID.match(vid)  # the gateway's cookieless id
    assert all(
        GPC_VID not in r["url"] and GPC_VID not in (r["body"] or "") for r in rep["requests"]
    )
    (row,) = agreed_rows(gw, vid, 1)
    assert row["cflags"] == 1280
    # consent() defaults to the vid the decision was recorded under
    reads = [r["url"] for r in rep["requests"] if r["method"] == "GET"]
    assert {parse_qs(urlsplit(u).query)["vid"][0] for u in reads} == {vid}
    assert [r["cflags"] for r in rep["records"]["value"]] == [1280]


def test_cookie_false_leaves_the_cookie_to_the_site(run):
    gw, report = run
    rep = report["nocookie"]
    assert rep["cookieWrites"] == []
    vid = rep["agreed"]["value"]["vid"]
    (row,) = agreed_rows(gw, vid, 1)
    assert row["cflags"] == 3328


def test_jurisdictions_returns_the_gateways_json(run):
    gw, report = run
    jds = report["consented"]["jds"]["value"]
    assert jds == gw.http("GET", "/tr/v1/ppi/jds").json()
    assert {j["regulation"] for j in jds} >= {"GDPR", "CCPA/CPRA"}
