"""Config errors stop start-up with one clear line naming the key."""

import json
import subprocess
import sys

import pytest

from sfpltracker.config import ConfigError, load, load_dict, parse_duration
from tests.gateway_process import ROOT


def test_defaults_match_the_contract():
    cfg = load_dict({})
    assert (cfg.ProxyPort, cfg.ProxyPortTLS, cfg.ProxyExceptHTTP) == (":8080", ":8443", ":8880")
    assert cfg.QueryPort == "127.0.0.1:8123" and cfg.ApiVersion == 1 and cfg.prefix == "/tr/v1"
    assert cfg.MaxBatchEvents == 500 and cfg.VisitorCookieDays == 395 and cfg.IPMode == "truncate"
    assert cfg.store_entry().Type == "embedded"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"ProxyPrt": ":1"}, "ProxyPrt: unknown key"),
        ({"proxyport": ":1"}, 'did you mean "ProxyPort"'),
        ({"MaxBodyBytes": "big"}, 'MaxBodyBytes: expected an integer, got "big"'),
        ({"Domains": "x.com"}, "Domains: expected a list"),
        ({"IPMode": "scramble"}, "IPMode: must be one of"),
        ({"HTTPServer": "nginx"}, "HTTPServer: must be one of fast, twisted"),
        ({"ProxyPort": "eighty"}, "ProxyPort:"),
        ({"Notify": [{"Type": "mysql"}]}, "Notify[0].Type: must be one of"),
        ({"Notify": [{"Type": "clickhouse", "Hots": []}]}, "Notify[0].Hots: unknown key"),
        ({"Batching": {"events": {"Strategy": "lazy"}}}, "Batching.events.Strategy"),
        ({"Batching": {"events": {"MaxBatchTime": "soon"}}}, "Batching.events.MaxBatchTime"),
        ({"StoreNice": 20}, "StoreNice: must be 0 to 19"),
        ({"StoreNice": -5}, "StoreNice: must be 0 to 19"),
    ],
)
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_dict(data)


def test_original_keys_are_accepted_with_a_warning():
    warnings = []
    cfg = load_dict(
        {
            "UseGeoIP": True,
            "ProxyUrlFilter": ".*",
            "Notify": [{"Type": "embedded", "BatchingEnabled": True}],
        },
        warnings=warnings,
    )
    assert cfg.store_entry().Type == "embedded"
    assert any("UseGeoIP" in w for w in warnings) and any("BatchingEnabled" in w for w in warnings)


def test_durations():
    assert parse_duration("2s", "x") == 2.0
    assert parse_duration("500ms", "x") == 0.5
    assert parse_duration(3, "x") == 3.0
    with pytest.raises(ConfigError):
        parse_duration("2 weeks", "x")


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(bad)


def test_environment_overrides(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ProxyPort": ":1"}))
    monkeypatch.setenv("SFPL_ProxyPort", "127.0.0.1:9")
    monkeypatch.setenv("SFPL_MaxBatchEvents", "7")
    cfg = load(path)
    assert cfg.ProxyPort == "127.0.0.1:9" and cfg.MaxBatchEvents == 7
    monkeypatch.setenv("SFPL_MaxBatchEvents", "seven")
    with pytest.raises(ConfigError, match="SFPL_MaxBatchEvents"):
        load(path)


def test_twistd_refuses_a_bad_config_with_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"ProxyPort": ":8080", "MaxBodyBytes": "lots"}))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "sfpltracker",
            "--config",
            str(path),
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f'sfpltracker: config error: {path}: MaxBodyBytes: expected an integer, got "lots"'
    ]


def test_a_batching_override_changes_only_the_keys_it_gives():
    from twisted.internet.testing import MemoryReactorClock

    from sfpltracker.pipeline.batcher import DEFAULT_SETTINGS, Batcher

    cfg = load_dict({"Batching": {"payments": {"RetryAttempts": 5}, "events": {"MaxBatchSize": 7}}})
    batcher = Batcher(object(), MemoryReactorClock(), cfg.Batching)
    payments = batcher.settings_for("payments")
    assert payments.Strategy == "immediate" and payments.RetryAttempts == 5
    events = batcher.settings_for("events")
    assert events.MaxBatchSize == 7
    assert events.MaxBatchTime == DEFAULT_SETTINGS["events"].MaxBatchTime
    assert batcher.settings_for("agreed") == DEFAULT_SETTINGS["agreed"]


def test_workers_default_to_one_per_cpu_where_they_can_run(tmp_path):
    """Issue 14: ``Workers`` defaults to "auto" (the CPUs); "auto" runs one process where
    workers cannot (no edge listener, or a DataDirectory too long for their UNIX sockets),
    and an explicit count there is refused with the reason."""
    import os

    from sfpltracker.config import worker_count

    cfg = load_dict({"DataDirectory": str(tmp_path)})
    assert cfg.Workers == "auto" and worker_count(cfg) == os.cpu_count()
    no_edge = {"ProxyPort": "", "ProxyPortTLS": "", "ProxyExceptHTTP": ""}
    assert worker_count(load_dict({"DataDirectory": str(tmp_path), **no_edge})) == 1
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert worker_count(load_dict({"DataDirectory": str(deep)})) == 1
    with pytest.raises(ConfigError, match="UNIX sockets"):
        worker_count(load_dict({"DataDirectory": str(deep), "Workers": 2}))
    assert worker_count(load_dict({"DataDirectory": str(tmp_path), "Workers": 1})) == 1
