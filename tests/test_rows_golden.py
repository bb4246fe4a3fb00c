"""The rows (and answers) of a wide table of tracking requests stay exactly what they were.

Each request of ``CASES`` is fed, as raw HTTP/1.1 bytes, into the gateway's edge on both
HTTP layers (``HTTPServer: fast`` and ``twisted``) under each config of ``CONFIGS``; the
records the intake is handed and the parts of the answer that ingestion decides (status,
cookies, CORS, the body of ``/str/``) are compared with ``tests/data/rows_golden.json``, which
was captured from the code before the per-request CPU work of issue 13 (the hot path was
rewritten for speed; every field's coercion, the privacy defaults and the ids must not move).

Ids minted per request (UUIDv4 visitor/session ids, UUIDv7 event ids) differ on every run:
they are replaced by ``<v4:n>`` / ``<v7 time:n>`` numbered in order of first appearance (in
key-sorted JSON), so which row and cookie share an id is still compared, and a UUIDv7 keeps
its millisecond prefix. Every other value is compared as it is.

Regenerate (only when a change of rows is intended): ``.venv/bin/python tests/test_rows_golden.py``.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

GOLDEN = Path(__file__).parent / "data" / "rows_golden.json"
NOW = 1764931234.567  # 2025-12-05T10:40:34.567Z: every row's created_at and minted eid prefix
SECRET = b"0123456789abcdef" * 4  # secret.key of every gateway here: keyed hashes repeat

CONFIGS = {
    "default": {},
    "proxied": {
        "TrustedProxies": ["127.0.0.0/8", "::1/128"],
        "IPMode": "full",
        "NormalizeURLs": True,
        "HonorDNT": True,
        "AllowOrigin": "https://shop.example.com, https://b.example",
        "PrefixPrivateHash": "pepper",
    },
    "consent": {
        "RequireConsent": True,
        "IPMode": "hash",
        "DropBots": True,
        "CookielessSalt": "salty",
        "AllowOrigin": "https://only.example",
    },
    "none": {"IPMode": "none", "NormalizeURLs": True, "UrlFilter": r"^(https?://[^/]+)(/[^?#]*)"},
}

VID = "0b6a3c2e-5f1d-4c1a-9d3e-8f2a1b4c5d6e"
SID = "1c7b4d3f-6a2e-4d2b-8e4f-9a3b2c5d6e7f"
EID = "018f2b6c-1d2e-7a3b-9c4d-5e6f7a8b9c0d"
TID = "2d8c5e4a-7b3f-4e2c-9f5a-0b4c3d6e7f8a"
UID = "3e9d6f5b-8c4a-4f3d-8a6b-1c5d4e7f8a9b"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

BROWSER = [
    ("User-Agent", CHROME),
    ("Accept", "image/avif,image/webp,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.9"),
    ("Referer", "https://shop.example.com/cart"),
    ("Origin", "https://shop.example.com"),
    ("Cookie", f"vid={VID}; sid={SID}; CookieConsent=1792; _ga=GA1.1.123.456"),
]

# Every typed field of ingest/fields.py (original-behaviour.md b.1), each with a usable value.
ALL_FIELDS = {
    "uid": UID, "oid": UID.upper(), "tid": TID, "rid": UID.replace("-", ""),
    "auth_id": UID, "invoice_id": "not-a-uuid", "device_id": UID, "ref": UID,
    "org": "Org One", "app": "Shop", "rel": "1.2.3", "ptyp": "product", "xid": "x-1",
    "split": "B", "sink": "s", "content": "Hero Banner", "term": "shoes", "relation": "r",
    "aff": "aff-9", "arm_id": "arm", "mcid": "m-1", "device": "Desktop", "os": "Linux",
    "browser": "Firefox", "region": "Bavaria", "city": "Munich", "zip": "02134",
    "tz": "Europe/Berlin", "gaid": "g", "idfa": "i", "msid": "m", "fbid": "f",
    "culture": "de-DE", "rcode": "r1", "last": "https://Shop.example.com/A?q=1#frag",
    "url": "HTTPS://Shop.Example.com/Cart?x=1", "outcome": "won",
    "ename": " Page_View ", "etyp": "VIEW", "source": "News", "medium": "EMail",
    "campaign": "Spring", "country": " de ", "cflags": "1024", "duration": "12",
    "w": "1280", "h": "720", "ver": "7", "lat": "52.52", "lon": "13.405",
    "score": "0.75", "targets": '{"a":1,"b":{"c":"x"}}',
    "subject": "Hello", "msg": "a message", "urgency": "3",
}  # fmt: skip

# Odd values: each is coerced, dropped or hashed by the rules of ingest/fields.py.
ODD_FIELDS = {
    "uid": "not-a-uuid", "oid": "{" + UID + "}", "ename": "", "content": "  Click Here ",
    "cflags": "abc", "duration": "12.0", "ver": "99999999999", "lat": "nan", "lon": "1e3",
    "score": "inf", "vp_w": "-5", "vp_h": "+7", "country": "", "targets": "{bad",
    "params": '{"a":1,"b.c":2,"b":{"c":3},"s":" 007 ","t":"true","f":"1.50","n":"-0.25"}',
    "a.b": "1", "a": "shadowed?", "email": " Foo@Example.COM ", "uname": "alice",
    "cell": "+1 555 0100", "ehash": "plain@x.example", "uhash": "A" * 27,
    "chash": "12345678901234567890123", "big": str(2**70), "neg": "-9223372036854775808",
    "zero": "0", "empty": "", "sp ace": "v", "UPPER": "Keep", "eid": "not-an-eid",
    "vid": "nope", "sid": SID.upper(), "uri": "dropped", "ip": "6.6.6.6", "hostname": "h",
    "new_vid": "1", "created": "2020-01-01", "time": "5", "tr": "x", "v1": "y", "did": "d",
}  # fmt: skip


def _q(fields: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields.items())


def get(target: str, headers=(), host="Shop.Example.com:8080", method="GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def post(target: str, body, headers=(), method="POST") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers]
    return get(target, head, method=method) + data


CASES: dict[str, tuple[bytes, str]] = {  # name -> (raw request, peer address)
    "wrk": (get("/tr/v1/tr/ename/page_view/etyp/view/app/bench", host="127.0.0.1:8080"), "v4"),
    "browser": (
        get(
            "/tr/v1/tr/ename/page_view?url=https%3A%2F%2Fshop.example.com%2Fcart&utm_source=News",
            BROWSER,
        ),
        "v4",
    ),  # fmt: skip
    "all fields in the query": (get("/tr/v1/tr/?" + _q(ALL_FIELDS), BROWSER), "v4"),
    "all fields in the path": (
        get("/tr/v1/tr/" + "/".join(f"{k}/{quote(v, safe='')}" for k, v in ALL_FIELDS.items())),
        "v4",
    ),
    "odd values in the query": (
        get("/tr/v1/tr/?" + _q(ODD_FIELDS), [("User-Agent", IPHONE)]),
        "v4",
    ),  # fmt: skip
    "path pairs: encoded, odd key, empty key, query wins": (
        get(
            "/tr/v1/tr/ENAME/A%2FB/app/caf%C3%A9//x/vid/" + VID + "/dangling"
            "?app=fromquery&utm_medium=Mail&UTM_Campaign=C&app=second&&=v&k"
        ),
        "v4",
    ),  # fmt: skip
    "ignore query key": (get("/tr/v1/tr/ename/kept?ename=dropped&igqp=1&x=2"), "v4"),
    "no fields at all": (get("/tr/v1/tr/"), "v4"),
    "img pixel": (get("/tr/v1/img/ename/open/tid/" + TID + "?subject=s", BROWSER), "v4"),
    "str server event": (
        get(
            f"/tr/v1/str/ename/signup/vid/{VID}/sid/{SID}/eid/{EID}", [("User-Agent", "backend/1")]
        ),
        "v4",
    ),  # fmt: skip
    "str without ids": (get("/tr/v1/str/ename/cron", [("Cookie", f"vid={VID}")]), "v4"),
    "gpc: cookieless": (
        get(
            "/tr/v1/tr/ename/gpc",
            [("Sec-GPC", "1"), ("User-Agent", CHROME), ("Cookie", f"vid={VID}")],
        ),
        "v4",
    ),  # fmt: skip
    "dnt": (get("/tr/v1/tr/ename/dnt?sid=" + SID, [("DNT", "1"), ("User-Agent", CHROME)]), "v4"),
    "consent refused by cookie": (
        get("/tr/v1/tr/ename/refused", [("Cookie", f"CookieConsent=256; vid={VID}")]),
        "v4",
    ),
    "consent as text": (
        get("/tr/v1/tr/ename/txt", [("Cookie", "CookieConsent=deny; sid=bad; vid=also-bad")]),
        "v4",
    ),
    "consent yes": (get("/tr/v1/tr/ename/yes", [("Cookie", "CookieConsent=yes")]), "v4"),
    "user header and ehash cookie": (
        get(
            "/tr/v1/tr/ename/u?uid=" + UID,
            [
                ("User", '{"UID": "' + TID + '", "Org": "fromheader", "email": "u@x.example"}'),
                ("Cookie", "ehash=abcdefghijklmnopqrstuvwxyz"),
            ],
        ),
        "v4",
    ),  # fmt: skip
    "forwarded": (
        get(
            "/tr/v1/tr/ename/fwd",
            [
                ("X-Forwarded-For", "203.0.113.9, 198.51.100.7, 127.0.0.1"),
                ("X-Forwarded-Host", "Proxied.Example:443, other"),
                ("X-Forwarded-Proto", "HTTPS"),
                ("X-Real-IP", "192.0.2.1"),
                ("User-Agent", GOOGLEBOT),
            ],
        ),
        "v4",
    ),  # fmt: skip
    "ipv6 peer, odd host": (
        get("/tr/v1/tr/ename/six?url=/slug%3Fx%3D1", [("User-Agent", "  ")], host="[::1]:8080"),
        "v6",
    ),  # fmt: skip
    "page url from a non-api path is not taken": (
        get("/tr/v1/tr/ename/x/url/", [("Origin", "https://b.example")]),
        "v4",
    ),
    "utf-8 and latin-1 bytes": (
        get(
            "/tr/v1/tr/ename/%E2%82%AC/city/M%FCnchen?region=%C3%9F&bad=%ZZ",
            [("User-Agent", "caf\u00e9-agent")],
        ),
        "v4",
    ),  # fmt: skip
    "post object": (
        post(
            "/tr/v1/tr/app/frompath/ename/frompath",
            {
                "ENAME": "Signup",
                "Vid": VID,
                "duration": 12.5,
                "ver": 3,
                "cflags": 1024,
                "lat": 1,
                "lon": 2.5,
                "org": True,
                "app": None,
                "score": "1e2",
                "w": 1.0,
                "params": {"plan": "pro", "n": 3, "deep": {"x": [1, {"y.z": 2}]}},
                "targets": {"k": [1, 2]},
                "device": {"not": "a string"},
                "tz": "asia/tokyo",
                "extra": [1, "2", {"a": None}],
                "Email": "Bob@Example.com",
            },
            BROWSER,
        ),
        "v4",
    ),  # fmt: skip
    "post array, mixed items": (
        post(
            "/tr/v1/tr/",
            [
                {"ename": "a", "eid": EID},
                ["not", "object"],
                7,
                {"ename": "b", "eid": "bad"},
                {
                    "ename": "c",
                    "tid": TID,
                    "subject": "s",
                    "msg": "m",
                    "alias": "al",
                    "provider": "p",
                    "urgency": 2,
                    "sys": 1,
                },
                {"content": "From Content", "params": '{"p":"q"}'},
            ],
            [("Cookie", f"vid={VID}")],
        ),
        "v4",
    ),  # fmt: skip
    "post string params and dotted keys": (
        post(
            "/tr/v1/tr/",
            {
                "ename": "d",
                "params": '{"a.b":1,"a":{"b":2},"c":[{"x.y":1,"x":{"y":2}}]}',
                "x.y": "top",
                "list": ["a", "b"],
                "f": 1.5,
                "i": 2**65,
                "nan": "NaN",
            },
        ),
        "v4",
    ),  # fmt: skip
    "put str array": (
        post(
            "/tr/v1/str/vid/" + VID,
            [{"ename": "s1", "eid": EID}, {"ename": "s2", "sid": SID}],
            method="PUT",
        ),
        "v4",
    ),  # fmt: skip
    "post img": (post("/tr/v1/img/", {"ename": "pix"}, [("Sec-GPC", "1")]), "v4"),
    "post bad json": (post("/tr/v1/tr/", b'{"ename": '), "v4"),
    "post only bad items": (post("/tr/v1/tr/", [1, "x"]), "v4"),
    "ltv get": (get("/tr/v1/ltv/uid/" + UID + "?revenue=9.5&currency=EUR&qty=2"), "v4"),
    "rdr": (get("/tr/v1/rdr/?url=%2Flanding&ename=Click&uid=" + UID, BROWSER), "v4"),
    "xrdr": (get("/tr/v1/xrdr/?url=https%3A%2F%2Fshop.example.com%2Fx&ename=go"), "v4"),
}

# Answer headers that ingestion decides (the layers' framing and Date/Server are not rows).
KEPT_HEADERS = (
    "set-cookie",
    "content-type",
    "cache-control",
    "x-rejected-events",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "vary",
    "location",
)


class Capture:
    """The intake: keeps a copy of every record it is handed, acknowledges at once."""

    def __init__(self):
        self.records: list = []

    def accept(self, records):
        self.records.extend(copy.deepcopy(list(records)))
        return defer.succeed(None)


def _site(tmp: Path, layer: str, overrides: dict):
    from sfpltracker.config import load_dict
    from sfpltracker.edge.assembly import Edge
    from sfpltracker.gateway import Gateway
    from sfpltracker.testing import MemoryStore
    from sfpltracker.web.site import GatewayRoot

    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "secret.key").write_bytes(SECRET)
    # The day's cookieless salt (random when made): fixed, so cookieless ids repeat.
    (data / "cookieless").mkdir(exist_ok=True)
    (data / "cookieless" / "2025-12-05").write_bytes(SECRET[:32])
    cfg = load_dict(
        {"DataDirectory": str(data), "ProxyPortTLS": "", "HTTPServer": layer, **overrides}
    )
    clock = MemoryReactorClock()
    clock.advance(NOW)
    gateway = Gateway(cfg, clock, store=MemoryStore())
    capture = Capture()
    gateway.intake = capture
    root = GatewayRoot(gateway)
    edge = Edge(gateway, root, clock)
    root.fallbacks.extend(edge.fallbacks())
    return edge.site(), capture


def _answer(raw: bytes) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:  # twisted.web frames bodies so
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            out, rest = out + rest[:n], rest[n + 2 :]
        body = out
    return {
        "status": status.split(" ", 2)[1],
        "headers": {k: v for k, v in sorted(headers.items()) if k in KEPT_HEADERS},
        "body": body.decode("latin-1"),
    }


def run_case(site, capture: Capture, raw: bytes, peer: str) -> dict:
    addr = (
        IPv6Address("TCP", "::1", 40000) if peer == "v6" else IPv4Address("TCP", "127.0.0.1", 40000)
    )
    channel = site.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
    channel.makeConnection(transport)
    capture.records.clear()
    channel.dataReceived(raw)
    answer = _answer(transport.value())
    channel.connectionLost(None)
    return {"records": [list(r) for r in capture.records], "answer": answer}


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-([47])([0-9a-f]{3})-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def normalise(result: dict, raw: bytes) -> dict:
    """``result`` with each minted UUIDv4/v7 (one not in the request) replaced by a numbered
    placeholder, in order of first appearance in key-sorted JSON."""
    sent = raw.decode("latin-1").lower().replace("-", "").replace("%2d", "")
    text = json.dumps(result, sort_keys=True)
    names: dict[str, str] = {}

    def replace(m: re.Match) -> str:
        value = m.group(0)
        if value.replace("-", "") in sent:
            return value
        if value not in names:
            version = m.group(1)
            time_part = value[:13] if version == "7" else ""
            names[value] = f"<v{version}{' ' + time_part if time_part else ''}:{len(names)}>"
        return names[value]

    return json.loads(_UUID.sub(replace, text))


def capture_all(tmp: Path) -> dict:
    out: dict = {}
    for config_name, overrides in CONFIGS.items():
        for layer in ("fast", "twisted"):
            site, capture = _site(tmp / config_name / layer, layer, overrides)
            for case, (raw, peer) in CASES.items():
                got = normalise(run_case(site, capture, raw, peer), raw)
                out.setdefault(config_name, {}).setdefault(case, {})[layer] = got
    return out


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    return capture_all(tmp_path_factory.mktemp("rows"))


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("case", list(CASES))
def test_rows_and_answers_are_what_they_were(captured, golden, config_name, case):
    for layer in ("fast", "twisted"):
        got = captured[config_name][case][layer]
        assert got == golden[config_name][case][layer], f"{layer} layer"


def test_the_table_covers_every_typed_field_and_stores_events():
    from sfpltracker.ingest.fields import EVENT_FIELDS

    sent = set(ALL_FIELDS) | set(ODD_FIELDS)
    assert set(EVENT_FIELDS) - {"vp_w", "vp_h"} <= sent
    golden = json.loads(GOLDEN.read_text())
    stored = [
        r
        for cases in golden.values()
        for layers in cases.values()
        for r in layers["fast"]["records"]
        if r[0] == "events"
    ]
    assert len(stored) > 3 * len(CASES)  # the table is not a table of refusals


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    result = capture_all(Path(tempfile.mkdtemp(prefix="rows-golden-")))
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"wrote {GOLDEN}: {sum(len(c) for c in result.values())} cases")
