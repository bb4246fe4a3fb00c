"""Privacy through the gateway: cookies per policy, trusted proxies, bots, consent routes and
GeoIP lookups in memory (answers and the rows the gateway makes); on real processes what needs
chDB or the process: IP modes (scanning every column of every table and the log for the client
IP), the schema's views and seeded tables, a broken GeoIP database stopping start-up."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from sfpltracker.testing import MemoryGateway
from tests.gateway_process import GatewayProcess
from tests.test_privacy_geoip import CITY_MMDB, write_test_bin

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
IMMEDIATE = {t: {"Strategy": "immediate"} for t in ("events", "agreed", "payments")}
VISITOR_COOKIE_SECONDS = 395 * 86400


def cookies_of(resp) -> dict[str, str]:
    """Set-Cookie headers by cookie name -> the whole header."""
    return {h.split("=", 1)[0]: h for h in resp.headers_named("set-cookie")}


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


def attributes(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        out[key.lower()] = value.lower()
    return out


def stored_event(gw, eid: str) -> dict:
    """The ``events`` row of ``eid`` (in memory: as the gateway sent it; else read back)."""
    if isinstance(gw, MemoryGateway):
        [row] = [r for r in gw.rows("events") if r["eid"] == eid]
        return row
    return gw.wait_for(
        f"SELECT toString(vid) AS vid, ip, iphash, country, city, region, bot, browser, os, "
        f"device FROM sfpla.events FINAL WHERE eid = '{eid}'",
        lambda rows: len(rows) == 1,
    )[0]


def track(gw, headers=None, ua=CHROME, **fields) -> tuple[str, object]:
    eid = str(uuid.uuid4())
    query = "&".join(f"{k}={v}" for k, v in {"ename": "page_view", "eid": eid, **fields}.items())
    resp = gw.http("GET", f"/tr/v1/tr/?{query}", headers={"User-Agent": ua, **(headers or {})})
    assert resp.status == 200, resp
    return eid, resp


PLAIN = {"TrustedProxies": ["127.0.0.1/32"], "Batching": IMMEDIATE}
STRICT = {
    "RequireConsent": True,
    "HonorDNT": True,
    "DropBots": True,
    "TrustedProxies": ["10.0.0.0/8"],
    "Batching": IMMEDIATE,
}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Default privacy settings; the test client counts as a trusted proxy (X-Forwarded-*).
    In memory: the answers and the rows the gateway makes."""
    with MemoryGateway(tmp_path_factory.mktemp("plain"), PLAIN) as gw:
        yield gw


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """RequireConsent + HonorDNT + DropBots; only 10.0.0.0/8 is a trusted proxy (in memory)."""
    with MemoryGateway(tmp_path_factory.mktemp("strict"), STRICT) as gw:
        yield gw


@pytest.fixture(scope="module")
def plain_process(tmp_path_factory):
    """``plain`` as a real process on chDB: what the schema does (views, seeded tables)."""
    with GatewayProcess(tmp_path_factory.mktemp("plain_process"), PLAIN) as gw:
        yield gw


# -- cookies -----------------------------------------------------------------------------------


def test_cookies_by_default_with_the_contract_attributes(plain):
    eid, resp = track(plain)
    set_cookies = cookies_of(resp)
    assert set(set_cookies) == {"vid", "sid"}
    vid = cookie_value(set_cookies["vid"])
    attrs = attributes(set_cookies["vid"])
    assert attrs["path"] == "/" and attrs["samesite"] == "lax" and "secure" not in attrs
    assert attrs["max-age"] == str(VISITOR_COOKIE_SECONDS)
    assert attributes(set_cookies["sid"])["max-age"] == str(30 * 60)
    assert stored_event(plain, eid)["vid"] == vid  # the row carries the cookie's vid
    # a returning visitor keeps the vid
    eid2, resp2 = track(plain, headers={"Cookie": f"vid={vid}"})
    assert cookie_value(cookies_of(resp2)["vid"]) == vid
    assert stored_event(plain, eid2)["vid"] == vid
    # HTTPS (here: as told by a trusted proxy) -> Secure
    _, secure = track(plain, headers={"X-Forwarded-Proto": "https"})
    assert "secure" in attributes(cookies_of(secure)["vid"])


def test_gpc_means_no_cookie_and_a_vid_the_client_cannot_pin(plain):
    sent = str(uuid.uuid4())
    eid, resp = track(plain, headers={"Sec-GPC": "1", "Cookie": f"vid={sent}"}, vid=sent)
    assert resp.headers_named("set-cookie") == []
    vid = stored_event(plain, eid)["vid"]
    assert vid != sent
    eid2, _ = track(plain, headers={"Sec-GPC": "1"})
    assert stored_event(plain, eid2)["vid"] == vid  # same day, same site, IP and browser
    # DNT without HonorDNT is only a hint
    _, resp = track(plain, headers={"DNT": "1"})
    assert "vid" in cookies_of(resp)


def test_dnt_and_missing_consent_mean_no_cookie_when_configured(strict):
    for headers in ({"DNT": "1"}, {}, {"Cookie": "CookieConsent=256"}, {"Sec-GPC": "1"}):
        eid, resp = track(strict, headers=headers)
        assert resp.headers_named("set-cookie") == [], headers
        assert stored_event(strict, eid)["vid"]
    eid, resp = track(strict, headers={"Cookie": "CookieConsent=1024"})
    set_cookies = cookies_of(resp)
    assert {"vid", "sid"} <= set(set_cookies)
    assert stored_event(strict, eid)["vid"] == cookie_value(set_cookies["vid"])
    # the pixel follows the same policy
    resp = strict.http("GET", "/tr/v1/img/?ename=px", headers={"User-Agent": CHROME})
    assert resp.status == 200 and resp.headers_named("set-cookie") == []


# -- proxies, bots -----------------------------------------------------------------------------


def test_forwarded_headers_only_from_trusted_proxies(plain, strict):
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.10"}
    eid, _ = track(strict, headers={**spoof, "Cookie": "CookieConsent=1024"})
    assert stored_event(strict, eid)["ip"] == "127.0.0.0"  # the peer, truncated
    eid, _ = track(plain, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.23"})
    assert stored_event(plain, eid)["ip"] == "198.51.100.0"  # rightmost hop not a proxy


def test_bots_flagged_and_dropped_with_drop_bots(plain, strict):
    url = f"https://example.com/{uuid.uuid4()}"
    eid, _ = track(plain, ua=GOOGLEBOT, url=url)
    row = stored_event(plain, eid)
    assert row["bot"] == 1 and row["device"] == "Bot" and row["browser"] == "Googlebot"
    human, _ = track(plain, url=url)
    assert stored_event(plain, human)["bot"] == 0
    consent = {"Cookie": "CookieConsent=1024"}
    bot_eid, resp = track(strict, headers=consent, ua=GOOGLEBOT)
    assert resp.status == 200
    human_eid, _ = track(strict, headers=consent)
    stored_event(strict, human_eid)
    assert [r for r in strict.rows("events") if r["eid"] == bot_eid] == []


def test_bots_are_kept_out_of_derived_tables(plain_process):
    url = f"https://example.com/{uuid.uuid4()}"
    eid, _ = track(plain_process, ua=GOOGLEBOT, url=url)
    assert stored_event(plain_process, eid)["bot"] == 1
    human, _ = track(plain_process, url=url)
    assert stored_event(plain_process, human)["bot"] == 0
    # A view's part lands just after the events part of the same insert: wait for the human's
    # hit. The bot's insert (one writer, immediate batching) finished before, views included.
    hits = plain_process.wait_for(
        f"SELECT sum(total) AS n FROM sfpla.hits WHERE url = '{url}'",
        lambda rows: rows and int(rows[0]["n"]) >= 1,
    )
    assert hits == [{"n": 1}]
    # The latest consent per visitor, by the schema's view (the route test reads the history).
    vid = str(uuid.uuid4())
    for cflags in (1024, 256):
        body = {"vid": vid, "cflags": cflags}
        assert plain_process.http("POST", "/tr/v1/ppi/agree", json_body=body).status == 200
        time.sleep(0.01)
    latest = plain_process.wait_for(
        f"SELECT cflags FROM sfpla.agreements FINAL WHERE vid = '{vid}'",
        lambda rows: rows == [{"cflags": 256}],
    )
    assert latest == [{"cflags": 256}]


# -- consent routes ----------------------------------------------------------------------------


def test_agree_records_history_latest_and_sets_consent_cookies(plain):
    resp = plain.http(
        "POST",
        "/tr/v1/ppi/agree",
        json_body={"cflags": 1024, "tz": "Europe/Berlin", "lat": 52.5, "lon": 13.4},
        headers={"User-Agent": CHROME},
    )
    assert resp.status == 200, resp
    answer = resp.json()
    vid = answer["vid"]
    assert answer["ok"] is True and uuid.UUID(vid)
    set_cookies = cookies_of(resp)
    assert cookie_value(set_cookies["CookieConsent"]) == "1024"
    assert cookie_value(set_cookies["vid"]) == vid  # consent given: the vid cookie starts here
    plain.clock.advance(0.01)
    resp = plain.http(
        "POST",
        "/tr/v1/ppi/agree",
        json_body={"vid": vid, "cflags": 256},
        headers={"Cookie": f"vid={vid}"},
    )
    assert resp.status == 200
    withdrawn = cookies_of(resp)
    assert attributes(withdrawn["vid"])["max-age"] == "0" and cookie_value(withdrawn["vid"]) == ""
    assert cookie_value(withdrawn["CookieConsent"]) == "256"

    plain.rows("agreed")  # everything accepted is stored
    history = plain.http("GET", f"/tr/v1/ppi/agree?vid={vid}")
    assert history.status == 200, history
    records = history.json()
    assert [r["cflags"] for r in records] == [256, 1024]  # newest first
    assert records[1]["tz"] == "Europe/Berlin" and records[1]["browser"] == "Chrome"
    assert "ip" not in records[0] and "iphash" not in records[0]


def test_agree_under_gpc_sets_no_cookie(plain):
    resp = plain.http(
        "POST", "/tr/v1/ppi/agree", json_body={"cflags": 1024}, headers={"Sec-GPC": "1"}
    )
    assert resp.status == 200 and resp.headers_named("set-cookie") == []


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("GET", "/tr/v1/ppi/agree", None, 400),
        ("GET", "/tr/v1/ppi/agree?vid=user-id", None, 400),
        ("POST", "/tr/v1/ppi/agree", b"{not json", 400),
        ("POST", "/tr/v1/ppi/agree", b"[]", 400),
        ("POST", "/tr/v1/ppi/agree", b'{"tz": "UTC"}', 400),
        ("POST", "/tr/v1/ppi/agree", b'[{"cflags": 1}, {"cflags": 2}]', 400),
        ("GET", "/tr/v1/ppi/nothing", None, 404),
        ("POST", "/tr/v1/ppi/jds", b"{}", 405),
        ("GET", "/tr/v1/ppi/geoip?ip=8.8.8.8", None, 503),  # no GeoIPDatabase here
    ],
)
def test_privacy_routes_refuse_bad_input_with_a_reason(plain, method, path, body, status):
    resp = plain.http(method, path, body=body, headers={"Content-Type": "application/json"})
    assert resp.status == status, resp
    assert resp.json()["error"]


def test_jurisdictions_are_seeded(plain_process):
    resp = plain_process.http("GET", "/tr/v1/ppi/jds")
    assert resp.status == 200 and resp.header("content-type") == "application/json"
    by_regulation = {j["regulation"]: j for j in resp.json()}
    assert {"GDPR", "UK GDPR", "CCPA/CPRA", "LGPD"} <= set(by_regulation)
    gdpr = by_regulation["GDPR"]
    assert {"DE", "FR", "NO"} <= set(gdpr["countries"]) and gdpr["retention_days"] == 760
    assert gdpr["rules"]["consent"] == "opt-in"
    categories = {c["name"]: c for c in gdpr["rules"]["categories"]}
    assert categories["analytics"]["bit"] == 1024 and categories["marketing"]["bit"] == 4096
    assert by_regulation["CCPA/CPRA"]["regions"][0] == "US-CA"
    assert by_regulation["CCPA/CPRA"]["rules"]["consent"] == "opt-out"
    assert by_regulation["LGPD"]["countries"] == ["BR"]


# -- IP modes: nothing raw anywhere ------------------------------------------------------------

CLIENT_V4 = "81.2.69.142"  # in both GeoIP test databases: London, GB
CLIENT_V6 = "2a02:8070::77"


def scan_for(gw, needles: list[str]) -> dict[str, int]:
    """Rows per table where any column, as text, contains one of ``needles``."""
    columns = gw.query(
        "SELECT c.table AS t, groupArray(c.name) AS cols FROM system.columns AS c "
        "INNER JOIN system.tables AS s ON s.database = c.database AND s.name = c.table "
        "WHERE c.database = 'sfpla' AND s.engine LIKE '%MergeTree%' GROUP BY c.table"
    )
    assert len(columns) >= 10  # events, derived tables, payments, agreed, ...
    hits = {}
    for entry in columns:
        texts = ", ".join(f"toString(`{c}`)" for c in entry["cols"])
        tests = " OR ".join(f"position(x, '{n}') > 0" for n in needles)
        found = gw.query(
            f"SELECT count() AS n FROM sfpla.`{entry['t']}` "
            f"WHERE arrayExists(x -> {tests}, [{texts}])"
        )[0]["n"]
        if found:
            hits[entry["t"]] = found
    return hits


def send_everything(gw, ip: str) -> None:
    """Every way a client IP can reach the gateway: /tr/ GET+POST, pixel, server event,
    payment, consent, cookieless, short-lived."""
    fwd = {"X-Forwarded-For": ip, "User-Agent": CHROME}
    vid = str(uuid.uuid4())
    assert gw.http("GET", f"/tr/v1/tr/?ename=view&vid={vid}", headers=fwd).status == 200
    batch = [{"ename": "a", "vid": vid}, {"ename": "b", "vid": vid, "url": "https://e.com/x"}]
    assert gw.http("POST", "/tr/v1/tr/", json_body=batch, headers=fwd).status == 200
    assert gw.http("GET", "/tr/v1/img/?ename=px", headers=fwd).status == 200
    assert gw.http("GET", "/tr/v1/tr/?ename=gpc", headers={**fwd, "Sec-GPC": "1"}).status == 200
    assert gw.http("POST", "/tr/v1/str/", json_body={"ename": "srv"}, headers=fwd).status == 200
    payment = {"vid": vid, "amt": 10.5}
    assert gw.http("POST", "/tr/v1/ltv/", json_body=payment, headers=fwd).status == 200
    consent = {"vid": vid, "cflags": 1024}
    assert gw.http("POST", "/tr/v1/ppi/agree", json_body=consent, headers=fwd).status == 200


@pytest.mark.parametrize(
    "mode, database",
    [("truncate", "mmdb"), ("hash", "bin"), ("none", "mmdb"), ("full", "bin")],
)
def test_ip_mode_applies_before_anything_is_stored_or_logged(tmp_path, mode, database):
    if database == "mmdb":
        geo = tmp_path / "GeoIP2-City-Test.mmdb"
        shutil.copy(CITY_MMDB, geo)
    else:
        geo = write_test_bin(tmp_path / "IP2LOCATION-DB11.BIN")
    overrides = {
        "IPMode": mode,
        "TrustedProxies": ["127.0.0.1"],
        "GeoIPDatabase": str(geo),
        "Batching": IMMEDIATE,
    }
    with GatewayProcess(tmp_path, overrides) as gw:
        send_everything(gw, CLIENT_V4)
        send_everything(gw, CLIENT_V6)
        gw.wait_for("SELECT count() AS n FROM sfpla.events", lambda rows: rows == [{"n": 12}])
        gw.wait_for("SELECT count() AS n FROM sfpla.agreed", lambda rows: rows == [{"n": 2}])
        gw.wait_for("SELECT count() AS n FROM sfpla.payments", lambda rows: rows == [{"n": 2}])

        located = gw.query(
            "SELECT ip, country, city FROM sfpla.events WHERE ename = 'view' "
            "AND country = 'GB' ORDER BY ip"
        )
        assert [(r["country"], r["city"]) for r in located] == [("GB", "London")]
        expected_ip = {"truncate": "81.2.69.0", "none": "", "full": CLIENT_V4}.get(mode)
        if expected_ip is not None:
            assert located[0]["ip"] == expected_ip
        else:
            assert len(located[0]["ip"]) == 26 and CLIENT_V4 not in located[0]["ip"]

        # GeoIP answers on the full IP (this request's IP comes from a trusted proxy)
        resp = gw.http("GET", "/tr/v1/ppi/geoip", headers={"X-Forwarded-For": CLIENT_V4})
        assert resp.status == 200 and resp.json()["city"] == "London"
        assert gw.http("GET", "/tr/v1/ppi/geoip?ip=nonsense").status == 400
        assert gw.http("GET", "/tr/v1/ppi/geoip?ip=8.8.4.4").status == 404

        hits = scan_for(gw, [CLIENT_V4, CLIENT_V6])
        gw.stop()
        log = gw.log_text()
    if mode == "full":
        # the positive control: the scan does find the raw IP where it is allowed
        assert hits.get("events", 0) >= 10 and hits.get("agreed") == 2, hits
    else:
        assert hits == {}, f"raw client IP stored in IPMode={mode}: {hits}"
    assert CLIENT_V4 not in log and CLIENT_V6 not in log


def test_geoip_lookup_route(tmp_path):
    geo = write_test_bin(tmp_path / "DB11.BIN")
    with MemoryGateway(tmp_path, {"GeoIPDatabase": str(geo)}) as gw:
        resp = gw.http("GET", "/tr/v1/ppi/geoip?ip=216.160.83.56&format=object")
        assert resp.status == 200
        record = resp.json()
        assert set(record) == {"ip", "country", "region", "city", "lat", "lon", "zip", "tz"}
        assert (record["country"], record["region"], record["city"]) == (
            "US",
            "California",
            "San Jose",
        )
        v6 = gw.http("GET", "/tr/v1/ppi/geoip?ip=2a02:8070::1&format=object").json()
        assert v6["country"] == "DE" and v6["zip"] == "10115"
        assert gw.http("GET", "/tr/v1/ppi/geoip").status == 404  # the caller is 127.0.0.1


def test_a_broken_geoip_database_stops_start_up_with_its_name(tmp_path):
    broken = tmp_path / "broken.BIN"
    broken.write_bytes(json.dumps({"not": "a database"}).encode())
    gw = GatewayProcess(tmp_path, {"GeoIPDatabase": str(broken)})
    with pytest.raises(RuntimeError) as failure:
        gw.start(timeout=60)
    gw.__exit__(None, None, None)
    assert "broken.BIN" in str(failure.value)


def test_geoip_test_databases_exist():
    assert CITY_MMDB.exists() and Path(CITY_MMDB).stat().st_size < 100_000
