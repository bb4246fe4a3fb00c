"""Request bodies on both HTTP layers: chunked framing with bare line ends, and the streaming
decision for absolute-form targets (issue 12 leftovers).

A real gateway process per layer (``HTTPServer`` twisted and fast), a real upstream for the
proxied route, raw sockets where ``http.client`` would not send the bytes.
"""

from __future__ import annotations

import json

import pytest

from tests.edge_helpers import UpstreamProcess
from tests.gateway_process import GatewayProcess
from tests.test_edge_hostile import answers, raw, reason

MAX_BODY = 65536


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with UpstreamProcess(tmp_path_factory.mktemp("upstream")) as up:
        yield up


@pytest.fixture(scope="module", params=["twisted", "fast"])
def gw(request, tmp_path_factory, upstream):
    config = {
        "HTTPServer": request.param,
        "Sites": {"*": {"Proxy": {"/api/": f"http://127.0.0.1:{upstream.port}"}}},
        "MaxBodyBytes": MAX_BODY,
        # Long enough that an answer before it is the gateway's own, never a 408.
        "ReadTimeoutSeconds": 60,
    }
    with GatewayProcess(tmp_path_factory.mktemp(request.param), config) as gateway:
        yield gateway


def chunked_post(path: bytes, body: bytes, host: bytes = b"x") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%s" % (path, host, body)
    )


@pytest.mark.parametrize(
    "chunks",
    [
        b"2\n[]\n0\n\n",  # every line
        b"2\r\n[]\n0\r\n\r\n",  # after a chunk's data
        b"2\n[]\r\n0\r\n\r\n",  # a chunk-size line
        b"2\r\n[]\r\n0\r\n\n",  # the last line
        b"2\r\n[]\r\n0\r\nX-T: 1\n\r\n",  # a trailer line
        b"2\r[]\r\n0\r\n\r\n",  # a bare CR
    ],
    ids=["all-lf", "after-data", "size-line", "last-line", "trailer", "bare-cr"],
)
def test_a_bare_line_end_in_chunked_framing_is_400_at_once(gw, chunks):
    for path in (b"/tr/v1/tr/", b"/api/echo"):  # buffered (the API) and streamed (a proxy)
        # ReadTimeoutSeconds is 60 and the socket gives up after 10 s: an answer is the
        # gateway's refusal, not the 408 the twisted layer sent after the read timeout.
        try:
            data = raw(gw, chunked_post(path, chunks), timeout=10)
        except ConnectionResetError:
            # The fast layer cuts a streamed body that goes wrong (edge/http.py
            # _refuse_later): refused at once too, without an answer.
            assert gw.config["HTTPServer"] == "fast" and path == b"/api/echo"
            continue
        status, body = answers(data)[-1]
        assert status == 400 and reason(body), (path, data)
    assert gw.http("GET", "/ping").body == b"pong"


def test_chunked_bodies_with_crlf_framing_still_work(gw):
    # A LF inside a chunk's data is data.
    chunks = b"5\r\n[{}]\n\r\n0\r\nX-Trailer: yes\r\n\r\n"
    last = b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data = raw(gw, chunked_post(b"/tr/v1/tr/", chunks) + chunked_post(b"/api/echo", chunks) + last)
    [tracked, proxied, ping] = answers(data)
    assert tracked[0] == 200, data
    assert proxied[0] == 200 and json.loads(proxied[1])["body_len"] == 5, data
    assert ping == (200, b"pong")


def test_an_absolute_form_post_to_a_proxied_route_is_streamed(gw):
    # Streamed bodies are not held to MaxBodyBytes (a proxy passes a 50 MB upload on); a
    # buffered one over it is refused with 413. Was 413: the decision saw the raw target.
    body = b"z" * (4 * MAX_BODY)
    for target, host in (
        (b"/api/echo/origin", b"127.0.0.1"),
        (b"http://127.0.0.1/api/echo/absolute", b"elsewhere.test"),
        (b"HTTP://127.0.0.1:%d/api/echo/absolute?x=1" % gw.port, b"elsewhere.test"),
    ):
        request = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (target, host, len(body), body)
        )
        [(status, answer)] = answers(raw(gw, request))
        assert status == 200, (target, answer)
        echo = json.loads(answer)
        assert echo["method"] == "POST" and echo["body_len"] == len(body), (target, echo)
        assert echo["uri"].startswith("/api/echo/"), echo  # origin form upstream
    # The API is still buffered and bounded, whatever the target's form.
    request = (
        b"POST http://127.0.0.1/tr/v1/tr/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )
    [(status, answer)] = answers(raw(gw, request))
    assert status in (400, 413) and "MaxBodyBytes" in reason(answer), answer
