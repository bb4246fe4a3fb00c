"""static/track.js against the real /tr/v1/ws: LZ4 and text frames, acks understood.

The client runs in Node (a vm with Node's real WebSocket and fetch, tests/js/ws_live.mjs);
the gateway is a real process. If the gateway's acks did not match what the client expects,
the client would resend every event over HTTP after its ack timeout: the test checks it did not.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.test_static_js import TRACK_JS, node

JS = Path(__file__).resolve().parent / "js" / "ws_live.mjs"


def test_browser_client_streams_over_the_websocket_and_gets_acks(gateway):
    n = 12
    proc = subprocess.run(
        [
            node(),
            "--experimental-websocket",
            str(JS),
            str(TRACK_JS),
            f"http://127.0.0.1:{gateway.port}",
            str(n),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("lz4", "text"):
        rep = report[mode]
        assert rep["open"] is True
        assert rep["fetches"] == [], f"{mode}: events were resent over HTTP (no ack understood)"
        assert rep["queued"] == 0
        eids = rep["eids"]
        assert len(set(eids)) == n
        keys = ",".join(f"'{e}'" for e in eids)
        rows = gateway.wait_for(
            f"SELECT eid, ename, params FROM sfpla.events FINAL WHERE eid IN ({keys})",
            lambda r, eids=eids: len(r) == len(eids),
        )
        assert {r["ename"] for r in rows} == {f"live_{mode}"}
        assert sorted(r["params"]["i"] for r in rows) == list(range(n))
    metrics = gateway.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    assert f"sfpl_ws_messages_total {2 * n}.0" in metrics
