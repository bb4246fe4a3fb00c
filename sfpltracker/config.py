"""Typed configuration loaded from ``config.json``.

Keys keep the original tracker's PascalCase names so an existing ``config.json`` reads the same.
Every key is declared once below with its type and default; an unknown key, a wrong type or a
missing file stops start-up with one line that names the key (``ConfigError``). The original
tracker's own keys are rewritten first (``original_config``: one info line per mapped key);
those with no meaning here are listed in ``LEGACY_KEYS``: they are accepted with a warning so a
migrating user is told instead of refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from sfpltracker.original_config import Mapped, OriginalConfigError, translate
from sfpltracker.store.schema import DEFAULT_DATABASE


class ConfigError(Exception):
    """A configuration problem, worded for the operator: one line, naming the key."""


@dataclass
class BatchSettings:
    """Per-table batching settings (the seed README's table-specific configurations)."""

    Strategy: str = "hybrid"
    MaxBatchSize: int = 1000
    MaxBatchTime: float = 2.0  # seconds; "2s" / "500ms" strings are accepted too
    MaxMemoryMB: float = 10.0
    Priority: int = 3
    RetryAttempts: int = 3
    RetryBackoffMs: int = 100
    # The keys the config gave: an override changes only these and keeps the table's other
    # defaults ({"payments": {"RetryAttempts": 5}} leaves payments "immediate").
    given: frozenset = field(default=frozenset(), metadata={"internal": True}, compare=False)

    def over(self, base: BatchSettings) -> BatchSettings:
        """``base`` with the keys this entry gave replaced."""
        return replace(base, **{key: getattr(self, key) for key in self.given})


@dataclass
class NotifyEntry:
    """One ``Notify`` entry: a store (``embedded``, ``clickhouse``, ``duckdb``), a publisher (``nats``) or
    an output (``facebook``: the Conversions API, docs/outputs.md)."""

    Type: str = "embedded"
    Hosts: list[str] = field(default_factory=list)
    Database: str = DEFAULT_DATABASE
    Context: str = ""
    Username: str = "default"
    Password: str = ""
    Secure: bool = False
    CACert: str = ""
    Cert: str = ""
    Key: str = ""
    Compression: str = ""
    Connections: int = 4
    Timeout: float = 10.0  # seconds
    Cluster: str = ""
    File: str = ""  # duckdb: the database file (default DataDirectory/sfpla.duckdb)
    Subject: str = "toc.track.notify"
    JetStream: bool = False
    Stream: str = "SFPL_EVENTS"
    Loader: bool = True  # JetStream: this gateway also loads the stream into its store
    AckWaitSeconds: float = 30.0  # JetStream loader: unacked messages are redelivered after it
    # nats: also consume the original's tic.log / tic.count / tic.update into logs, counters,
    # updates (notify/consumer.py)
    Consume: bool = False
    # nats + Consume: the subjects per kind ({"log": ["tic.log.>"], ...}); empty: tic.<kind>
    # and tic.<kind>.> for each of log, count, update
    ConsumeSubjects: dict[str, list[str]] = field(default_factory=dict)
    # nats: publish accepted events on Subject (false: an entry that only consumes)
    Publish: bool = True
    # facebook: the pixel, its Conversions API token, the enames sent (Meta's spelling, e.g.
    # "Purchase"; matched case-insensitively), Meta's test code, where the Graph API is.
    PixelId: str = ""
    AccessToken: str = ""
    Events: list[str] = field(default_factory=list)
    TestEventCode: str = ""
    GraphURL: str = "https://graph.facebook.com"
    GraphVersion: str = "v22.0"
    BatchEvents: int = 1000  # events per Graph API request (Meta's limit: 1,000)
    Critical: bool = False
    Skip: bool = False


@dataclass
class ExportSettings:
    """``Export``: new rows of ``Tables`` as Parquet (Hive layout) to ``Target`` every
    ``Every`` (sfpltracker/export.py, docs/export.md). An empty ``Target`` turns it off. The
    S3 keys default to the usual AWS environment variables."""

    Every: float = 3600.0  # seconds; "1h" / "15m" strings are accepted too
    Target: str = ""  # "s3://bucket/prefix" or a directory
    Tables: list[str] = field(default_factory=lambda: ["events"])
    Format: str = "parquet"
    Endpoint: str = ""  # S3 API URL, e.g. "http://127.0.0.1:9000" (MinIO); "" = AWS
    Region: str = ""
    AccessKeyId: str = ""
    SecretAccessKey: str = ""
    SessionToken: str = ""
    MaxRowsPerFile: int = 100000  # rows of one export range (one file per day in it)


@dataclass
class SiteEntry:
    """One ``Sites`` entry: a host (or ``*``) served from a static root and/or proxy routes."""

    Root: str = ""
    Proxy: dict[str, str] = field(default_factory=dict)
    CacheControl: str = "public, max-age=300"
    TrackPages: bool = False
    ProxyUrlFilter: str = ""
    # Answer OPTIONS (CORS preflight) on this site's proxy routes here instead of forwarding
    # them (the original's default for /api/, IgnoreProxyOptions: false).
    AnswerOptions: bool = False
    # Requests per client IP per UTC day on this site's proxy routes, then 429 (0 = no limit):
    # the original's ProxyDailyLimit, which counted /api/ only.
    DailyLimit: int = 0


UPSTREAM_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


@dataclass
class ProxyRoute:
    """One ``Sites.<host>.Proxy`` entry, parsed: checked by ``load()``, served by ``edge/``."""

    prefix: bytes
    upstream: str
    scheme: str  # http or https
    host: str
    port: int
    base_path: bytes  # b"" when the path goes upstream unchanged

    @classmethod
    def parse(cls, prefix: str, upstream: str) -> ProxyRoute:
        parts = urlsplit(upstream)
        scheme = UPSTREAM_SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.hostname:
            raise ValueError(f"upstream must be an http(s):// URL with a host, got {upstream!r}")
        if not prefix.startswith("/"):
            raise ValueError(f"a proxy prefix starts with /, got {prefix!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        base = parts.path if parts.path not in ("", "/") else ""
        return cls(prefix.encode(), upstream, scheme, parts.hostname, port, base.encode())

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode()

    def matches(self, path: bytes) -> bool:
        if self.prefix.endswith(b"/"):
            return path.startswith(self.prefix)
        return path == self.prefix or path.startswith(self.prefix + b"/")

    def target(self, uri: bytes) -> bytes:
        """The path and query to request upstream for the client's ``uri``."""
        if not self.base_path:
            return uri
        rest = uri[len(self.prefix.rstrip(b"/")) :]
        target = self.base_path.rstrip(b"/") + rest
        return target if target.startswith(b"/") else b"/" + target

    def url(self, uri: bytes) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}".encode() + self.target(uri)


@dataclass
class Config:
    # Listeners (API.md section 2). An empty string disables a listener.
    ProxyPort: str = ":8080"
    ProxyPortTLS: str = ":8443"
    ProxyExceptHTTP: str = ":8880"
    QueryPort: str = "127.0.0.1:8123"
    QueryUser: str = ""
    QueryPassword: str = ""
    # Bounds on one query of the query listener (ClickHouse's max_execution_time and
    # max_result_bytes): past them it is stopped and answered 400 with ClickHouse's reason.
    QueryTimeoutSeconds: float = 30.0
    QueryMaxResultBytes: int = 64 * 1024 * 1024
    ForceHTTPS: bool = False
    HSTS: bool = False
    ReadTimeoutSeconds: float = 20.0
    IdleTimeoutSeconds: float = 60.0
    MaxHeaderBytes: int = 16384
    MaxConnections: int = 10000
    RateLimitPerDay: int = 0
    # HTTP/1.1 on the edge listeners: "fast" (edge/http.py, httptools; hot routes without
    # twisted.web) or "twisted" (twisted.web's HTTPChannel). The query listener is twisted.web.
    HTTPServer: str = "fast"
    # Processes (ARCHITECTURE.md "Processes"): 1 = everything in one process; N > 1 or "auto"
    # (the number of CPUs) = a supervisor, one store process and N ingest workers sharing the
    # listening sockets. Read it with ``worker_count()``.
    Workers: int | str = "auto"
    # With workers: how many nice levels below them the store process runs while it keeps up
    # (0-19; level with them while it is behind: workers/store_priority.py). The workers
    # answer clients; the store only has to keep up on average (the spools hold the
    # difference), so its chDB inserts wait while a burst of requests is served.
    StoreNice: int = 10

    # Routes and request handling (section 3).
    ApiVersion: int = 1
    AllowOrigin: str = "*"
    Domains: list[str] = field(default_factory=list)
    RedirectAllowHosts: list[str] = field(default_factory=list)
    DefaultRedirect: str = "/"
    StaticDirectory: str = "static"
    MaxBodyBytes: int = 1048576
    MaxBatchEvents: int = 500
    MaxMessageBytes: int = 1048576
    # Input bounds on every JSON body and params (README "Input bounds"): objects/arrays nested
    # in one event (the event is level 1), keys at every level of an event's params, and the
    # size of its params as JSON text. Beyond them the event is refused alone.
    MaxJSONDepth: int = 16
    MaxParamsKeys: int = 256
    MaxParamsBytes: int = 65536
    IgnoreQueryParamsKey: str = "igqp"
    # The original's url/last normalisation (ingest/urls.py): off by default (API.md: values
    # as sent); on when the original's config file is loaded (original_config.py).
    NormalizeURLs: bool = False
    UrlFilter: str = ""  # with NormalizeURLs: a regex whose group UrlFilterMatchGroup is kept
    UrlFilterMatchGroup: int = 0
    # Short-link admin API: after this many failed logins per client IP or uid within the
    # window, further attempts get 429 without a password check (0 turns it off).
    LoginFailureLimit: int = 10
    LoginFailureWindowSeconds: float = 900.0

    # Identity and privacy (section 4).
    SessionMinutes: int = 30
    VisitorCookieDays: int = 395
    RequireConsent: bool = False
    HonorDNT: bool = False
    CookielessSalt: str = ""
    TrustedProxies: list[str] = field(default_factory=list)
    IPMode: str = "truncate"
    IPHashSecret: str = ""
    PrefixPrivateHash: str = ""
    DropBots: bool = False
    GeoIPDatabase: str = ""
    DataRetentionDays: int = 0

    # Durability and storage (sections 5 and 6).
    DataDirectory: str = "data"
    SpoolMaxBytes: int = 1073741824
    SpoolCommitWindowMs: float = 2.0
    # "spool": acknowledge after fsync in the local spool (default); "memory": acknowledge when
    # queued in RAM (faster, loses what is queued if the process dies; benchmarks compare both).
    Durability: str = "spool"
    Notify: list[NotifyEntry] = field(default_factory=list)
    Batching: dict[str, BatchSettings] = field(default_factory=dict)
    Export: ExportSettings = field(default_factory=ExportSettings)

    # Edge (section 7).
    Sites: dict[str, SiteEntry] = field(default_factory=dict)
    UseLocalTLS: bool = False
    TLSCert: str = ""
    TLSKey: str = ""
    LetsEncryptDomains: list[str] = field(default_factory=list)
    ACMEDirectory: str = "https://acme-v02.api.letsencrypt.org/directory"
    ACMEEmail: str = ""
    ACMERenewDays: int = 30
    ACMEChallenge: str = "auto"  # http-01 | tls-alpn-01 | auto (http-01 when ProxyPort is set)
    ProxyConnectTimeoutSeconds: float = 5.0  # reverse proxy: connecting to an upstream (502)
    ProxyTimeoutSeconds: float = 60.0  # reverse proxy: waiting for the upstream to answer (504)
    # The original's key: the ":PORT" put in ForceHTTPS redirects ("" = ProxyPortTLS's port).
    ProxyPortRedirect: str = ""

    # Operations (section 8).
    LogFormat: str = "text"
    Debug: bool = False

    # Where the file was read from; relative paths in the file resolve against its folder.
    base_dir: str = field(default=".", metadata={"internal": True})

    @property
    def prefix(self) -> str:
        return f"/tr/v{self.ApiVersion}"

    def path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def data_dir(self) -> Path:
        return self.path(self.DataDirectory)

    def stores(self) -> list[NotifyEntry]:
        return [n for n in self.Notify if n.Type in STORE_TYPES and not n.Skip]

    def store_entry(self) -> NotifyEntry:
        """The store events are loaded into: the first store entry, else the embedded one."""
        stores = self.stores()
        return stores[0] if stores else NotifyEntry(Type="embedded")


STORE_TYPES = ("embedded", "clickhouse", "duckdb")
NOTIFY_TYPES = (*STORE_TYPES, "nats", "facebook")

# Keys of the original tracker's config.json. ``original_config.translate`` maps those with a
# meaning here before the typed load; the rest reach ``_build``, which accepts them with a
# warning (or an info line when the value is the original's "off": false, 0, "", []).
LEGACY_KEYS = frozenset(
    """IgnoreInsecureTLS ProxyUrl ProxyUrlFilter IgnoreProxyOptions
    ProxyForceJson ProxyDailyLimit ProxyDailyLimitChecker MaximumConnections
    ReadHeaderTimeoutSeconds WriteTimeoutSeconds TempDirectory UseGeoIP GeoIPVersion
    IPv4GeoIPZip IPv6GeoIPZip IPv4GeoIPCSVDest IPv6GeoIPCSVDest UseRegionDescriptions
    UseRemoveIP AccountHashMixer CFlagsMarketing CFlagsIgnore
    SchemaVersion PruneLogsTTL PruneLogsOnly PruneLogsSkip PruneLogsPageSize PruneUpdateConfig
    PruneLimit PruneSkipToTimestamp S3Bucket S3Prefix S3Region S3AccessKeyID S3SecretAccessKey
    HealthCheckInterval InactivityTimeoutSeconds MaxShardSizeBytes Consume NodeId
    AnonymizeIP PruneOldData ConnectionTimeout""".split()
)
LEGACY_NOTIFY_KEYS = frozenset(
    """Service Unencrypted Retries AttemptAll Filter Prune ProxyRealtimeStorageServiceName
    ProxyRealtimeStorageServiceTables Format MessageLimit ByteLimit Consumer Ephemeral Note
    Host Port BatchingEnabled MaxBatchSize MaxBatchTime BatchFlushInterval EnableCompression
    Keyspace""".split()
)

COMPRESSIONS = ("", "none", "lz4", "lz4hc", "zstd")  # clickhouse-driver's methods
DURABILITY_MODES = ("spool", "memory")
STRATEGIES = ("immediate", "time", "size", "hybrid", "memory", "adaptive")
IP_MODES = ("truncate", "hash", "full", "none")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a Go-style duration string ("2s", "500ms", "1m")."""
    if isinstance(value, bool):
        raise ConfigError(f'{where}: expected seconds or a duration like "2s", got {value!r}')
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
            return float(m.group(1)) * scale
    raise ConfigError(f'{where}: expected seconds or a duration like "2s", got {value!r}')


def _workers(value: Any, where: str) -> int | str:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # from the environment (SFPL_Workers=2)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(
        f'{where}: expected a number of processes (1 or more) or "auto", got {value!r}'
    )


WORKER_SOCKET_PATH_MAX = 104  # the workers' UNIX sockets (workers/protocol.py); sun_path is 108


def worker_count(cfg: Config) -> int:
    """How many ingest workers: ``Workers``, "auto" = the CPUs; 1 where workers cannot run
    (no edge listener, or a DataDirectory too long for their UNIX sockets)."""
    single = _single_process_only(cfg)
    if cfg.Workers == "auto":
        return 1 if single else max(1, os.cpu_count() or 1)
    n = int(cfg.Workers)
    if n > 1 and single:
        raise ConfigError(f"Workers: {n} workers cannot run with {single}; use Workers: 1")
    return n


def _single_process_only(cfg: Config) -> str:
    if not (cfg.ProxyPort or cfg.ProxyExceptHTTP or cfg.ProxyPortTLS):
        return "no edge listener"
    # The processes talk over UNIX sockets in DataDirectory (workers/protocol.py), whose
    # paths the kernel bounds.
    longest = Path(cfg.data_dir).resolve() / "supervisor.amp"
    if len(os.fsencode(str(longest))) > WORKER_SOCKET_PATH_MAX:
        limit = WORKER_SOCKET_PATH_MAX
        return f"a DataDirectory this long (its UNIX sockets' paths are over {limit} bytes)"
    return ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict:
        return "an object"
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return "an object"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[tp]


def _convert(value: Any, tp: Any, where: str, warnings: list[str]) -> Any:
    origin = get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {json.dumps(value)}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{where}[{i}]", warnings) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {json.dumps(value)}")
        _, item = get_args(tp)
        return {str(k): _convert(v, item, f"{where}.{k}", warnings) for k, v in value.items()}
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {json.dumps(value)}")
        legacy = LEGACY_NOTIFY_KEYS if tp is NotifyEntry else frozenset()
        return _build(tp, value, where, warnings, legacy)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {json.dumps(value)}")


def _build(cls: type, data: dict, where: str, warnings: list[str], legacy: frozenset) -> Any:
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key in known:
            tp = hints[key]
            if key in ("MaxBatchTime", "Every"):
                kwargs[key] = parse_duration(value, path)
            elif key == "Workers":
                kwargs[key] = _workers(value, path)
            else:
                kwargs[key] = _convert(value, tp, path, warnings)
        elif key in legacy:
            if value in (False, 0, "", [], {}):
                warnings.append(Mapped(f"{path}: {json.dumps(value)}, off in the original too"))
            else:
                warnings.append(
                    f"{path}: key of the original tracker with no meaning here, ignored"
                )
        else:
            hint = _closest(key, known)
            raise ConfigError(f"{path}: unknown key{hint}")
    if cls is BatchSettings:
        kwargs["given"] = frozenset(kwargs)
    return cls(**kwargs)


def _closest(key: str, known: dict) -> str:
    lower = {k.lower(): k for k in known}
    if key.lower() in lower:
        return f' (did you mean "{lower[key.lower()]}"?)'
    return ""


HTTP_SERVERS = ("fast", "twisted")


def _validate(cfg: Config) -> None:
    if cfg.HTTPServer not in HTTP_SERVERS:
        raise ConfigError(
            f"HTTPServer: must be one of {', '.join(HTTP_SERVERS)}, got {cfg.HTTPServer!r}"
        )
    if cfg.ApiVersion < 0:
        raise ConfigError("ApiVersion: must be 0 or more")
    if cfg.IPMode not in IP_MODES:
        raise ConfigError(f"IPMode: must be one of {', '.join(IP_MODES)}, got {cfg.IPMode!r}")
    if cfg.Durability not in DURABILITY_MODES:
        raise ConfigError(
            f"Durability: must be one of {', '.join(DURABILITY_MODES)}, got {cfg.Durability!r}"
        )
    if cfg.SpoolMaxBytes < 4096:
        raise ConfigError("SpoolMaxBytes: must be at least 4096")
    if cfg.SpoolCommitWindowMs < 0:
        raise ConfigError("SpoolCommitWindowMs: must be 0 or more")
    if cfg.LogFormat not in ("text", "json"):
        raise ConfigError(f"LogFormat: must be text or json, got {cfg.LogFormat!r}")
    if cfg.ProxyPortRedirect and not re.fullmatch(r":\d{1,5}", cfg.ProxyPortRedirect):
        raise ConfigError(f'ProxyPortRedirect: expected ":PORT", got {cfg.ProxyPortRedirect!r}')
    for name in ("ProxyPort", "ProxyPortTLS", "ProxyExceptHTTP", "QueryPort"):
        value = getattr(cfg, name)
        if value:
            try:
                parse_listen(value)
            except ValueError as e:
                raise ConfigError(f"{name}: {e}") from None
    for i, entry in enumerate(cfg.Notify):
        if entry.Type not in NOTIFY_TYPES:
            raise ConfigError(
                f"Notify[{i}].Type: must be one of {', '.join(NOTIFY_TYPES)}, got {entry.Type!r}"
            )
        if entry.Type in ("clickhouse", "nats") and not entry.Hosts:
            raise ConfigError(f"Notify[{i}].Hosts: a {entry.Type} entry needs at least one host")
        if entry.Type == "clickhouse" and entry.Compression.lower() not in COMPRESSIONS:
            raise ConfigError(
                f"Notify[{i}].Compression: must be one of lz4, lz4hc, zstd or none, "
                f"got {entry.Compression!r}"
            )
        for kind in entry.ConsumeSubjects:
            if kind not in ("log", "count", "update"):
                raise ConfigError(
                    f"Notify[{i}].ConsumeSubjects.{kind}: must be log, count or update"
                )
    if sum(1 for n in cfg.Notify if n.Type == "nats" and n.JetStream and not n.Skip) > 1:
        raise ConfigError("Notify: only one nats entry can have JetStream (it is the spool)")
    _validate_facebook(cfg)
    for table, settings in cfg.Batching.items():
        if settings.Strategy not in STRATEGIES:
            raise ConfigError(
                f"Batching.{table}.Strategy: must be one of {', '.join(STRATEGIES)}, "
                f"got {settings.Strategy!r}"
            )
        if settings.MaxBatchSize < 1:
            raise ConfigError(f"Batching.{table}.MaxBatchSize: must be at least 1")
    _validate_edge(cfg)
    _validate_export(cfg)
    for name in (
        "MaxBodyBytes",
        "MaxBatchEvents",
        "MaxMessageBytes",
        "SessionMinutes",
        "MaxParamsKeys",
        "MaxParamsBytes",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: must be at least 1")
    _validate_urls(cfg)
    if cfg.MaxJSONDepth < 2:
        raise ConfigError("MaxJSONDepth: must be at least 2 (an event and its params)")
    if not 0 <= cfg.StoreNice <= 19:
        raise ConfigError(f"StoreNice: must be 0 to 19 (nice levels), got {cfg.StoreNice}")


def _validate_urls(cfg: Config) -> None:
    if not cfg.UrlFilter:
        return
    if not cfg.NormalizeURLs:
        raise ConfigError("UrlFilter: only applies with NormalizeURLs: true")
    try:
        pattern = re.compile(cfg.UrlFilter)
    except re.error as e:
        raise ConfigError(f"UrlFilter: not a valid regex: {e}") from None
    if not 0 <= cfg.UrlFilterMatchGroup <= pattern.groups:
        raise ConfigError(
            f"UrlFilterMatchGroup: UrlFilter has {pattern.groups} groups, "
            f"got {cfg.UrlFilterMatchGroup}"
        )


def _validate_facebook(cfg: Config) -> None:
    entries = [(i, n) for i, n in enumerate(cfg.Notify) if n.Type == "facebook" and not n.Skip]
    for i, entry in entries:
        where = f"Notify[{i}]"
        if not re.fullmatch(r"\d+", entry.PixelId):
            raise ConfigError(f"{where}.PixelId: a facebook entry needs its pixel id (digits)")
        if not entry.AccessToken:
            raise ConfigError(
                f"{where}.AccessToken: a facebook entry needs a Conversions API token"
            )
        if not entry.Events or not all(e.strip() for e in entry.Events):
            raise ConfigError(f'{where}.Events: list the enames to send (e.g. ["Purchase"])')
        if not 1 <= entry.BatchEvents <= 1000:
            raise ConfigError(f"{where}.BatchEvents: must be 1 to 1000 (Meta's limit)")
        if not re.fullmatch(r"v\d+\.\d+", entry.GraphVersion):
            raise ConfigError(f'{where}.GraphVersion: expected "vNN.N", got {entry.GraphVersion!r}')
        if not re.match(r"https?://[^/]+", entry.GraphURL):
            raise ConfigError(f"{where}.GraphURL: expected an http(s) URL, got {entry.GraphURL!r}")
        if entry.Timeout <= 0:
            raise ConfigError(f"{where}.Timeout: must be more than 0 seconds")
    if entries and any(n.Type == "nats" and n.JetStream and not n.Skip for n in cfg.Notify):
        raise ConfigError(
            "Notify: a facebook entry needs the local spool (or Durability memory); with "
            "JetStream as the spool it is not supported yet"
        )
    pixels = [n.PixelId for _, n in entries]
    if len(set(pixels)) != len(pixels):
        raise ConfigError("Notify: two facebook entries for one PixelId")


def _validate_export(cfg: Config) -> None:
    from sfpltracker.export import check_target

    export = cfg.Export
    if not export.Target:
        return
    why = check_target(export.Target)
    if why:
        raise ConfigError(f"Export.Target: {why}")
    if export.Format.lower() != "parquet":
        raise ConfigError(f'Export.Format: only "parquet" is supported, got {export.Format!r}')
    if export.Every < 1:
        raise ConfigError("Export.Every: must be at least 1 second")
    if not export.Tables:
        raise ConfigError('Export.Tables: list the tables to export (e.g. ["events"])')
    for name in export.Tables:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"Export.Tables: {name!r} is not a table name")
    if export.Endpoint and not re.match(r"https?://[^/]+/?$", export.Endpoint):
        raise ConfigError(
            f'Export.Endpoint: expected "http(s)://host:port", got {export.Endpoint!r}'
        )
    if export.MaxRowsPerFile < 1:
        raise ConfigError("Export.MaxRowsPerFile: must be at least 1")
    if cfg.store_entry().Type != "embedded":
        raise ConfigError(
            "Export: needs the embedded store (it follows the order chDB's one writer stores "
            "rows in); with a ClickHouse server use its own S3 export"
        )


ACME_CHALLENGES = ("auto", "http-01", "tls-alpn-01")


def _validate_edge(cfg: Config) -> None:
    if cfg.ACMEChallenge not in ACME_CHALLENGES:
        raise ConfigError(
            f"ACMEChallenge: must be one of {', '.join(ACME_CHALLENGES)}, got {cfg.ACMEChallenge!r}"
        )
    if cfg.LetsEncryptDomains and not cfg.ProxyPortTLS:
        raise ConfigError("LetsEncryptDomains: needs the TLS listener (ProxyPortTLS) to serve them")
    for domain in cfg.LetsEncryptDomains:
        if domain.startswith("*") or "/" in domain or ":" in domain or not domain.strip("."):
            raise ConfigError(
                f"LetsEncryptDomains: {domain!r} is not a host name (wildcards need dns-01, "
                "which is not supported)"
            )
    if cfg.ACMEChallenge == "http-01" and cfg.LetsEncryptDomains and not cfg.ProxyPort:
        raise ConfigError("ACMEChallenge: http-01 is answered on ProxyPort, which is disabled")
    for host, entry in cfg.Sites.items():
        for prefix, upstream in entry.Proxy.items():
            try:
                ProxyRoute.parse(prefix, upstream)
            except ValueError as e:
                raise ConfigError(f"Sites.{host}.Proxy.{prefix}: {e}") from None
        if entry.ProxyUrlFilter:
            try:
                re.compile(entry.ProxyUrlFilter)
            except re.error as e:
                raise ConfigError(f"Sites.{host}.ProxyUrlFilter: not a valid regex: {e}") from None
    if cfg.LoginFailureLimit < 0:
        raise ConfigError("LoginFailureLimit: must be 0 (off) or more")
    for name in (
        "ProxyConnectTimeoutSeconds",
        "ProxyTimeoutSeconds",
        "MaxConnections",
        "LoginFailureWindowSeconds",
    ):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be more than 0")


def parse_listen(value: str) -> tuple[str, int]:
    """``":8080"`` / ``"127.0.0.1:8123"`` / ``"8080"`` -> (interface, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected ":PORT" or "HOST:PORT", got {value!r}')
    return host, int(port)


def load_dict(data: dict, base_dir: str = ".", warnings: list[str] | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a JSON object")
    warnings = [] if warnings is None else warnings
    try:
        data = translate(data, warnings)  # the original tracker's keys, given their meaning
    except OriginalConfigError as e:
        raise ConfigError(str(e)) from None
    cfg = _build(Config, data, "", warnings, LEGACY_KEYS)
    cfg.base_dir = base_dir
    _apply_env(cfg)
    _validate(cfg)
    return cfg


def load(path: str | os.PathLike, warnings: list[str] | None = None) -> Config:
    """Read and validate a config file; ``ConfigError`` names the file and the key."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON: {e.msg} at line {e.lineno}") from None
    try:
        return load_dict(data, str(p.resolve().parent), warnings)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def _apply_fb_env(cfg: Config) -> None:
    """The original's ``FB_PIXEL``/``FB_TOKEN`` set the facebook entry's pixel and token; with
    no such entry they add one, sending the enames of ``FB_EVENTS`` (comma-separated)."""
    pixel, token = os.environ.get("FB_PIXEL"), os.environ.get("FB_TOKEN")
    if not pixel and not token:
        return
    entry = next((n for n in cfg.Notify if n.Type == "facebook"), None)
    if entry is None:
        events = [e.strip() for e in os.environ.get("FB_EVENTS", "").split(",") if e.strip()]
        if not events:
            raise ConfigError(
                "environment FB_PIXEL/FB_TOKEN: no facebook Notify entry; set FB_EVENTS too "
                "(the enames to send, comma-separated)"
            )
        entry = NotifyEntry(Type="facebook", Events=events)
        cfg.Notify.append(entry)
    if pixel:
        entry.PixelId = pixel.strip()
    if token:
        entry.AccessToken = token.strip()


def _apply_env(cfg: Config) -> None:
    """``SFPL_<Key>`` overrides a top-level scalar key (containers set ports and paths so)."""
    _apply_fb_env(cfg)
    for f in fields(Config):
        raw = os.environ.get(f"SFPL_{f.name}")
        if raw is None or f.metadata.get("internal"):
            continue
        where = f"environment SFPL_{f.name}"
        if f.name == "Workers":
            cfg.Workers = _workers(raw.strip(), where)
            continue
        tp = eval(f.type, globals()) if isinstance(f.type, str) else f.type  # noqa: S307
        if tp is str:
            value: Any = raw
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: not valid JSON: {raw!r}") from None
        setattr(cfg, f.name, _convert(value, tp, where, []))
