"""``"LogFormat": "json"``: one JSON object per log line, from the plugin and from tracker.tac."""

from __future__ import annotations

import json
import re
import time

from tests.gateway_process import ROOT, TWISTD, GatewayProcess

TRACK = "/tr/v1/tr/"


class TacGatewayProcess(GatewayProcess):
    """The gateway as ``twistd -ny tracker.tac`` with ``SFPL_CONFIG`` naming its config."""

    def command(self) -> list[str]:
        return [*TWISTD, "-n", "--pidfile=", "-y", str(ROOT / "tracker.tac")]


def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    events = []
    for line in lines:
        event = json.loads(line)  # every line is JSON: nothing else is written
        assert set(event) >= {"time", "level", "namespace", "text"}, event
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"]), event
        events.append(event)
    return events


def exercise(gw: GatewayProcess) -> None:
    assert gw.http("POST", TRACK, json_body={"ename": "signup"}).status == 200
    assert gw.http("POST", TRACK, body=b"{not json").status == 400


def test_plugin_writes_json_lines(tmp_path):
    with GatewayProcess(tmp_path, {"LogFormat": "json", "Debug": True}) as gw:
        exercise(gw)
    events = json_lines(gw.log_text())
    texts = [e["text"] for e in events]
    assert any(re.match(r"sfpltracker \S+ ready", t) for t in texts), texts
    assert any("stopped" in t for t in texts), texts
    assert {"info"} <= {e["level"] for e in events}
    assert any(e["namespace"].startswith("sfpltracker") for e in events)
    # Debug's access log is in it too, still without the client's address.
    assert any("/tr/v1/tr/" in t for t in texts), texts
    assert "127.0.0.1 " not in gw.log_text()


def test_plugin_honours_twistds_logfile(tmp_path):
    logfile = tmp_path / "gateway.json.log"
    with GatewayProcess(
        tmp_path, {"LogFormat": "json"}, twistd_args=("--logfile", str(logfile))
    ) as gw:
        exercise(gw)
    texts = [e["text"] for e in json_lines(logfile.read_text())]
    assert any(re.match(r"sfpltracker \S+ ready", t) for t in texts), texts
    assert not gw.log_text().strip()  # nothing on standard output


def test_text_is_still_the_default(tmp_path):
    with GatewayProcess(tmp_path) as gw:
        exercise(gw)
    text = gw.log_text()
    assert re.search(r"\[sfpltracker\.service#info\] sfpltracker \S+ ready", text), text
    assert not text.lstrip().startswith("{")


def test_tac_writes_json_lines(tmp_path, monkeypatch):
    gw = TacGatewayProcess(tmp_path, {"LogFormat": "json"})
    monkeypatch.setenv("SFPL_CONFIG", str(gw.config_path))
    with gw:
        exercise(gw)
        # The tac runs the whole gateway: the event reaches the store, read on the query port.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = gw.query("SELECT count() AS n FROM sfpla.events WHERE ename = 'signup'")
            if int(rows[0]["n"]) == 1:
                break
            time.sleep(0.2)
        assert int(rows[0]["n"]) == 1
    texts = [e["text"] for e in json_lines(gw.log_text())]
    assert any(re.match(r"sfpltracker \S+ ready", t) for t in texts), texts


def _wait_ready(gw: GatewayProcess, count: int, pattern: str) -> None:
    deadline = time.monotonic() + 60
    while len(re.findall(pattern, gw.log_text())) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def test_with_workers_each_text_line_names_its_process(tmp_path):
    # The supervisor, the store process and the workers write one log: each line says whose.
    with GatewayProcess(tmp_path, {"Workers": 2}) as gw:
        _wait_ready(gw, 3, r"sfpltracker \S+ ready")
        exercise(gw)
    text = gw.log_text()
    for name in ("store", "w1", "w2"):
        assert re.search(rf"\[{name} sfpltracker\.service#info\] sfpltracker \S+ ready", text)
    assert re.search(r"\[supervisor sfpltracker\.workers\.supervisor#info\] supervisor:", text)


def test_with_workers_each_json_line_names_its_process(tmp_path):
    with GatewayProcess(tmp_path, {"Workers": 2, "LogFormat": "json"}) as gw:
        _wait_ready(gw, 3, r"sfpltracker \S+ ready")
        exercise(gw)
    events = json_lines(gw.log_text())
    ready = {e.get("process") for e in events if re.match(r"sfpltracker \S+ ready", e["text"])}
    assert ready == {"store", "w1", "w2"}
    assert {e.get("process") for e in events} == {"supervisor", "store", "w1", "w2"}
