"""Static sites through a real gateway: validators, ranges, pre-compressed files, no escape."""

from __future__ import annotations

import gzip
import os
import socket

import pytest

from tests.edge_helpers import metric_value
from tests.gateway_process import GatewayProcess

INDEX = b"<!doctype html><title>home</title><p>welcome</p>\n"
APP_JS = b"console.log('app');\n" * 200
BIG = bytes(range(256)) * 4096  # 1 MiB: served by a producer, not read at once


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("static")
    root = base / "root"
    (root / "about").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "about" / "index.html").write_bytes(b"<p>about</p>")
    (root / "app.js").write_bytes(APP_JS)
    (root / "app.js.gz").write_bytes(gzip.compress(APP_JS))
    (root / "app.js.br").write_bytes(b"pretend-brotli-bytes")
    (root / "big.bin").write_bytes(BIG)
    (base / "secret.txt").write_bytes(b"outside the root")
    os.symlink(base / "secret.txt", root / "leak.txt")
    os.symlink(base, root / "linkdir")
    os.symlink(root / "app.js", root / "inside-link.js")  # a symlink that stays inside
    other = base / "other"
    other.mkdir()
    (other / "index.html").write_bytes(b"<p>other site</p>")
    return base


@pytest.fixture(scope="module")
def gw(tmp_path_factory, site_dir):
    sites = {
        "static.test": {
            "Root": str(site_dir / "root"),
            "CacheControl": "public, max-age=60",
            "TrackPages": True,
        },
        # The same files under other sites' Cache-Control (the answer's headers are kept
        # per file and Cache-Control: tests/test_edge_static.py::test_sites_sharing_a_root)
        "same.test": {"Root": str(site_dir / "root"), "CacheControl": "no-cache"},
        "bare.test": {"Root": str(site_dir / "root")},
        "*": {"Root": str(site_dir / "other")},
    }
    with GatewayProcess(
        tmp_path_factory.mktemp("gw"),
        {"Sites": sites, "Batching": {"events": {"Strategy": "immediate"}}},
    ) as gateway:
        yield gateway


H = {"Host": "static.test"}


def get(gw, path, **headers):
    return gw.http("GET", path, headers={**H, **headers})


def test_index_with_validators_and_cache_control(gw):
    r = get(gw, "/")
    assert r.status == 200 and r.body == INDEX
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert r.header("cache-control") == "public, max-age=60"
    assert r.header("etag").startswith('"') and r.header("last-modified")
    assert r.header("accept-ranges") == "bytes"
    assert get(gw, "/index.html").body == INDEX
    r = get(gw, "/about")
    assert r.status == 301 and r.header("location") == "/about/"
    assert get(gw, "/about/").body == b"<p>about</p>"
    # Another host gets the * site.
    r = gw.http("GET", "/", headers={"Host": "elsewhere.test"})
    assert r.body == b"<p>other site</p>"


def test_conditional_requests(gw):
    first = get(gw, "/app.js")
    etag, modified = first.header("etag"), first.header("last-modified")
    r = get(gw, "/app.js", **{"If-None-Match": etag})
    assert r.status == 304 and r.body == b""
    assert r.header("etag") == etag and r.header("content-length") is None
    r = get(gw, "/app.js", **{"If-None-Match": f'"other", W/{etag}'})
    assert r.status == 304  # weak comparison, list form
    r = get(gw, "/app.js", **{"If-Modified-Since": modified})
    assert r.status == 304
    r = get(gw, "/app.js", **{"If-Modified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"})
    assert r.status == 200 and r.body == APP_JS
    # If-None-Match wins over If-Modified-Since.
    r = get(gw, "/app.js", **{"If-None-Match": '"nope"', "If-Modified-Since": modified})
    assert r.status == 200


def test_range_requests(gw):
    r = get(gw, "/app.js", Range="bytes=0-9")
    assert r.status == 206 and r.body == APP_JS[:10]
    assert r.header("content-range") == f"bytes 0-9/{len(APP_JS)}"
    r = get(gw, "/app.js", Range="bytes=-5")
    assert r.status == 206 and r.body == APP_JS[-5:]
    r = get(gw, "/big.bin", Range="bytes=500000-600000")
    assert r.status == 206 and r.body == BIG[500000:600001]
    r = get(gw, "/big.bin", Range="bytes=1000000-")
    assert r.status == 206 and r.body == BIG[1000000:]
    r = get(gw, "/app.js", Range=f"bytes={len(APP_JS)}-")
    assert r.status == 416 and r.header("content-range") == f"bytes */{len(APP_JS)}"
    # If-Range with an old validator: the whole, current file.
    r = get(gw, "/app.js", Range="bytes=0-9", **{"If-Range": '"old"'})
    assert r.status == 200 and r.body == APP_JS
    etag = get(gw, "/app.js").header("etag")
    r = get(gw, "/app.js", Range="bytes=0-9", **{"If-Range": etag})
    assert r.status == 206
    r = get(gw, "/big.bin")
    assert r.status == 200 and r.body == BIG


def test_precompressed_variants(gw):
    plain = get(gw, "/app.js")
    assert plain.body == APP_JS and plain.header("content-encoding") is None
    assert plain.header("vary") == "Accept-Encoding"
    r = get(gw, "/app.js", **{"Accept-Encoding": "gzip"})
    assert r.header("content-encoding") == "gzip"
    assert gzip.decompress(r.body) == APP_JS
    assert r.header("content-type") == "text/javascript; charset=utf-8"
    assert r.header("etag") != plain.header("etag")
    r = get(gw, "/app.js", **{"Accept-Encoding": "gzip, deflate, br"})
    assert r.header("content-encoding") == "br" and r.body == b"pretend-brotli-bytes"
    r = get(gw, "/app.js", **{"Accept-Encoding": "br;q=0, gzip;q=0.5"})
    assert r.header("content-encoding") == "gzip"
    r = get(gw, "/app.js", **{"Accept-Encoding": "gzip;q=0"})
    assert r.header("content-encoding") is None and r.body == APP_JS
    r = gw.http("HEAD", "/app.js", headers={**H, "Accept-Encoding": "gzip"})
    assert r.status == 200 and r.body == b""
    assert r.header("content-length") == str(len(gzip.compress(APP_JS)))
    # A range applies to the representation chosen (here the gzip file).
    r = get(gw, "/app.js", Range="bytes=0-1", **{"Accept-Encoding": "gzip"})
    assert r.status == 206 and r.body == b"\x1f\x8b"


def raw_get(port: int, target: str) -> int:
    """Send ``target`` byte for byte (no client-side normalisation); return the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: static.test\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/about/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2fsecret.txt",
        "/leak.txt",
        "/linkdir/secret.txt",
        "/linkdir/root/index.html/../../secret.txt",
        "/app.js%00.html",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
    ],
)
def test_traversal_is_refused(gw, target):
    assert raw_get(gw.port, "/about/../app.js") == 200  # the client sends it raw, it works
    assert raw_get(gw.port, target) == 404


def test_symlink_inside_the_root_is_served(gw):
    r = get(gw, "/inside-link.js")
    assert r.status == 200 and r.body == APP_JS


def test_html_pages_are_tracked(gw):
    get(gw, "/about/", Referer="https://search.example/?q=x")
    get(gw, "/app.js")  # not a page
    rows = gw.wait_for(
        "SELECT url, ename, etyp, server FROM sfpla.events WHERE ename = 'page_view' "
        "AND url LIKE '%/about/%'",
        lambda rows: len(rows) >= 1,
    )
    assert rows[0] == {
        "url": "http://static.test/about/",
        "ename": "page_view",
        "etyp": "view",
        "server": 1,
    }
    js = gw.query("SELECT count() AS n FROM sfpla.events WHERE url LIKE '%app.js%'")
    assert js == [{"n": 0}]


def _answers(data: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each answer in ``data`` (every answer here has a Content-Length)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if head.startswith((b"HTTP/1.1 304", b"HTTP/1.1 204")) or b"\r\nX-Head: 1" in head:
            length = 0
        out.append((head, rest[:length]))
        data = rest[length:]
    return out


def test_static_files_are_served_by_the_fast_layer_in_order(gw):
    # Pipelined on one connection: a 1 MiB file its producer streams as the socket drains,
    # then a range, a 304, a HEAD, a miss and /ping: each answered whole and in order, with
    # no twisted.web Request behind them (sfpl_http_fast_answers_total counts all six).
    etag = get(gw, "/app.js").header("etag")
    fast = "sfpl_http_fast_answers_total"
    before = metric_value(
        gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode(), fast
    )
    pipeline = (
        b"GET /big.bin HTTP/1.1\r\nHost: static.test\r\n\r\n"
        b"GET /big.bin HTTP/1.1\r\nHost: static.test\r\nRange: bytes=1000-1999\r\n\r\n"
        b"GET /app.js HTTP/1.1\r\nHost: static.test\r\nIf-None-Match: %s\r\n\r\n"
        b"HEAD /app.js HTTP/1.1\r\nHost: static.test\r\n\r\n"
        b"GET /nothing-here HTTP/1.1\r\nHost: static.test\r\n\r\n"
        b"GET /ping HTTP/1.1\r\nHost: static.test\r\nConnection: close\r\n\r\n"
    ) % etag.encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        s.sendall(pipeline)
        data = b""
        while chunk := s.recv(8192):
            data += chunk
    # The HEAD answer's Content-Length names the file, but it has no body.
    head_at = data.index(b"HTTP/1.1 200", data.index(b"HTTP/1.1 304"))
    data = data[:head_at] + data[head_at:].replace(b"\r\n\r\n", b"\r\nX-Head: 1\r\n\r\n", 1)
    got = _answers(data)
    assert [h.split(b" ", 2)[1] for h, _ in got] == [b"200", b"206", b"304", b"200", b"404", b"200"]
    (big, big_body), (part, part_body), (same, _), (head, head_body), (miss, miss_body), _ = got
    assert big_body == BIG and part_body == BIG[1000:2000]
    assert b"Content-Range: bytes 1000-1999/%d" % len(BIG) in part
    assert b"ETag: " + etag.encode() in same and head_body == b""
    assert b"Content-Length: %d" % len(APP_JS) in head
    assert miss_body == b'{"error":"not found"}\n'
    for h, _ in got:  # twisted.web's Server header, as on the twisted layer
        assert h.count(b"\r\nServer: TwistedWeb/") == 1, h
    after = metric_value(
        gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode(), fast
    )
    assert after - before == 6


def test_sites_sharing_a_root_keep_their_own_cache_control(gw):
    """The headers of a file's answer are made once and kept per file and Cache-Control; two
    more sites serve the same root with their own (or the default), asked in turns."""
    expected = {
        "static.test": "public, max-age=60",
        "same.test": "no-cache",
        "bare.test": "public, max-age=300",
    }
    for _ in range(3):
        for host, cache_control in expected.items():
            for path, ctype in (("/app.js", "text/javascript"), ("/index.html", "text/html")):
                r = gw.http("GET", path, headers={"Host": host})
                assert r.status == 200, (host, path)
                assert r.header("cache-control") == cache_control, (host, path)
                assert r.header("content-type").startswith(ctype)
                assert r.header("etag") and r.header("last-modified")
                assert r.header("accept-ranges") == "bytes"
                assert r.header("vary") == ("Accept-Encoding" if path == "/app.js" else None)
