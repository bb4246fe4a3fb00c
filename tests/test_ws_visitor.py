"""One visitor per WebSocket connection, kept by the browser as on HTTP (API.md section 4).

The visitor is decided at the upgrade: the ``vid`` cookie, else the ``vid`` of the upgrade URL,
else a new one; the 101 answer sets the ``vid``/``sid`` cookies when the cookie policy allows
them, so the next connection (the next page load) sends the same vid back. Under GPC (or no
consent with ``RequireConsent``) no cookie is set and the vid is the day's cookieless hash.
Real gateway, real ``websockets`` client; rows read back through the query listener.
"""

from __future__ import annotations

import datetime
import json
import uuid
from http.cookies import SimpleCookie

from websockets.sync.client import connect

from sfpltracker.privacy.identity import CookielessIds, DailySalts

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"
UUID_V4 = "0190aaaa-bbbb-4ccc-8ddd-0000000000"


def session(gw, query: str = "", headers: dict | None = None, n: int = 3):
    """One connection: ``n`` events without a vid, acked. -> (eids, the 101's Set-Cookies)."""
    url = f"ws://127.0.0.1:{gw.port}/tr/v1/ws?ack=1{query}"
    eids = [str(uuid.uuid4()) for _ in range(n)]
    with connect(url, additional_headers={"User-Agent": UA, **(headers or {})}) as ws:
        set_cookies = ws.response.headers.get_all("Set-Cookie")
        for e in eids:
            ws.send(json.dumps({"eid": e, "ename": "ws_visit"}))
        acked = [eid for _ in eids for eid in json.loads(ws.recv(timeout=20))["ok"]]
    assert sorted(acked) == sorted(eids)
    cookies = SimpleCookie()
    for raw in set_cookies:
        cookies.load(raw)
    return eids, {k: v.value for k, v in cookies.items()}, set_cookies


def vids(gw, eids: list[str]) -> set[str]:
    keys = ",".join(f"'{e}'" for e in eids)
    rows = gw.wait_for(
        f"SELECT vid FROM sfpla.events FINAL WHERE eid IN ({keys})", lambda r: len(r) == len(eids)
    )
    return {r["vid"] for r in rows}


def test_first_visit_gets_one_vid_for_the_connection_and_a_cookie_that_keeps_it(gateway):
    first, cookies, raw = session(gateway)
    vid = cookies["vid"]
    assert uuid.UUID(vid) and uuid.UUID(cookies["sid"])
    assert any("Max-Age=" in c and "Path=/" in c and "SameSite=lax" in c for c in raw), raw
    assert vids(gateway, first) == {vid}  # every event of the socket, the cookie's vid
    # the next page load sends the cookie with its upgrade: same visitor
    again, cookies_again, _ = session(gateway, headers={"Cookie": f"vid={vid}"})
    assert vids(gateway, again) == {vid} and cookies_again["vid"] == vid
    # and over HTTP too
    r = gateway.http(
        "POST", "/tr/v1/tr/", json_body={"ename": "x"}, headers={"Cookie": f"vid={vid}"}
    )
    assert r.status == 200 and SimpleCookie(r.header("set-cookie"))["vid"].value == vid


def test_the_clients_vid_in_the_upgrade_url_is_the_connections_vid(gateway):
    client_vid = UUID_V4 + "01"
    eids, cookies, _ = session(gateway, f"&vid={client_vid}")
    assert cookies["vid"] == client_vid
    assert vids(gateway, eids) == {client_vid}
    # a cookie wins over the URL, as on /tr/ (the stored vid is the one the cookie has)
    cookie_vid = UUID_V4 + "02"
    eids, cookies, _ = session(gateway, f"&vid={client_vid}", {"Cookie": f"vid={cookie_vid}"})
    assert cookies["vid"] == cookie_vid and vids(gateway, eids) == {cookie_vid}


def cookieless_vid(gw) -> str:
    salts = DailySalts(gw.workdir / "data" / "cookieless")
    day = datetime.datetime.now(datetime.UTC).date().isoformat()
    return CookielessIds(salts).visitor_id(day, "127.0.0.1", "127.0.0.1", UA)


def test_gpc_sets_no_cookie_and_uses_the_daily_hash(gateway):
    eids, cookies, raw = session(gateway, headers={"Sec-GPC": "1"})
    assert raw == [] and cookies == {}
    again, _, raw_again = session(gateway, f"&vid={UUID_V4}03", {"Sec-GPC": "1"})
    assert raw_again == []
    assert vids(gateway, eids + again) == {cookieless_vid(gateway)}


def test_require_consent_sets_a_cookie_only_with_consent(gateway_factory):
    gw = gateway_factory({"RequireConsent": True})
    eids, cookies, raw = session(gw)
    assert raw == [] and vids(gw, eids) == {cookieless_vid(gw)}
    eids, cookies, _ = session(gw, headers={"Cookie": "CookieConsent=1024"})
    assert vids(gw, eids) == {cookies["vid"]} != {cookieless_vid(gw)}
