"""No secret or identifier in any log line (API.md section 8), with ``Debug`` on or off.

A real gateway is sent requests with marker strings in every place a client can put one: the
path, the query string, headers (Authorization, Cookie, X-Forwarded-For, User-Agent, Referer),
the body, the HTTP method and WebSocket messages; on every route family, with HEAD, GET, POST,
PUT, DELETE and OPTIONS. Once it stopped (its log flushed), none of the markers, nor the client's
raw IP or its address as Twisted prints it, may be in its log file.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from urllib.parse import quote

import lz4.block
import pytest
from websockets.sync.client import connect as ws_connect

from tests.gateway_process import GatewayProcess, free_port, http_request
from tests.servers import NatsServer
from tests.test_shortlinks import create_account

# Each marker is unique to one place, so a failure names the leak.
M = {
    "path": "pathSecretZq71",
    "query": "querySecretZq72",
    "auth": "authTokenZq73",
    "cookie": "cookieSecretZq74",
    "body": "bodySecretZq75",
    "email": "mark.erzq76@example.com",
    "vid": "0190dead-beef-7ccc-8ddd-0000000e0077",
    "ip": "203.0.113.78",  # the client, behind the trusted proxy 127.0.0.1
    "ua": "userAgentZq79",
    "referer": "refererSecretZq80",
    "method": "METHODZQEIGHTYONE",
    "ws": "wsMessageSecretZq82",
    "slug": "slugSecretZq83",
    "sql": "sqlSecretZq84",
    "admin": "adminTokenZq85",
}
METHODS = ("HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS", M["method"])
LINK_HOST = "links.test"


def headers(extra: dict | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {M['auth']}",
        "Cookie": f"vid={M['vid']}; sid={M['vid']}; session={M['cookie']}; CookieConsent=1024",
        "X-Forwarded-For": M["ip"],
        "X-Real-IP": M["ip"],
        "User-Agent": f"Mozilla/5.0 {M['ua']}",
        "Referer": f"https://shop.test/cart?token={M['referer']}",
        **(extra or {}),
    }


def body() -> bytes:
    return json.dumps(
        {
            "ename": "signup",
            "email": M["email"],
            "vid": M["vid"],
            "secret": M["body"],
            "urlfrom": f"{LINK_HOST}/{M['body']}",
            "urlto": f"https://example.com/{M['body']}",
            "cflags": 1024,
            "amount": 1,
        }
    ).encode()


def paths(account: dict) -> list[tuple[str, str]]:
    """(host, path) of every route family, with markers in the path and the query string."""
    p, q, e, v = M["path"], M["query"], quote(M["email"]), M["vid"]
    uid, secret = account["uid"], account["secret"]
    api = "/tr/v1"
    gateway = [
        f"{api}/tr/email/{e}/vid/{v}/s/{p}?q={q}&email={e}",
        f"{api}/tr/?vid={v}&q={q}",
        f"{api}/str/email/{e}/s/{p}?q={q}",
        f"{api}/img/vid/{v}/s/{p}?q={q}",
        f"{api}/ltv/s/{p}?q={q}",
        f"{api}/rpi/redirect/{uid}/{secret}",
        f"{api}/rpi/redirect/{p}/{p}?urlfrom={LINK_HOST}/{q}",
        f"{api}/rpi/redirect?urlfrom={LINK_HOST}/{q}",
        f"{api}/rpi/redirects/{uid}/{secret}/{LINK_HOST}",
        f"{api}/rpi/redirects/{p}/{p}/{p}",
        f"{api}/ppi/agree?vid={v}&q={q}",
        f"{api}/ppi/jds?q={q}",
        f"{api}/ppi/geoip?ip={M['ip']}",
        f"{api}/rdr/?url=https://{LINK_HOST}/{p}?q={q}",
        f"{api}/xrdr/?url=https://evil.test/{p}?q={q}",
        f"{api}/pub/{p}?q={q}",
        f"{api}/pub/track.js?q={q}",
        f"{api}/ws?vid={v}&q={q}",  # not an upgrade
        f"{api}/{p}/{q}",  # unknown route
        f"/health?q={q}",
        f"/status?q={q}",
        f"/metrics?q={q}",
        f"/ping?q={q}",
        f"/{p}?q={q}",
    ]
    hosts = [("127.0.0.1", path) for path in gateway]
    hosts += [
        (LINK_HOST, f"/{M['slug']}?token={q}"),  # a short link, forwarding its query
        (LINK_HOST, f"/{p}?q={q}"),  # an unknown slug
        ("static.test", f"/{p}?q={q}"),  # a static site: missing file
        ("static.test", f"/index.html?q={q}"),  # a static site: a file
        ("static.test", f"/api/{p}?q={q}"),  # a proxy route to a closed port
    ]
    return hosts


def send_websocket(gw: GatewayProcess) -> None:
    url = f"ws://127.0.0.1:{gw.port}/tr/v1/ws?ack=1&vid={M['vid']}&q={M['query']}"
    with ws_connect(url, additional_headers=headers(), open_timeout=20) as ws:
        event = {"ename": "ws_evt", "email": M["email"], "secret": M["ws"], "vid": M["vid"]}
        ws.send(json.dumps(event))
        ws.send(lz4.block.compress(json.dumps(event).encode()))
        ws.send(f"not json {M['ws']}")
        ws.send(json.dumps([event, f"{M['ws']}"]))
        replies = [json.loads(ws.recv(timeout=20)) for _ in range(4)]
    assert sum("ok" in r for r in replies) >= 2, replies


def send_query_listener(gw: GatewayProcess) -> None:
    for sql in (
        f"SELECT '{M['sql']}' AS x",
        f"SELECT no_such_column_{M['sql']} FROM sfpla.events",  # refused by the store
        f"SELECT * FROM file('/{M['sql']}')",  # refused by the guard or the store
        f"INSERT INTO sfpla.events (ename) VALUES ('{M['sql']}')",  # not read-only
    ):
        gw.query_raw(sql)
        http_request(gw.query_port, "GET", f"/?query={quote(sql)}", headers=headers())
    for method in ("HEAD", "GET", "POST", "OPTIONS"):
        http_request(
            gw.query_port,
            method,
            f"/admin/{M['path']}?q={M['query']}",
            body=b'{"x": "%s"}' % M["body"].encode() if method == "POST" else None,
            headers=headers({"X-Sfpl-Admin-Token": M["admin"]}),
        )


def send_idle_connection(gw: GatewayProcess) -> None:
    """A client that connects and says nothing: the gateway times it out (IdleTimeoutSeconds)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.recv(65536)
        assert s.recv(65536) == b""  # closed by the gateway after the idle timeout


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "no-debug"])
def test_no_secret_or_identifier_in_the_log(tmp_path, debug):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hi</h1>")
    upstream = free_port()  # nothing listens there: the proxy route answers 502
    config = {
        "Debug": debug,
        "TrustedProxies": ["127.0.0.1"],
        "Domains": ["localhost", LINK_HOST],
        "RedirectAllowHosts": [LINK_HOST],
        "IdleTimeoutSeconds": 1,
        "Sites": {
            "static.test": {
                "Root": str(site),
                "Proxy": {"/api/": f"http://127.0.0.1:{upstream}/"},
                "TrackPages": True,
            }
        },
        "Batching": {"events": {"Strategy": "immediate"}},
    }
    with GatewayProcess(tmp_path, config) as gw:
        account = create_account(gw, "acme")
        token = f"{account['uid']}.{account['secret']}"
        basic = base64.b64encode(f"{account['uid']}:{account['secret']}".encode()).decode()
        link = {"urlfrom": f"{LINK_HOST}/{M['slug']}", "urlto": "https://example.com/landing"}
        created = gw.http(
            "POST",
            "/tr/v1/rpi/redirect",
            json_body={**link, "forward_query": True},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status == 200, created
        statuses = set()
        auths = (f"Bearer {token}", f"Basic {basic}", f"Bearer {M['auth']}", "")
        for n, (host, path) in enumerate(paths(account)):
            for m, method in enumerate(METHODS):
                auth = auths[(n + m) % len(auths)]  # good, wrong and no credentials
                r = gw.http(
                    method,
                    path,
                    body=body() if method in ("POST", "PUT", "DELETE") else None,
                    headers=headers({"Host": host, "Authorization": auth}),
                )
                statuses.add(r.status)
                assert r.status != 500, (method, path, r)
        assert {200, 302, 400, 404} <= statuses  # the requests did reach the routes
        send_websocket(gw)
        send_query_listener(gw)
        send_idle_connection(gw)
        # the events did go through: the log is checked after real work, not after refusals
        rows = gw.wait_for(
            "SELECT count() AS n FROM sfpla.events WHERE ename = 'ws_evt'",
            lambda r: int(r[0]["n"]) >= 3,
        )
        assert int(rows[0]["n"]) >= 3
    text = gw.log_text()
    assert "sfpltracker stopped" in text  # the whole log, up to the end
    if debug:  # the access log is written, by route only
        assert re.search(r"GET /tr/v1/tr/\S* 200", text), text[-3000:]
        assert re.search(r"HEAD /tr/v1/rpi/\S* \d{3}", text), text[-3000:]
    secrets = {
        **M,
        "uid": account["uid"],
        "secret": account["secret"],
        "token": token,
        "basic": basic,
        "email (encoded)": quote(M["email"]),
    }
    leaks = {
        name: [line for line in text.splitlines() if value.lower() in line.lower()][:3]
        for name, value in secrets.items()
        if value.lower() in text.lower()
    }
    assert not leaks, "\n".join(f"{name}: {lines}" for name, lines in leaks.items())
    # nor the peer (here the trusted proxy) as Twisted prints it: "127.0.0.1:PORT" or
    # "IPv4Address(type='TCP', host='127.0.0.1', port=PORT)" with the client's port; the
    # gateway's own listeners and the configured upstream are no secret
    servers = {gw.port, gw.alt_port, gw.query_port, upstream}
    peers = [
        m.group(0)
        for m in re.finditer(r"127\.0\.0\.1'?(?:, port=|, |:)(\d+)", text)
        if int(m.group(1)) not in servers
    ]
    assert not peers and "Address(type=" not in text, peers[:5]
    assert "Timing out client" in text  # the idle connection was logged, without its address


def test_head_is_answered_as_get_without_a_body_and_without_a_warning(tmp_path):
    """Repro: ``curl -sI /tr/v1/rpi/redirect/UID/SECRET`` wrote the secret to the log (Twisted's
    "HEAD request ... is returning a message body" warning names the request's URI)."""
    secret_path = f"/tr/v1/rpi/redirect/someuid/{M['path']}"
    with GatewayProcess(tmp_path) as gw:
        for path in (secret_path, "/tr/v1/ppi/agree", f"/tr/v1/ppi/geoip?ip={M['ip']}", "/ping"):
            got, head = gw.http("GET", path), gw.http("HEAD", path)
            assert head.status == got.status and head.body == b""
            assert head.header("content-type") == got.header("content-type")
            if path != "/tr/v1/ppi/agree":  # answered at once (not after a store read)
                assert head.header("content-length") == str(len(got.body)), (path, head.headers)
    text = gw.log_text()
    assert "sfpltracker stopped" in text
    assert M["path"] not in text and M["ip"] not in text and "I'll eat it" not in text


def test_nats_credentials_in_a_server_url_are_not_logged(tmp_path, gateway_factory):
    password = "natsPasswordZq86"
    with NatsServer(
        base_dir=tmp_path / "nats", extra_args=["--user", "sfpl", "--pass", password]
    ) as nats:
        entry = {
            "Type": "nats",
            "Hosts": [f"nats://sfpl:{password}@127.0.0.1:{nats.port}"],
            "Subject": "log.test",
            "Timeout": 10,
            "Critical": True,  # the gateway starts once connected: the credentials work
        }
        gw = gateway_factory({"Notify": [entry]})
        assert gw.http("POST", "/tr/v1/tr/", json_body={"ename": "x"}).status == 200
    # the server is gone: the gateway says so, naming it
    deadline = time.monotonic() + 20
    while "NATS disconnected" not in gw.log_text():
        assert time.monotonic() < deadline, gw.log_tail()
        time.sleep(0.1)
    gw.stop()
    text = gw.log_text()
    assert password not in text
    assert f"NATS connected: nats://127.0.0.1:{nats.port}" in text
