"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``; no browser download) signs in on a gateway with known
data (tests/dashboard_data.py), opens every page, checks the numbers shown equal SQL over the
stored rows, and that the console stayed free of errors. A screenshot of each page is saved
under ``test-artifacts/dashboard/`` (or ``$SFPL_TEST_ARTIFACTS``); with
``SFPL_UPDATE_SCREENSHOT=1`` the overview is also written to ``docs/img/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests import dashboard_data as dd
from tests.gateway_process import ROOT, GatewayProcess

CLIENT = "bot = 0 AND server = 0"
PAGES = ["overview", "pages", "sources", "locations", "devices", "goals", "links", "revenue",
         "consent"]  # fmt: skip
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SFPL_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "dashboard"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("dashboard-browser"), dd.CONFIG) as gateway:
        gateway.data = dd.load(gateway)
        yield gateway


@pytest.fixture(scope="module")
def browser_page():
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.problems = problems
            yield page
        finally:
            browser.close()


def rows(gw, sql: str) -> list[dict]:
    return [{k: (int(v) if isinstance(v, str) and v.isdigit() else v) for k, v in r.items()}
            for r in gw.query(sql)]  # fmt: skip


def shown(page) -> dict[str, str]:
    """Every number and label the page shows with a data-k, by key."""
    # Through locators (Playwright's isolated world): the page's CSP forbids eval in its own.
    return {
        e.get_attribute("data-k"): e.text_content() for e in page.locator("#page [data-k]").all()
    }


def number(text: str) -> float:
    return float(text.replace(",", ""))


def expected(gw, name: str) -> dict[str, object]:
    """What page ``name`` must show, from SQL."""
    want: dict[str, object] = {}

    def table(key, sql, columns):
        for i, row in enumerate(rows(gw, sql)):
            for c in columns:
                want[f"{key}.{i}.{c}"] = row[c]

    if name == "overview":
        t = rows(gw, f"SELECT count(DISTINCT vid) AS v, count(DISTINCT sid) AS s, "
                     f"countIf(url != '') AS p FROM sfpla.events FINAL WHERE {CLIENT}")[0]  # fmt: skip
        n = rows(gw, f"SELECT count() AS s, countIf(n = 1) AS b FROM (SELECT count() AS n FROM "
                     f"sfpla.events FINAL WHERE {CLIENT} GROUP BY sid)")[0]  # fmt: skip
        want.update({"current.visitors": t["v"], "current.sessions": t["s"],
                     "current.pageviews": t["p"], "realtime.visitors": t["v"],
                     "previous.visitors": 0,
                     "current.bounce_rate": round(100 * n["b"] / n["s"], 1)})  # fmt: skip
    elif name == "pages":
        table("pages", f"SELECT url, count() AS pageviews FROM sfpla.events FINAL WHERE {CLIENT} "
                       f"AND url != '' GROUP BY url ORDER BY pageviews DESC, url",
              ["url", "pageviews"])  # fmt: skip
    elif name == "sources":
        table("referrers", f"SELECT domain(last) AS referrer, count() AS events FROM sfpla.events "
                           f"FINAL WHERE {CLIENT} AND {dd.REFERRAL} GROUP BY referrer "
                           f"ORDER BY events DESC, referrer", ["referrer", "events"])  # fmt: skip
        table("campaigns", f"SELECT source, campaign, count(DISTINCT vid) AS visitors FROM "
                           f"sfpla.events FINAL WHERE {CLIENT} AND source != '' GROUP BY source, "
                           f"campaign ORDER BY visitors DESC, count() DESC, source",
              ["source", "campaign", "visitors"])  # fmt: skip
    elif name == "locations":
        table("countries", f"SELECT if(country = '', '(none)', toString(country)) AS country, "
                           f"count(DISTINCT vid) AS visitors, count() AS events FROM sfpla.events "
                           f"FINAL WHERE {CLIENT} GROUP BY country "
                           f"ORDER BY visitors DESC, events DESC, country",
              ["country", "visitors", "events"])  # fmt: skip
    elif name == "devices":
        table("device", f"SELECT toString(device) AS name, count(DISTINCT vid) AS visitors FROM "
                        f"sfpla.events FINAL WHERE {CLIENT} GROUP BY name "
                        f"ORDER BY visitors DESC, count() DESC, name", ["name", "visitors"])  # fmt: skip
    elif name == "goals":
        table("enames", f"SELECT toString(ename) AS ename, count() AS events FROM sfpla.events "
                        f"FINAL WHERE {CLIENT} AND ename != '' GROUP BY ename "
                        f"ORDER BY events DESC, ename", ["ename", "events"])  # fmt: skip
        want.update({"funnel.0.visitors": 4, "funnel.1.visitors": 2, "funnel.2.visitors": 1})
    elif name == "links":
        table("links", "SELECT r.urlfrom AS urlfrom, (SELECT count() FROM sfpla.events FINAL "
                       "WHERE bot = 0 AND rid = r.id) AS clicks FROM sfpla.redirects AS r FINAL",
              ["urlfrom", "clicks"])  # fmt: skip
    elif name == "revenue":
        t = rows(gw, "SELECT sum(revenue) AS r, count() AS n, count(DISTINCT uid) AS c "
                     "FROM sfpla.payments FINAL")[0]  # fmt: skip
        want.update(
            {"totals.revenue": t["r"], "totals.payments": t["n"], "totals.customers": t["c"]}
        )
    elif name == "consent":
        n = rows(gw, "SELECT count() AS n FROM sfpla.agreed FINAL")[0]["n"]
        want["decisions.total"] = n
    return want


def test_every_page_shows_what_sql_says(gw, browser_page):
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{gw.query_port}/dashboard/"
    page.goto(base)
    page.wait_for_selector("#login-form", state="visible")
    page.screenshot(path=str(ARTIFACTS / "login.png"))
    page.fill("input[name=uid]", gw.data["account"]["uid"])
    page.fill("input[name=secret]", "wrong")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:not(:empty)")
    assert page.text_content("#login-error") == "bad credentials"
    page.problems.clear()  # the refused sign-in's 401 is logged by the browser on purpose
    page.fill("input[name=secret]", gw.data["account"]["secret"])
    page.click("#login-form button")
    for name in PAGES:
        page.goto(f"{base}#{name}")
        page.wait_for_selector(f"#page[data-page={name}][data-ready]")
        if name == "overview":
            page.wait_for_selector("#page .stats[data-engagement]")
        page.wait_for_timeout(150)  # charts draw in the next animation frame
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        got = shown(page)
        want = expected(gw, name)
        if name == "consent":
            total = sum(number(v) for k, v in got.items() if k.endswith(".decisions"))
            got = {"decisions.total": str(total)}
        for key, value in want.items():
            assert key in got, (name, key, sorted(got))
            if isinstance(value, int | float):
                assert number(got[key]) == pytest.approx(value), (name, key, got[key], value)
            else:
                assert got[key] == value, (name, key, got[key], value)
        assert page.query_selector_all("#page [data-k]"), name
        assert page.text_content("#error") == "", name
        if name in ("overview", "links", "revenue"):
            assert page.query_selector("#page .uplot canvas"), f"{name}: no chart drawn"
    assert page.problems == []
    if os.environ.get("SFPL_UPDATE_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "overview.png", ROOT / "docs" / "img" / "dashboard.png")


def test_signing_out_shows_the_sign_in_form(gw, browser_page):
    page = browser_page
    page.goto(f"http://127.0.0.1:{gw.query_port}/dashboard/#overview")
    page.wait_for_selector("#page[data-ready]")
    page.click("#logout")
    page.wait_for_selector("#login-form", state="visible")
    page.reload()
    page.wait_for_selector("#login-form", state="visible")  # the session is gone server-side
    assert page.problems == []
