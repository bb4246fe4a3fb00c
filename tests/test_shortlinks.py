"""Short links and tracked redirects through a real gateway process over real HTTP.

One gateway (``Debug`` on, so its access log is written and can be searched for secrets) serves
the whole module; each test uses its own host names so tests do not see each other's links.
Accounts are created with the real CLI (``python -m sfpltracker account create``), which runs
the command inside the running gateway.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import re
import shutil
import string
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from tests.gateway_process import ROOT, GatewayProcess

CONFIG = {
    "Debug": True,
    "Domains": ["localhost", "tracker.test"],
    "RedirectAllowHosts": ["*.allowed.test", "partner.test"],
    "DefaultRedirect": "https://www.allowed.test/home",
    # These tests send many wrong credentials from 127.0.0.1 on purpose; the throttle that
    # would stop them has its own tests (test_login_throttle.py).
    "LoginFailureLimit": 1000,
}


def cli(gw: GatewayProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        input=stdin,
        timeout=120,
    )


def create_account(gw: GatewayProcess, org: str, *extra: str) -> dict:
    out = cli(gw, "account", "create", "--org", org, *extra)
    assert out.returncode == 0, out.stderr
    fields = dict(re.findall(r"^(\w+):\s*(\S+)$", out.stdout, re.M))
    assert set(fields) == {"uid", "oid", "org", "secret", "token"}
    return fields


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("links"), CONFIG) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def acme(gw):
    return create_account(gw, "acme")


@pytest.fixture(scope="module")
def globex(gw):
    return create_account(gw, "globex")


def bearer(account: dict) -> dict:
    return {"Authorization": f"Bearer {account['uid']}.{account['secret']}"}


def basic(account: dict) -> dict:
    raw = f"{account['uid']}:{account['secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def save(gw, account, body, form="path"):
    if form == "path":
        return gw.http(
            "POST", f"/tr/v1/rpi/redirect/{account['uid']}/{account['secret']}", json_body=body
        )
    headers = bearer(account) if form == "bearer" else basic(account)
    return gw.http("POST", "/tr/v1/rpi/redirect", json_body=body, headers=headers)


def listing(gw, account, host, form="path"):
    if form == "path":
        r = gw.http("GET", f"/tr/v1/rpi/redirects/{account['uid']}/{account['secret']}/{host}")
    else:
        r = gw.http("GET", f"/tr/v1/rpi/redirects/{host}", headers=bearer(account))
    assert r.status == 200, r
    return {link["urlfrom"]: link for link in r.json()["results"]}


def hit(gw, host, path, method="GET", headers=None):
    return gw.http(method, path, headers={"Host": host, **(headers or {})})


def history(gw, host):
    return gw.query(
        "SELECT action, urlfrom, hostfrom, slugfrom, urlto, hostto, pathto, searchto, status, "
        f"toString(oid) AS oid FROM sfpla.redirect_history WHERE hostfrom = '{host}' "
        "ORDER BY updated_at, action"
    )


def metric(gw, name: str) -> float:
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    m = re.search(rf"^{name}(?:_total)? ([\d.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


# -- accounts --------------------------------------------------------------------------------


def test_account_cli_create_list_rotate(gw):
    first = create_account(gw, "initech")
    second = create_account(gw, "initech", "--oid", first["oid"])
    assert second["oid"] == first["oid"] and second["uid"] != first["uid"]
    assert first["token"] == f"{first['uid']}.{first['secret']}"

    listed = cli(gw, "account", "list")
    assert listed.returncode == 0, listed.stderr
    assert first["uid"] in listed.stdout and second["uid"] in listed.stdout
    assert first["secret"] not in listed.stdout and "scrypt" not in listed.stdout

    stored = gw.query(f"SELECT pwd FROM sfpla.accounts FINAL WHERE uid = '{first['uid']}'")
    assert stored[0]["pwd"].startswith("scrypt$16384$8$1$")
    assert first["secret"] not in stored[0]["pwd"]

    body = {"urlfrom": "https://rot.test/a", "urlto": "https://example.com/a"}
    assert save(gw, first, body).status == 200
    rotated = cli(gw, "account", "rotate", first["uid"])
    assert rotated.returncode == 0, rotated.stderr
    new_secret = re.search(r"^secret:\s*(\S+)$", rotated.stdout, re.M).group(1)
    assert new_secret != first["secret"]
    assert save(gw, first, body).status == 401  # the old secret stopped working at once
    assert save(gw, {**first, "secret": new_secret}, body).status == 200

    chosen = cli(gw, "account", "create", "--org", "x", "--secret-stdin", stdin="short\n")
    assert chosen.returncode != 0 and "at least 16" in chosen.stderr
    assert cli(gw, "account", "rotate", str(uuid.uuid4())).returncode != 0


def test_no_account_is_seeded(gw):
    rows = gw.query("SELECT toString(uid) AS uid FROM sfpla.accounts FINAL")
    assert "14fb0860-b4bf-11e9-8971-7b80435315ac" not in {r["uid"] for r in rows}
    demo = "/tr/v1/rpi/redirect/14fb0860-b4bf-11e9-8971-7b80435315ac/password"
    body = {"urlfrom": "https://demo.test/x", "urlto": "https://example.com/"}
    assert gw.http("POST", demo, json_body=body).status == 401


# -- admin API -------------------------------------------------------------------------------


def test_create_list_update_delete(gw, acme):
    r = save(
        gw, acme, {"urlfrom": "https://Go.Crud.test/Spring", "urlto": "https://shop.example/s?a=1"}
    )
    assert r.status == 200, r
    created = r.json()
    assert created["ok"] is True and created["created"] is True
    assert created["urlfrom"] == "go.crud.test/spring"
    link_id = created["link"]["id"]

    for form in ("path", "bearer"):
        links = listing(gw, acme, "go.crud.test", form)
        assert list(links) == ["go.crud.test/spring"]
        assert links["go.crud.test/spring"]["urlto"] == "https://shop.example/s?a=1"
        assert links["go.crud.test/spring"]["status"] == 302
    r = gw.http("GET", "/tr/v1/rpi/redirects/GO.CRUD.TEST:8080", headers=basic(acme))
    assert [x["urlfrom"] for x in r.json()["results"]] == ["go.crud.test/spring"]

    r = save(
        gw,
        acme,
        {
            "urlfrom": "go.crud.test/spring/",
            "urlto": "https://shop.example/new/path?b=2",
            "status": 301,
        },
        form="bearer",
    )
    assert r.status == 200 and r.json()["created"] is False
    assert r.json()["link"]["id"] == link_id  # the same link, a new version
    link = listing(gw, acme, "go.crud.test")["go.crud.test/spring"]
    assert (link["urlto"], link["status"]) == ("https://shop.example/new/path?b=2", 301)

    r = save(gw, acme, {"urlfrom": "go.crud.test/spring", "urlto": "https://shop.example/third"})
    assert listing(gw, acme, "go.crud.test")["go.crud.test/spring"]["status"] == 301  # kept

    r = gw.http(
        "DELETE", "/tr/v1/rpi/redirect?urlfrom=https://go.crud.test/spring", headers=basic(acme)
    )
    assert r.status == 200 and r.json() == {
        "ok": True,
        "urlfrom": "go.crud.test/spring",
        "deleted": True,
    }
    assert listing(gw, acme, "go.crud.test") == {}
    assert hit(gw, "go.crud.test", "/spring").status == 404
    r = gw.http(
        "DELETE", f"/tr/v1/rpi/redirect/{acme['uid']}/{acme['secret']}?urlfrom=go.crud.test/spring"
    )
    assert r.status == 404

    rows = history(gw, "go.crud.test")
    assert [r["action"] for r in rows] == ["create", "update", "update", "delete"]
    assert rows[0]["urlfrom"] == "https://go.crud.test/spring"
    assert rows[0]["slugfrom"] == "/spring"
    # pathto / searchto describe the destination (the original stored the from-path).
    assert [(r["hostto"], r["pathto"], r["searchto"]) for r in rows[:2]] == [
        ("shop.example", "/s", "a=1"),
        ("shop.example", "/new/path", "b=2"),
    ]
    assert {r["oid"] for r in rows} == {acme["oid"]}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_serves_each_status(gw, acme, status):
    host = f"s{status}.status.test"
    body = {"urlfrom": f"{host}/go", "urlto": "https://example.com/landing", "status": status}
    assert save(gw, acme, body).status == 200
    for method in ("GET", "POST", "HEAD"):
        r = hit(gw, host, "/go", method)
        assert r.status == status and r.header("location") == "https://example.com/landing"
    if status in (301, 308):
        assert r.header("cache-control") == "private, max-age=86400"
    else:
        assert r.header("cache-control") == "no-store"


def test_slugs_are_case_insensitive_and_hosts_lose_their_port(gw, acme):
    body = {"urlfrom": "https://case.test/Promo", "urlto": "https://example.com/p"}
    assert save(gw, acme, body).status == 200
    for host, path in [
        ("case.test", "/promo"),
        ("CASE.test:8443", "/PROMO/"),
        ("case.test", "/pr%6Fmo"),
    ]:
        assert hit(gw, host, path).status == 302, (host, path)
    assert hit(gw, "other.case.test", "/promo").status == 404


def test_update_is_seen_immediately(gw, acme):
    host = "fresh.test"
    for n in range(5):
        target = f"https://example.com/v{n}"
        assert save(gw, acme, {"urlfrom": f"{host}/now", "urlto": target}).status == 200
        assert hit(gw, host, "/now").header("location") == target
    r = gw.http("DELETE", f"/tr/v1/rpi/redirect?urlfrom={host}/now", headers=bearer(acme))
    assert r.status == 200
    assert hit(gw, host, "/now").status == 404


def test_expired_link_is_404(gw, acme):
    expires = time.time() + 3
    body = {"urlfrom": "exp.test/soon", "urlto": "https://example.com/", "expires": expires,
            "status": 301}  # fmt: skip
    r = save(gw, acme, body)
    assert r.status == 200 and r.json()["link"]["expires"].endswith("Z")
    first = hit(gw, "exp.test", "/soon")
    assert first.status == 301
    max_age = int(first.header("cache-control").rsplit("=", 1)[1])
    assert 0 <= max_age <= 3  # never cached beyond the link's life
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    assert hit(gw, "exp.test", "/soon").status == 404

    iso = "2000-01-01T00:00:00Z"
    r = save(gw, acme, {"urlfrom": "exp.test/old", "urlto": "https://example.com/", "expires": iso})
    assert r.status == 400 and r.json()["error"] == "Bad expires (in the past)"


def test_query_forwarding(gw, acme):
    host = "fwd.test"
    links = {
        "/plain": ("https://example.com/a", False),
        "/fwd": ("https://example.com/a", True),
        "/fwdq": ("https://example.com/a?x=1#top", True),
    }
    for path, (urlto, forward) in links.items():
        body = {"urlfrom": host + path, "urlto": urlto, "forward_query": forward}
        assert save(gw, acme, body).status == 200
    assert hit(gw, host, "/plain?utm_source=news").header("location") == "https://example.com/a"
    assert (
        hit(gw, host, "/fwd?utm_source=news&id=7").header("location")
        == "https://example.com/a?utm_source=news&id=7"
    )
    assert (
        hit(gw, host, "/fwdq?utm_source=news").header("location")
        == "https://example.com/a?x=1&utm_source=news#top"
    )
    assert hit(gw, host, "/fwd").header("location") == "https://example.com/a"


def test_clicks_are_events_counted_per_link(gw, acme):
    host = "clicks.test"
    ids = {}
    for slug in ("a", "b"):
        r = save(gw, acme, {"urlfrom": f"{host}/{slug}", "urlto": f"https://example.com/{slug}"})
        ids[slug] = r.json()["link"]["id"]
    first = hit(
        gw, host, "/a?utm_source=Newsletter", headers={"Referer": "https://mail.example/inbox"}
    )
    cookie = next(c for c in first.headers_named("set-cookie") if c.startswith("vid="))
    vid = cookie.split(";")[0][4:]
    for _ in range(2):
        hit(gw, host, "/a", headers={"Cookie": f"vid={vid}"})
    for _ in range(4):
        hit(gw, host, "/b")
    hit(gw, host, "/a", method="HEAD")  # prefetchers are not clicks

    rows = gw.wait_for(
        "SELECT toString(rid) AS rid, toString(vid) AS vid, ename, etyp, url, last, source, "
        "relation, server, params FROM sfpla.events FINAL "
        f"WHERE ename = 'short_rdr' AND hhash IN (SELECT hhash FROM sfpla.redirects WHERE host = '{host}') "
        "ORDER BY created_at",
        lambda rows: len(rows) == 7,
    )
    by_link = {slug: [r for r in rows if r["rid"] == link_id] for slug, link_id in ids.items()}
    assert (len(by_link["a"]), len(by_link["b"])) == (3, 4)
    first_row = next(r for r in by_link["a"] if r["source"])
    assert first_row["etyp"] == "redirect" and first_row["relation"] == "redirect"
    assert first_row["server"] == 0 and first_row["vid"] == vid  # the cookie's vid is stored
    assert first_row["url"] == f"http://{host}/a?utm_source=Newsletter"
    assert first_row["last"] == "https://mail.example/inbox"
    assert first_row["source"] == "newsletter"
    assert first_row["params"]["to"] == "https://example.com/a"
    assert {r["vid"] for r in by_link["a"]} == {vid}

    links = listing(gw, acme, host)
    assert (links[f"{host}/a"]["clicks"], links[f"{host}/b"]["clicks"]) == (3, 4)


def test_tracked_link_resolves_in_one_hop(gw, acme):
    tracked = (
        "http://localhost/tr/v1/rdr/?url=" + quote("https://shop.example/x?p=1", safe="")
        + "&utm_source=Mail&utm_campaign=Spring"
    )  # fmt: skip
    r = save(gw, acme, {"urlfrom": "hop.test/sale", "urlto": tracked})
    assert r.status == 200, r  # a /rdr/ URL on our own domain is not self-referential
    assert r.json()["link"]["location"] == "https://shop.example/x?p=1"
    answer = hit(gw, "hop.test", "/sale")
    assert answer.status == 302 and answer.header("location") == "https://shop.example/x?p=1"
    rows = gw.wait_for(
        "SELECT source, campaign, url FROM sfpla.events WHERE ename = 'short_rdr' "
        "AND url = 'http://hop.test/sale'",
        lambda rows: len(rows) == 1,
    )
    assert (rows[0]["source"], rows[0]["campaign"]) == ("mail", "spring")


def test_validation_as_the_original(gw, acme):
    before = len(history(gw, "bad.test"))
    cases = [
        (b"", "Bad request (body)"),
        (b"[1, 2]", "Bad request (data)"),
        (b"{not json", "Bad request (data)"),
        ({"urlto": "https://example.com/"}, "Bad URL (null)"),
        ({"urlfrom": "bad.test/x"}, "Bad URL (null)"),
        ({"urlfrom": 7, "urlto": "https://example.com/"}, "Bad request (urlfrom and urlto must be strings)"),
        ({"urlfrom": "  ", "urlto": "https://example.com/"}, "Bad URL (null)"),
        ({"urlfrom": "https://bad.test/x", "urlto": "HTTPS://BAD.TEST/X"}, "Bad URL (equal)"),
        ({"urlfrom": "https://bad.test/x", "urlto": "https://bad.test/x/?q=1"}, "Bad URL (equal)"),
        ({"urlfrom": "bad.test/x", "urlto": "javascript:alert(1)"}, "Bad URL (destination)"),
        ({"urlfrom": "bad.test/x", "urlto": "/relative"}, "Bad URL (destination)"),
        ({"urlfrom": "bad.test/x", "urlto": "https://a b.example/"}, "Bad URL (destination)"),
        ({"urlfrom": "bad.test/x", "urlto": "https://TRACKER.test/page"}, "Bad URL (self-referential)"),
        ({"urlfrom": "bad.test/x", "urlto": "http://localhost:8080/"}, "Bad URL (self-referential)"),
        ({"urlfrom": "ftp://bad.test/x", "urlto": "https://example.com/"}, "Bad URL (from)"),
        ({"urlfrom": "bad.test/x?y=1", "urlto": "https://example.com/"}, "Bad URL (from)"),
        ({"urlfrom": "https://bad.test/", "urlto": "https://example.com/"}, "Bad URL (from path)"),
        ({"urlfrom": "bad.test/health", "urlto": "https://example.com/"}, "Bad URL (from path): reserved for the tracker"),
        ({"urlfrom": "bad.test/tr/v1/tr", "urlto": "https://example.com/"}, "Bad URL (from path): reserved for the tracker"),
        ({"urlfrom": "bad.test/x", "urlto": "https://example.com/", "status": 303}, "Bad status (use 301, 302, 307 or 308)"),
        ({"urlfrom": "bad.test/x", "urlto": "https://example.com/", "expires": "soon"}, "Bad expires (an ISO 8601 time or Unix seconds)"),
        ({"urlfrom": "bad.test/x", "urlto": "https://example.com/", "forward_query": "maybe"}, "Bad forward_query (true or false)"),
        ({"urlfrom": "bad.test/x", "urlto": "https://example.com/", "oid": "nope"}, "Bad oid (expected a UUID)"),
    ]  # fmt: skip
    for body, reason in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = gw.http("POST", "/tr/v1/rpi/redirect", body=raw, headers=bearer(acme))
        assert (r.status, r.json()) == (400, {"error": reason}), body
    r = save(
        gw,
        acme,
        {"urlfrom": "bad.test/x", "urlto": "https://example.com/", "oid": str(uuid.uuid4())},
    )
    assert r.status == 403
    assert len(history(gw, "bad.test")) == before
    assert hit(gw, "bad.test", "/x").status == 404


def test_wrong_credentials_change_nothing(gw, acme, globex):
    host = "creds.test"
    assert (
        save(gw, acme, {"urlfrom": f"{host}/mine", "urlto": "https://example.com/a"}).status == 200
    )
    changes = len(history(gw, host))
    failures = metric(gw, "sfpl_rpi_auth_failures")
    attempt = {"urlfrom": f"{host}/mine", "urlto": "https://evil.example/"}
    wrong = [
        {**acme, "secret": acme["secret"][:-1] + ("x" if acme["secret"][-1] != "x" else "y")},
        {**acme, "uid": str(uuid.uuid4())},
        {**acme, "uid": "not-a-uuid"},
    ]
    for account in wrong:
        for form in ("path", "bearer", "basic"):
            r = save(gw, account, attempt, form=form)
            assert r.status == 401 and r.json() == {"error": "bad credentials"}, (account, form)
    for headers in ({}, {"Authorization": "Bearer nodot"}, {"Authorization": "Basic !!!"},
                    {"Authorization": "Digest x"}):  # fmt: skip
        r = gw.http("POST", "/tr/v1/rpi/redirect", json_body=attempt, headers=headers)
        assert r.status == 401 and r.header("www-authenticate"), headers
    r = gw.http("GET", f"/tr/v1/rpi/redirects/{acme['uid']}/wrong/{host}")
    assert r.status == 401
    r = gw.http(
        "DELETE",
        f"/tr/v1/rpi/redirect?urlfrom={host}/mine",
        headers={"Authorization": "Bearer x.y"},
    )
    assert r.status == 401
    assert metric(gw, "sfpl_rpi_auth_failures") == failures + 15

    # Another organisation can neither take over, delete nor see the link.
    assert save(gw, globex, attempt).status == 403
    r = gw.http("DELETE", f"/tr/v1/rpi/redirect?urlfrom={host}/mine", headers=bearer(globex))
    assert r.status == 403
    assert listing(gw, globex, host) == {}
    assert len(history(gw, host)) == changes
    assert hit(gw, host, "/mine").header("location") == "https://example.com/a"


def test_rpi_preflight_and_cors(gw, acme):
    r = gw.http(
        "OPTIONS",
        f"/tr/v1/rpi/redirect/{acme['uid']}/{acme['secret']}",
        headers={"Origin": "https://admin.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status == 200 and r.body == b""
    assert "Authorization" in r.header("access-control-allow-headers")
    assert "Content-Type" in r.header("access-control-allow-headers")
    assert "DELETE" in r.header("access-control-allow-methods")
    assert r.header("access-control-allow-origin") == "https://admin.example"
    r = gw.http(
        "GET",
        "/tr/v1/rpi/redirects/cors.test",
        headers={**bearer(acme), "Origin": "https://admin.example"},
    )
    assert r.status == 200 and r.header("access-control-allow-origin") == "https://admin.example"
    assert gw.http("GET", "/tr/v1/rpi/unknown").status == 404
    assert gw.http("PUT", "/tr/v1/rpi/redirect", headers=bearer(acme)).status == 405


def test_credentials_never_appear_in_the_log(gw, acme):
    secret = acme["secret"]
    save(gw, acme, {"urlfrom": "log.test/a", "urlto": "https://example.com/"})
    save(gw, acme, {"urlfrom": "log.test/b", "urlto": "https://example.com/"}, form="bearer")
    save(gw, acme, {"urlfrom": "log.test/c", "urlto": "https://example.com/"}, form="basic")
    gw.http("GET", f"/tr/v1/rpi/redirects/{acme['uid']}/{secret}/log.test")
    gw.http("GET", f"/tr/v1/rpi/redirects/{acme['uid']}/{secret}x/log.test")  # refused
    gw.http("POST", f"/tr/v1/rpi/redirect/{acme['uid']}/{secret}", body=b"{broken")
    gw.http("DELETE", f"/tr/v1/rpi/redirect/{acme['uid']}/{secret}?urlfrom=log.test/a")
    stored = gw.query(f"SELECT pwd FROM sfpla.accounts FINAL WHERE uid = '{acme['uid']}'")[0]["pwd"]
    logged = "DELETE /tr/v1/rpi/… 200"  # the last request: logged by its route alone
    deadline = time.monotonic() + 10
    while logged not in (text := gw.log_text()):
        assert time.monotonic() < deadline, f"{logged} never logged"
        time.sleep(0.05)
    assert "GET /tr/v1/rpi/… 401" in text  # requests were logged
    basic_value = basic(acme)["Authorization"].split()[1]
    for needle in (acme["uid"], secret, acme["token"], basic_value, stored, stored.split("$")[-1]):
        assert needle not in text


def test_open_redirects_are_refused(gw):
    refused = [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "https://www.allowed.test@evil.example/",
        "https://evil.example\\@www.allowed.test/",
        "https://www.allowed.test.evil.example/",
        "https://allowed.test/",  # *.allowed.test does not include the apex
        "javascript:alert(1)",
        "https://www.allowed.test/\r\nSet-Cookie: x=1",
        "ftp://partner.test/",
    ]
    for route in ("rdr", "xrdr"):
        for url in refused:
            r = gw.http("GET", f"/tr/v1/{route}/?url={quote(url, safe='')}")
            assert r.status == 400 and "error" in r.json(), (route, url)
            assert r.header("location") is None


def test_tracked_redirects_to_allowed_hosts(gw):
    allowed = {
        "https://localhost/welcome": "https://localhost/welcome",
        "https://shop.allowed.test/p?x=1": "https://shop.allowed.test/p?x=1",
        "http://PARTNER.test:8080/": "http://PARTNER.test:8080/",
        "/signup": "/signup",
    }
    for n, (url, location) in enumerate(allowed.items()):
        r = gw.http("GET", f"/tr/v1/rdr/?url={quote(url, safe='')}&utm_campaign=rdr{n}")
        assert (r.status, r.header("location")) == (302, location), url
        assert not r.headers_named("set-cookie")  # a server event
    r = gw.http("GET", "/tr/v1/xrdr/?url=https%3A%2F%2Fshop.allowed.test%2Fx&utm_campaign=xrdr")
    assert r.status == 302 and r.header("location") == "https://shop.allowed.test/x"
    vid = next(c for c in r.headers_named("set-cookie") if c.startswith("vid=")).split(";")[0][4:]
    r = gw.http("GET", "/tr/v1/rdr/?utm_campaign=rdrdefault")
    assert r.status == 302 and r.header("location") == CONFIG["DefaultRedirect"]

    rows = gw.wait_for(
        "SELECT campaign, url, server, toString(vid) AS vid FROM sfpla.events "
        "WHERE campaign LIKE '%rdr%'",
        lambda rows: len(rows) == 6,
    )
    by_campaign = {r["campaign"]: r for r in rows}
    assert {c: r["server"] for c, r in by_campaign.items()} == {
        "rdr0": 1, "rdr1": 1, "rdr2": 1, "rdr3": 1, "xrdr": 0, "rdrdefault": 1,
    }  # fmt: skip
    assert by_campaign["rdr1"]["url"] == "https://shop.allowed.test/p?x=1"
    assert by_campaign["xrdr"]["vid"] == vid


def test_random_slugs_are_404_without_store_queries(gw, acme):
    host = "flood.test"
    assert (
        save(gw, acme, {"urlfrom": f"{host}/real", "urlto": "https://example.com/"}).status == 200
    )
    queries = metric(gw, "sfpl_shortlink_store_queries")
    lookups = metric(gw, "sfpl_shortlink_store_lookups")
    misses = metric(gw, "sfpl_shortlink_misses")
    started = time.monotonic()
    rng = random.Random(5)
    slugs = [
        "/" + "".join(rng.choices(string.ascii_letters + string.digits, k=12))
        for _ in range(10_000)
    ]

    def flood(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        statuses = []
        for slug in chunk:
            conn.request("GET", slug, headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()
        return statuses

    with ThreadPoolExecutor(4) as pool:
        statuses = [s for part in pool.map(flood, [slugs[i::4] for i in range(4)]) for s in part]
    elapsed = time.monotonic() - started
    assert len(statuses) == 10_000 and set(statuses) == {404}
    assert metric(gw, "sfpl_shortlink_misses") - misses == 10_000
    assert metric(gw, "sfpl_shortlink_store_lookups") == lookups  # no lookup reached the store
    # Only the change poll (one query every 2 s) may have run meanwhile, never one per request.
    polls = metric(gw, "sfpl_shortlink_store_queries") - queries
    assert polls <= elapsed / 2 + 5, (polls, elapsed)
    assert hit(gw, host, "/real").status == 302


def test_shorten_page_drives_the_admin_api(gw, acme):
    """static/shorten.html's API client, run in Node against this gateway (Node v18+ needed)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (v18+) is required for the shorten.html test but is not on PATH")
    page = gw.http("GET", "/tr/v1/pub/shorten.html")
    assert page.status == 200 and b'<script id="api">' in page.body
    host = "page.test"
    proc = subprocess.run(
        [node, str(ROOT / "tests" / "js" / "shorten_client.mjs"), str(ROOT / "static" / "shorten.html"),
         f"http://127.0.0.1:{gw.port}", acme["token"], acme["uid"], acme["secret"], host],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    first, invalid, dated = out["bodies"]
    assert first == {
        "body": {"urlfrom": f"https://{host}/a", "urlto": "https://example.com/a", "status": 301,
                 "forward_query": True, "expires": None},
        "errors": [],
    }  # fmt: skip
    assert invalid["body"] is None and len(invalid["errors"]) == 2
    assert dated["body"]["expires"].endswith("Z")

    assert out["saveToken"]["ok"] and out["saveToken"]["data"]["created"] is True
    assert out["saveBad"] == {
        "ok": False,
        "status": 400,
        "error": "Bad status (use 301, 302, 307 or 308)",
    }
    assert out["savePair"]["ok"] and out["savePair"]["data"]["urlfrom"] == f"{host}/b"
    listed = {link["urlfrom"]: link for link in out["listBefore"]["data"]["results"]}
    assert set(listed) == {f"{host}/a", f"{host}/b"}
    assert (listed[f"{host}/a"]["status"], listed[f"{host}/a"]["forward_query"]) == (301, True)
    assert out["remove"]["data"] == {"ok": True, "urlfrom": f"{host}/a", "deleted": True}
    assert [link["urlfrom"] for link in out["listAfter"]["data"]["results"]] == [f"{host}/b"]
    assert out["wrong"] == {"ok": False, "status": 401, "error": "bad credentials"}
    assert out["none"]["ok"] is False and out["none"]["status"] is None

    assert hit(gw, host, "/a").status == 404
    assert hit(gw, host, "/b").header("location") == "https://example.com/b"
