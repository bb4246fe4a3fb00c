"""Known data for the dashboard tests, sent through a real gateway's public routes.

Events, payments, consent decisions and short-link clicks of a handful of visitors (and one
bot), so every dashboard figure has something to count; ``signed_in`` signs in with an account
made by the real CLI. The expected numbers are computed by SQL over the stored rows through
the query listener (``expect_*``), never by the code under test.
"""

from __future__ import annotations

import json
import uuid

from tests.gateway_process import GatewayProcess, http_request
from tests.test_shortlinks import create_account

IMMEDIATE = {t: {"Strategy": "immediate"} for t in ("events", "agreed", "payments")}
CONFIG = {
    "Domains": ["localhost", "tracker.test"],
    "RedirectAllowHosts": ["*.example"],
    "Batching": IMMEDIATE,
    "LoginFailureLimit": 3,
}

UA = {
    "desktop": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "phone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "android": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "bot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
}

# (visitor, device, [(ename, url, referrer, source, medium, campaign, country, outcome), ...])
VISITS = [
    ("v1", "desktop", [
        ("page_view", "https://shop.example/", "https://www.google.com/search", "google", "cpc", "spring", "DE", ""),
        ("page_view", "https://shop.example/pricing", "https://shop.example/", "google", "cpc", "spring", "DE", ""),
        ("signup", "https://shop.example/signup", "https://WWW.SHOP.EXAMPLE/pricing", "", "", "", "DE", "lead"),
        ("purchase", "https://shop.example/thanks", "", "", "", "", "DE", "sale"),
    ]),
    ("v2", "phone", [
        ("page_view", "https://shop.example/", "https://news.example/story", "newsletter", "email", "may", "US", ""),
        ("signup", "https://shop.example/signup", "https://blog.example/post", "", "", "", "US", "lead"),
    ]),
    ("v3", "android", [
        ("page_view", "https://shop.example/blog", "https://www.google.com/", "", "", "", "BR", ""),
    ]),
    ("v4", "desktop", [
        ("page_view", "https://shop.example/", "", "", "", "", "DE", ""),
        ("page_view", "https://shop.example/blog", "https://shop.example/", "", "", "", "DE", ""),
        ("page_view", "https://shop.example/pricing", "https://blog.example/post", "", "", "", "DE", ""),
    ]),
    ("bot", "bot", [
        ("page_view", "https://shop.example/", "https://spam.example/", "spam", "bot", "x", "CN", ""),
        ("signup", "https://shop.example/signup", "", "", "", "", "CN", "lead"),
    ]),
]  # fmt: skip
# The host each visitor's events are sent to (the Host header). A referrer on the event's own
# host is internal navigation, not a referral: v1's second and third (www. or not, any case),
# v2's second, v4's second; v4's third comes from another tracked host (blog.example): a
# referral.
HOSTS = {"v1": "www.shop.example", "v2": "blog.example"}
HOST = "shop.example"
# SQL over events: `last` is a referral, not the event's own host (any case, "www." or not)
REFERRAL = ("last != '' AND lower(domain(last)) NOT IN (hostname, concat('www.', hostname)) "
            "AND concat('www.', lower(domain(last))) != hostname")  # fmt: skip


def load(gw: GatewayProcess) -> dict:
    """Send the known data; returns the ids used and the account to sign in with."""
    ids = {name: str(uuid.uuid4()) for name, _, _ in VISITS}
    sids = {name: str(uuid.uuid4()) for name, _, _ in VISITS}
    sent = 0
    for name, device, events in VISITS:
        for ename, url, last, source, medium, campaign, country, outcome in events:
            body = {"vid": ids[name], "sid": sids[name], "ename": ename, "url": url,
                    "country": country}  # fmt: skip
            for key, value in (("last", last), ("source", source), ("medium", medium),
                               ("campaign", campaign), ("outcome", outcome)):  # fmt: skip
                if value:
                    body[key] = value
            headers = {"User-Agent": UA[device], "Host": HOSTS.get(name, HOST)}
            r = gw.http("POST", "/tr/v1/tr/", json_body=body, headers=headers)
            assert r.status == 200, r.body
            sent += 1
    uids = [str(uuid.uuid4()), str(uuid.uuid4())]
    for uid, vid, revenue in ((uids[0], ids["v1"], 120.5), (uids[0], ids["v1"], 30.0),
                              (uids[1], ids["v2"], 99.99)):  # fmt: skip
        r = gw.http("POST", "/tr/v1/ltv/", json_body={"uid": uid, "vid": vid, "revenue": revenue})
        assert r.status == 200, r.body
    for vid, cflags, country, region in ((ids["v1"], 1024 | 256, "DE", ""),
                                         (ids["v2"], 256, "US", "CA"),
                                         (ids["v3"], 256 | 512 | 1024, "BR", ""),
                                         (ids["v4"], 256, "JP", "")):  # fmt: skip
        body = {"vid": vid, "cflags": cflags, "country": country, "region": region}
        r = gw.http("POST", "/tr/v1/ppi/agree", json_body=body)
        assert r.status == 200, r.body
    account = create_account(gw, "dash")
    auth = {"Authorization": f"Bearer {account['uid']}.{account['secret']}"}
    link = {"urlfrom": "go.example/spring", "urlto": "https://shop.example/?c=spring"}
    r = gw.http("POST", "/tr/v1/rpi/redirect", json_body=link, headers=auth)
    assert r.status == 200, r.body
    gw.wait_for(
        "SELECT count() AS n FROM sfpla.redirects FINAL", lambda rows: rows[0]["n"] in (1, "1")
    )
    clicks = 0
    for device in ("desktop", "phone", "desktop"):
        r = gw.http("GET", "/spring", headers={"Host": "go.example", "User-Agent": UA[device]})
        assert r.status == 302, (r.status, r.body)
        clicks += 1
    gw.wait_for(
        "SELECT count() AS n FROM sfpla.events",
        lambda rows: int(rows[0]["n"]) == sent + clicks,
    )
    gw.wait_for("SELECT count() AS n FROM sfpla.payments", lambda rows: int(rows[0]["n"]) == 3)
    gw.wait_for("SELECT count() AS n FROM sfpla.agreed", lambda rows: int(rows[0]["n"]) == 4)
    gw.wait_settled()  # the events' views (dash_daily) too
    return {"vids": ids, "uids": uids, "account": account}


class Dashboard:
    """A signed-in client of the dashboard API (cookie and CSRF token kept)."""

    def __init__(self, gw: GatewayProcess):
        self.gw = gw
        self.cookie = ""
        self.csrf = ""

    def login(self, uid: str, secret: str, headers: dict | None = None):
        r = http_request(
            self.gw.query_port,
            "POST",
            "/dashboard/api/login",
            json_body={"uid": uid, "secret": secret},
            headers=headers,
        )
        if r.status == 200:
            self.cookie = r.header("set-cookie").split(";")[0]
            self.csrf = r.json()["csrf"]
        return r

    def request(self, method: str, path: str, headers: dict | None = None, **kw):
        headers = {**({"Cookie": self.cookie} if self.cookie else {}), **(headers or {})}
        return http_request(self.gw.query_port, method, path, headers=headers, **kw)

    def get(self, figure: str, **params) -> dict:
        qs = "&".join(f"{k}={v}" for k, v in params.items())
        r = self.request("GET", f"/dashboard/api/{figure}?{qs}")
        assert r.status == 200, (figure, r.status, r.body)
        return json.loads(r.body)
