"""Event fields the original tracker derives from the request, through a real gateway (chDB):
country from ``tz``, the ``User`` header and ``ehash`` cookie, ``cell``/``uname`` as keyed
hashes, JA4H as its go-ja4h library computes it, and the client IP from ``X-Client-IP`` /
``CF-Connecting-IP`` when (only when) a trusted proxy sends them."""

from __future__ import annotations

import hashlib
import json
import socket
import uuid

import pytest

from tests.gateway_process import GatewayProcess

QUICK = {"Strategy": "hybrid", "MaxBatchSize": 100, "MaxBatchTime": "100ms"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    config = {"Batching": {"events": QUICK}, "TrustedProxies": ["127.0.0.1/32"]}
    with GatewayProcess(tmp_path_factory.mktemp("fields"), config) as gateway:
        yield gateway


def stored(gw, ename: str, columns: str = "*") -> dict:
    rows = gw.wait_for(
        f"SELECT {columns} FROM sfpla.events FINAL WHERE ename = '{ename}'", lambda r: r
    )
    assert len(rows) == 1, rows
    return rows[0]


def name() -> str:
    return "e" + uuid.uuid4().hex[:12]


def test_country_from_the_time_zone_when_nothing_else_says(gw):
    tz_only, explicit = name(), name()
    gw.http("POST", "/tr/v1/tr/", json_body={"ename": tz_only, "tz": "America/Los_Angeles"})
    gw.http("POST", "/tr/v1/tr/", json_body={"ename": explicit, "tz": "Europe/Paris",
                                              "country": "de"})  # fmt: skip
    assert stored(gw, tz_only, "country, tz") == {"country": "US", "tz": "America/Los_Angeles"}
    assert stored(gw, explicit, "country")["country"] == "DE"


def test_user_header_and_ehash_cookie_are_inputs_the_event_overrides(gw):
    uid, other = str(uuid.uuid4()), str(uuid.uuid4())
    ename = name()
    ehash = "Jc0TqSCHkFA8dmGQjxyvOL3rf-E"  # base64url SHA-1, as the original's clients send
    headers = {
        "User": json.dumps({"uid": uid, "app": "from-header", "ename": "ignored", "oid": other}),
        "Cookie": f"ehash={ehash}",
    }
    r = gw.http("POST", "/tr/v1/tr/", json_body={"ename": ename, "oid": uid}, headers=headers)
    assert r.status == 200
    row = stored(gw, ename, "toString(uid) AS uid, toString(oid) AS oid, app, ehash")
    assert row == {"uid": uid, "oid": uid, "app": "from-header", "ehash": ehash}


def test_cell_and_uname_are_stored_as_keyed_hashes_only(gw):
    ename, again = name(), name()
    body = {"ename": ename, "cell": "+1 (555) 010-0199", "uname": "Grace.Hopper",
            "email": "grace@example.com"}  # fmt: skip
    assert gw.http("POST", "/tr/v1/str/", json_body=body).status == 200
    # Raw values sent where a hash belongs are hashed too.
    body2 = {"ename": again, "chash": "+1 (555) 010-0199", "uhash": "grace.hopper"}
    assert gw.http("POST", "/tr/v1/str/", json_body=body2).status == 200
    row = stored(gw, ename)
    row2 = stored(gw, again)
    assert row["chash"] and row["uhash"] and row["ehash"]
    assert (row2["chash"], row2["uhash"]) == (row["chash"], row["uhash"])
    # Not the original's unsalted SHA-1 (reversible by trying numbers): a keyed hash.
    import base64

    sha1 = base64.urlsafe_b64encode(hashlib.sha1(b"+1 (555) 010-0199").digest()).decode()
    assert row["chash"] != sha1.rstrip("=") and row["chash"] != sha1
    text = json.dumps(row).lower()
    # The number's own pieces (not "555" alone: a random id holds it about 1 time in 100).
    for raw in ("(555)", "010-0199", "5550100199", "grace", "hopper", "example.com"):
        assert raw not in text, raw


def raw_request(gw, lines: list[str], body: bytes) -> bytes:
    """An HTTP/1.1 request with exactly these header lines (http.client adds its own)."""
    head = "\r\n".join(lines + [f"Content-Length: {len(body)}", "", ""]).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head + body)
        return s.recv(65536)


def sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_ja4h_as_the_original_computes_it(gw):
    ename = name()
    body = json.dumps({"ename": ename}).encode()
    answer = raw_request(
        gw,
        [
            "POST /tr/v1/str/ HTTP/1.1",
            "Host: localhost",
            "Accept: application/json",
            "Accept-Language: en-US,en;q=0.9",
            "Cookie: vid=1; admin=true",
            "Referer: https://example.com/",
            "Content-Type: application/json",
        ],
        body,
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer
    # go-ja4h: no Host; 5 headers less Cookie and Referer = 03 (Accept, Accept-Language,
    # Content-Type, Content-Length: 04); sorted names; cookie names sorted; d repeats c.
    names = sorted(["Accept", "Accept-Language", "Content-Length", "Content-Type", "Cookie",
                    "Referer"])  # fmt: skip
    cookies = sha12("adminvid")
    expected = f"po11cr04enus_{sha12(''.join(names))}_{cookies}_{cookies}"
    assert stored(gw, ename, "ja4h")["ja4h"] == expected


@pytest.mark.parametrize("header", ["X-Client-IP", "CF-Connecting-IP"])
def test_client_ip_headers_from_a_trusted_proxy(gw, header):
    ename = name()
    r = gw.http("POST", "/tr/v1/tr/", json_body={"ename": ename}, headers={header: "203.0.113.77"})
    assert r.status == 200
    assert stored(gw, ename, "ip")["ip"] == "203.0.113.0"  # IPMode truncate: its /24


def test_client_ip_headers_from_anyone_else_are_ignored(tmp_path):
    with GatewayProcess(tmp_path, {"Batching": {"events": QUICK}}) as other:
        ename = name()
        headers = {"X-Client-IP": "203.0.113.77", "CF-Connecting-IP": "198.51.100.9"}
        r = other.http("POST", "/tr/v1/tr/", json_body={"ename": ename}, headers=headers)
        assert r.status == 200
        assert stored(other, ename, "ip")["ip"] == "127.0.0.0"
