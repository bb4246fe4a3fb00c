"""The dashboard on a public host: a ``Sites`` proxy route to the query listener's
``/dashboard`` (docs/dashboard.md), with the gateway itself as the trusted proxy.

Behind the route the browser's origin is the public host and scheme, which the dashboard
reads from the X-Forwarded-* headers of a peer in ``TrustedProxies``: same-origin sign-in
works, a cross-origin one is still refused, and the cookie is Secure when the browser came
over HTTPS.
"""

from __future__ import annotations

import http.client
import json
import ssl

import pytest

from tests.gateway_process import GatewayProcess, free_port, http_request
from tests.test_shortlinks import create_account

HOST = "stats.test"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tls_port = free_port()
    gateway = GatewayProcess(tmp_path_factory.mktemp("dashboard_site"))
    gateway.tls_port = tls_port
    upstream = f"http://127.0.0.1:{gateway.query_port}/dashboard"
    gateway.config.update(
        {
            "ProxyPortTLS": f"127.0.0.1:{tls_port}",
            "Domains": ["localhost", HOST],
            "Sites": {HOST: {"Proxy": {"/dashboard": upstream}}},
            "TrustedProxies": ["127.0.0.1"],
        }
    )
    with gateway:
        gateway.account = create_account(gateway, "site")
        yield gateway


def login(gw, origin: str):
    account = gw.account
    return http_request(gw.port, "POST", "/dashboard/api/login",
                        json_body={"uid": account["uid"], "secret": account["secret"]},
                        headers={"Host": f"{HOST}:{gw.port}", "Origin": origin})  # fmt: skip


def test_the_dashboard_answers_through_a_site_route(gw):
    r = http_request(gw.port, "GET", "/dashboard/", headers={"Host": HOST})
    assert r.status == 200 and b'src="app.js"' in r.body
    r = login(gw, f"http://{HOST}:{gw.port}")
    assert r.status == 200, r.body
    cookie = r.header("set-cookie").split(";")[0]
    r = http_request(gw.port, "GET", "/dashboard/api/overview",
                     headers={"Host": HOST, "Cookie": cookie})  # fmt: skip
    assert r.status == 200 and set(r.json()) >= {"current", "previous", "series"}
    # Another origin cannot sign anyone in through the route either.
    assert login(gw, "http://evil.test").status == 403
    # Only the dashboard: the query interface stays out of reach of the route.
    for path in ("/dashboard/../?query=SELECT%2042", "/dashboard/..%2F?query=SELECT%2042"):
        r = http_request(gw.port, "GET", path, headers={"Host": HOST})
        assert r.status in (400, 404) and b"42" not in r.body, (path, r.status, r.body)
    # Hosts without the route do not expose the dashboard.
    assert http_request(gw.port, "GET", "/dashboard/", headers={"Host": "localhost"}).status == 404


def test_the_cookie_is_secure_when_the_browser_came_over_https(gw):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", gw.tls_port, timeout=30, context=context)
    account = gw.account
    try:
        conn.request("POST", "/dashboard/api/login",
                     body=json.dumps({"uid": account["uid"], "secret": account["secret"]}),
                     headers={"Host": f"{HOST}:{gw.tls_port}",
                              "Origin": f"https://{HOST}:{gw.tls_port}",
                              "Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    flags = [f.strip().lower() for f in resp.getheader("set-cookie").split(";")]
    assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags
