"""The original tracker's config files load with the same meaning (issue 16, part 1).

``tests/data/original/config.json`` is the original's own config.json, reconstructed from the
key table of shared/reference/original-behaviour.md section f (its values column; the ClickHouse
entry of f.2; the disabled ``cassandra_``/``duckdb_``/``nats_``/``facebook_`` entries and the
``Consume`` list as the original ships them). ``readme-sample.json`` is the three fragments of
the original README's "Configuration" section in one object.
"""

import json

import pytest

from sfpltracker.config import ConfigError, load, load_dict
from sfpltracker.original_config import Mapped
from tests.gateway_process import ROOT

DATA = ROOT / "tests" / "data" / "original"


def infos(notes):
    return [n for n in notes if isinstance(n, Mapped)]


def warnings_only(notes):
    return [n for n in notes if not isinstance(n, Mapped)]


def test_the_originals_config_json_keeps_its_meaning():
    notes = []
    cfg = load(DATA / "config.json", notes)
    # Service "clickhouse" is a ClickHouse store (not the embedded one), null CACert = absent
    (store,) = cfg.stores()
    assert store.Type == "clickhouse" and store.Hosts == ["127.0.0.1:9440"]
    assert store.Context == "sfpla" and store.CACert == "" and store.Critical is True
    assert store.Timeout == 0.3  # the original's Timeout is milliseconds
    assert store.Compression == "lz4" and store.Connections == 5
    assert [n.Type for n in cfg.Notify] == ["clickhouse"]  # the disabled "_" entries skipped
    # ProxyUrl / ProxyUrlFilter: /api/ proxied to the one upstream, tracked unless filtered
    assert cfg.Sites["*"].Proxy == {"/api/": "http://localhost:3030"}
    assert cfg.Sites["*"].ProxyUrlFilter.startswith(".*(dontlogthese|login")
    assert cfg.Sites["*"].AnswerOptions is True  # IgnoreProxyOptions: false
    assert cfg.Sites["*"].DailyLimit == 0  # ProxyDailyLimit: 0
    assert cfg.MaxConnections == 150000 and cfg.RateLimitPerDay == 0
    assert cfg.IPMode == "none"  # UseRemoveIP: true
    assert cfg.ForceHTTPS is True and cfg.ProxyPortRedirect == ""  # ProxyPort only redirected
    assert cfg.Batching["events"].MaxBatchSize == 1000
    assert cfg.Batching["events"].MaxBatchTime == 5.0
    assert cfg.Batching["events"].Strategy == "hybrid"  # only the given keys change
    assert cfg.GeoIPDatabase == ""  # CSV zips are not a database this gateway reads
    assert (cfg.ApiVersion, cfg.AllowOrigin, cfg.DefaultRedirect) == (1, "*", "https://sfpl.io")
    assert cfg.IdleTimeoutSeconds == 20 and cfg.MaxHeaderBytes == 1048576 and cfg.Debug

    info = "\n".join(infos(notes))
    for source in (
        "MaximumConnections -> MaxConnections",
        "ProxyDailyLimit: 0, no daily limit on /api/",
        'ProxyUrl -> Sites["*"].Proxy["/api/"]',
        'ProxyUrlFilter -> Sites["*"].ProxyUrlFilter',
        'IgnoreProxyOptions: false -> Sites["*"].AnswerOptions: true',
        'UseRemoveIP: true -> IPMode: "none"',
        "ProxyPortRedirect -> ForceHTTPS: true",
        'Notify[0].Service -> Type: "clickhouse"',
        "Notify[0].Timeout: 300 ms -> 0.3 s",
        'Notify[0].EnableCompression: true -> Compression: "lz4"',
        "Notify[0].MaxBatchSize -> Batching.events.MaxBatchSize",
        "Notify[0].BatchFlushInterval -> Batching.events.MaxBatchTime",
        "Notify[1]: 'cassandra_' is disabled (trailing _), skipped",
        "Consume[1]: 'nats_' is disabled, skipped",
    ):
        assert source in info, source
    # warnings only for keys with no meaning here
    warned = {w.split(":", 1)[0] for w in warnings_only(notes)}
    assert warned == {
        "UseGeoIP",  # says to set GeoIPDatabase to a .BIN or .mmdb
        "IgnoreInsecureTLS",
        "WriteTimeoutSeconds",
        "CFlagsMarketing",
        "SchemaVersion",
        "PruneLogsTTL",
        "PruneLimit",
        "S3Bucket",
        "S3Prefix",
        "S3Region",
        "S3AccessKeyID",
        "S3SecretAccessKey",
        "HealthCheckInterval",
        "MaxShardSizeBytes",
    }, warnings_only(notes)
    assert any("GeoIPDatabase" in w for w in warnings_only(notes))


def test_the_original_readmes_sample_keeps_its_meaning():
    notes = []
    cfg = load(DATA / "readme-sample.json", notes)
    (store,) = cfg.stores()
    assert store.Type == "clickhouse" and store.Hosts == ["localhost:9000"]
    assert [n.Type for n in cfg.Notify] == ["clickhouse"]
    events = cfg.Batching["events"]
    assert (events.Strategy, events.MaxBatchSize, events.MaxBatchTime) == ("hybrid", 1000, 2.0)
    assert cfg.IPMode == "truncate"  # AnonymizeIP: true
    assert cfg.IdleTimeoutSeconds == 30  # ConnectionTimeout
    assert cfg.MaxConnections == 10 and cfg.RateLimitPerDay == 10000
    assert cfg.DataRetentionDays == 365 and cfg.GeoIPDatabase == ".setup/geoip/IP2LOCATION.BIN"
    assert cfg.UseLocalTLS and cfg.LetsEncryptDomains == ["yourdomain.com"]
    info = "\n".join(infos(notes))
    for source in (
        'Notify[0].Host + Port -> Hosts: ["localhost:9000"]',
        'AnonymizeIP: true -> IPMode: "truncate"',
        "ConnectionTimeout -> IdleTimeoutSeconds: 30",
        "PruneOldData: true",
        "Notify[0].MaxBatchTime -> Batching.events.MaxBatchTime",
        "Notify[0].BatchingEnabled: true",
    ):
        assert source in info, source
    (warning,) = warnings_only(notes)
    assert warning.startswith("Notify[1]: a cassandra service is not supported here; entry skip")


def _load(data):
    notes = []
    return load_dict(data, warnings=notes), notes


@pytest.mark.parametrize(
    "entry,hosts,database",
    [
        ({"Service": "clickhouse", "Host": "ch1", "Port": 9001}, ["ch1:9001"], "sfpla"),
        (
            {"Service": "clickhouse", "Hosts": ["a:9000"], "Context": "db2", "CACert": None},
            ["a:9000"],
            "db2",
        ),
        ({"Type": "clickhouse", "Host": "ch2"}, ["ch2:9000"], "sfpla"),
    ],
)
def test_clickhouse_entries_of_the_original(entry, hosts, database):
    cfg, _ = _load({"Notify": [entry]})
    store = cfg.store_entry()
    assert store.Type == "clickhouse" and store.Hosts == hosts
    assert (store.Context or store.Database) == database


@pytest.mark.parametrize("service", ["cassandra", "duckdb", "facebook", "http", "kafka"])
def test_services_that_do_not_exist_here_are_skipped_with_a_warning(service):
    cfg, notes = _load({"Notify": [{"Service": service, "Hosts": ["h"]}]})
    assert cfg.Notify == [] and cfg.store_entry().Type == "embedded"
    assert any(f"a {service} service is not supported here" in w for w in warnings_only(notes))


def test_a_critical_service_that_does_not_exist_here_is_refused():
    with pytest.raises(ConfigError, match=r"Notify\[0\]: a cassandra service .* Critical"):
        load_dict({"Notify": [{"Service": "cassandra", "Hosts": ["h"], "Critical": True}]})


def test_a_notify_nats_entry_of_the_original_publishes_on_its_context():
    cfg, notes = _load(
        {"Notify": [{"Service": "nats", "Hosts": ["tls://n:4222"], "Context": "toc.x"}]}
    )
    (entry,) = cfg.Notify
    assert (entry.Type, entry.Hosts, entry.Subject) == ("nats", ["tls://n:4222"], "toc.x")
    assert any("Context -> Subject" in n for n in infos(notes))


def test_ip_keys():
    assert _load({"AnonymizeIP": True, "UseRemoveIP": True})[0].IPMode == "none"
    cfg, notes = _load({"UseRemoveIP": False})
    assert cfg.IPMode == "truncate"  # raw IPs are never switched on implicitly
    assert any("set IPMode: full" in w for w in warnings_only(notes))
    cfg, notes = _load({"AnonymizeIP": True, "IPMode": "hash"})
    assert cfg.IPMode == "hash" and any("IPMode is given" in n for n in infos(notes))


def test_an_explicit_key_wins_over_the_original_one():
    cfg, notes = _load({"MaximumConnections": 5, "MaxConnections": 7})
    assert cfg.MaxConnections == 7
    assert any("MaxConnections is given explicitly" in n for n in notes)
    cfg, _ = _load(
        {
            "Notify": [{"Type": "clickhouse", "Hosts": ["a:1"], "MaxBatchSize": 9}],
            "Batching": {"events": {"MaxBatchSize": 4}},
        }
    )
    assert cfg.Batching["events"].MaxBatchSize == 4
    cfg, _ = _load({"MaximumConnections": 0})
    assert cfg.MaxConnections == 10000  # 0 meant "503 everywhere" in the original


def test_geoip_from_a_database_file_and_proxy_redirect_port():
    cfg, notes = _load(
        {
            "UseGeoIP": True,
            "IPv4GeoIPZip": "geo/IP2LOCATION-LITE-DB11.BIN",
            "ProxyPortRedirect": ":443",
        }
    )
    assert cfg.GeoIPDatabase == "geo/IP2LOCATION-LITE-DB11.BIN"
    assert cfg.ForceHTTPS and cfg.ProxyPortRedirect == ":443"
    with pytest.raises(ConfigError, match="ProxyPortRedirect"):
        load_dict({"ProxyPortRedirect": "443"})


def test_lets_encrypt_for_domains_is_not_switched_on_implicitly():
    cfg, notes = _load({"UseLocalTLS": False, "Domains": ["t.example.com"]})
    assert cfg.LetsEncryptDomains == []
    assert any("list the names in LetsEncryptDomains" in w for w in warnings_only(notes))


def test_batching_disabled_and_prune_rules():
    cfg, notes = _load(
        {
            "Notify": [
                {
                    "Service": "clickhouse",
                    "Hosts": ["a:1"],
                    "BatchingEnabled": False,
                    "Prune": [
                        {"Table": "events", "TTL": 86400 * 90, "ClearAll": True},
                        {"Table": "visitors", "TTL": 86400 * 30 + 1, "ClearAll": True},
                        {"Table": "events", "TTL": 86400, "Fields": [{"Id": "ip"}]},
                    ],
                }
            ]
        }
    )
    assert cfg.Batching["events"].Strategy == "immediate"
    assert cfg.DataRetentionDays == 31  # the shortest ClearAll rule, rounded up to whole days
    assert any("raw IPs are never stored here" in n for n in infos(notes))


def test_proxy_daily_limit_counts_api_requests():
    cfg, notes = _load({"ProxyUrl": "http://up:3030", "ProxyDailyLimit": 3})
    assert cfg.Sites["*"].DailyLimit == 3 and cfg.RateLimitPerDay == 0  # /api/ only, as there
    assert any('ProxyDailyLimit -> Sites["*"].DailyLimit: 3' in n for n in infos(notes))
    cfg, notes = _load({"ProxyDailyLimit": 3})
    assert cfg.Sites == {} and any("no ProxyUrl" in w for w in warnings_only(notes))


def test_proxy_url_joins_a_wildcard_site_the_file_gives():
    data = json.loads((DATA / "config.json").read_text())
    data["Sites"] = {"*": {"Proxy": {"/app/": "http://localhost:9"}}}
    cfg, _ = _load(data)
    assert cfg.Sites["*"].Proxy == {"/app/": "http://localhost:9", "/api/": "http://localhost:3030"}
