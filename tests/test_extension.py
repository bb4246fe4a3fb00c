"""The tracking-URL builder as a Chrome extension (extensions/chrome/, issue 18 part 5), loaded
unpacked into Debian's headless Chromium (driven by Playwright with the system browser), against
a real gateway process: the popup builds the tracked link for a destination, the link records a
click and redirects, and the popup creates a short link through the admin API that then serves.

The popup and static/track_url.html share static/track_url.js (the extension holds symlinks to
it and to static/shortlinks.js), so the builder's own cases stay in test_static_js.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.gateway_process import ROOT, GatewayProcess
from tests.test_shortlinks import create_account

EXTENSION = ROOT / "extensions" / "chrome"
ARTIFACTS = ROOT / "test-artifacts"
DESTINATION = "https://www.allowed.test/landing?offer=spring"


def unpacked_extension_id(path: Path) -> str:
    """Chromium's id for an unpacked extension: the SHA-256 of its absolute path, first 32 hex
    digits written with the letters a-p."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return "".join(chr(ord("a") + int(c, 16)) for c in digest)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    config = {
        "Domains": ["localhost", "tracker.test", "go.test"],
        "RedirectAllowHosts": ["*.allowed.test"],
        "Batching": {"events": {"Strategy": "immediate"}},
        "LoginFailureLimit": 1000,
    }
    with GatewayProcess(tmp_path_factory.mktemp("extension"), config) as gateway:
        yield gateway


@pytest.fixture
def popup(tmp_path):
    """The extension's popup page in a fresh Chromium profile with the extension loaded;
    console errors and page errors collected in ``page.problems``."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is required (.ci/install-servers.sh installs it)")
    from playwright.sync_api import sync_playwright

    ext = EXTENSION.resolve()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=[f"--disable-extensions-except={ext}", f"--load-extension={ext}"],
        )
        try:
            page = context.new_page()
            page.set_viewport_size({"width": 400, "height": 900})
            page.problems = []
            page.on("pageerror", lambda e: page.problems.append(str(e)))
            page.on(
                "console",
                lambda m: page.problems.append(m.text) if m.type == "error" else None,
            )
            page.open = lambda query="": page.goto(
                f"chrome-extension://{unpacked_extension_id(ext)}/popup.html{query}"
            )
            yield page
        finally:
            context.close()


def test_manifest_is_v3_with_narrow_permissions():
    manifest = json.loads((EXTENSION / "manifest.json").read_text())
    assert manifest["manifest_version"] == 3
    assert manifest["action"]["default_popup"] == "popup.html"
    # reading the current tab needs only activeTab; no host permissions, no remote code
    assert set(manifest["permissions"]) == {"activeTab", "storage"}
    assert "host_permissions" not in manifest and "content_scripts" not in manifest
    html = (EXTENSION / "popup.html").read_text()
    for script in ("track_url.js", "shortlinks.js"):
        shared = EXTENSION / script
        assert shared.resolve() == (ROOT / "static" / script).resolve(), script
        assert f'<script src="{script}">' in html


def test_popup_builds_the_tracked_link_and_it_records_a_click(gw, popup):
    tracker = f"http://127.0.0.1:{gw.port}"
    popup.open("?url=" + DESTINATION.replace("?", "%3F").replace("=", "%3D"))
    assert popup.input_value("#url") == DESTINATION
    popup.fill("#tracker", tracker)
    popup.fill("#source", "News Letter")
    popup.fill("#medium", "email")
    popup.fill("#campaign", "Spring Sale")
    link = popup.text_content("#rdr")

    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{tracker}/tr/v1/rdr/"
    assert parse_qs(parts.query) == {
        "url": [DESTINATION],
        "source": ["news_letter"],
        "medium": ["email"],
        "campaign": ["spring_sale"],
    }
    assert popup.is_enabled("#copyRdr")

    hit = gw.http("GET", f"{parts.path}?{parts.query}")
    assert hit.status == 302 and hit.header("location") == DESTINATION
    gw.wait_for(
        "SELECT source, medium, campaign FROM events WHERE campaign = 'spring_sale'",
        lambda rows: (
            rows == [{"source": "news_letter", "medium": "email", "campaign": "spring_sale"}]
        ),
    )

    # the settings are kept in the profile: a new popup remembers the tracker
    popup.open()
    assert popup.input_value("#tracker") == tracker
    assert popup.problems == []


def test_popup_creates_a_short_link_through_the_admin_api(gw, popup):
    account = create_account(gw, "extension")
    tracker = f"http://127.0.0.1:{gw.port}"
    popup.open("?url=" + DESTINATION.replace("?", "%3F").replace("=", "%3D"))
    popup.fill("#tracker", tracker)
    popup.fill("#source", "partner")
    popup.fill("#medium", "referral")
    popup.fill("#campaign", "spring")
    popup.click("#shortBox summary")
    popup.fill("#urlfrom", "https://go.test/spring")
    assert not popup.is_enabled("#shorten")  # no token yet

    popup.fill("#token", "nobody.wrong")
    popup.click("#shorten")
    popup.wait_for_selector("#shortMsg.bad")
    assert "credentials" in popup.text_content("#shortMsg")

    popup.fill("#token", account["token"])
    popup.click("#shorten")
    popup.wait_for_selector("#shortMsg.ok")
    assert popup.text_content("#shortMsg") == "Created go.test/spring"
    popup.screenshot(path=str(artifact("extension-popup.png")), full_page=True)

    hit = gw.http("GET", "/spring", headers={"Host": "go.test"})
    assert hit.status == 302 and hit.header("location") == DESTINATION
    gw.wait_for(
        "SELECT source, medium FROM events WHERE campaign = 'spring'",
        lambda rows: rows == [{"source": "partner", "medium": "referral"}],
    )
    # 401 answers are logged by Chromium as failed resource loads; nothing else went wrong
    assert [p for p in popup.problems if "401" not in p] == []


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
