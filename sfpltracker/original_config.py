"""The original tracker's ``config.json`` keys, given their meaning here.

``translate(data, notes)`` runs before the typed load (``config.load_dict``): it rewrites the
original's keys into this gateway's and appends one line per key to ``notes`` - a ``Mapped``
(logged as info) when the key keeps its meaning, a plain string (logged as a warning) when it
has none here or cannot keep it. Keys this gateway declares itself are never overwritten: a
key given explicitly wins over the original key that would map onto it (and the note says so).

What is mapped (README "Coming from the original tracker" has the table):

- ``null`` anywhere = absent (Go decoded it into the zero value);
- ``Notify[].Service`` -> ``Type``; ``Host`` + ``Port`` -> ``Hosts``; ``Timeout`` of an entry
  written with ``Service`` is the original's milliseconds; ``EnableCompression`` -> lz4;
  the entry's ``BatchingEnabled``/``MaxBatchSize``/``MaxBatchTime``/``BatchFlushInterval`` ->
  ``Batching.events``; ``Prune`` rules -> ``DataRetentionDays``; entries the original disabled
  with a trailing ``_`` are skipped; services that do not exist here (cassandra, duckdb,
  facebook, http) are skipped with a warning, or refused when ``Critical``;
- ``ProxyUrl`` / ``ProxyUrlFilter`` / ``IgnoreProxyOptions`` / ``ProxyDailyLimit`` -> a
  ``Sites["*"]`` proxy route for ``/api/`` with its filter, ``AnswerOptions``, ``DailyLimit``;
- ``MaximumConnections`` -> ``MaxConnections``, ``ConnectionTimeout`` ->
  ``IdleTimeoutSeconds``, ``ProxyPortRedirect`` -> ``ForceHTTPS``;
- ``AnonymizeIP`` / ``UseRemoveIP`` -> ``IPMode``; ``UseGeoIP`` + a ``.BIN``/``.mmdb`` in
  ``IPv6GeoIPZip``/``IPv4GeoIPZip`` -> ``GeoIPDatabase``;
- the file is the original's (``ORIGINAL_ONLY_KEYS``, or an entry with ``Service``) ->
  ``NormalizeURLs: true`` (its ``UrlFilter``/``UrlFilterMatchGroup`` kept), unless given;
- a ``Consume[]`` nats entry -> ``Consume: true`` + ``ConsumeSubjects`` (its ``Filter``) on the
  Notify nats entry with the same ``Hosts``, else a nats entry with ``Publish: false``.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any


class Mapped(str):
    """A note saying an original key kept its meaning (logged as info, not as a warning)."""


class OriginalConfigError(Exception):
    """An original entry that cannot keep its meaning here (config.py wraps it in ConfigError)."""


# Notify/Consume services of the original with no counterpart here.
FOREIGN_SERVICES = ("cassandra", "duckdb", "facebook", "http")

# Original keys whose job is done another way here: accepted with an info line, not a warning.
SUBSUMED = {
    "GeoIPVersion": "steered the original's CSV import; GeoIPDatabase is read as it is",
    "IPv4GeoIPCSVDest": "steered the original's CSV import; GeoIPDatabase is read as it is",
    "IPv6GeoIPCSVDest": "steered the original's CSV import; GeoIPDatabase is read as it is",
    "TempDirectory": "held the original's unzipped GeoIP CSVs; nothing is unzipped here",
    "ReadHeaderTimeoutSeconds": "covered by ReadTimeoutSeconds (the whole request) here",
    "NodeId": "set by the original at start-up, not read from the file",
    "ConfigFile": "set by the original at start-up, not read from the file",
    "IsUrlFiltered": "set by the original at start-up, not read from the file",
    "ProxyDailyLimitCheck": "set by the original at start-up, not read from the file",
    "API": "set by the original at start-up, not read from the file",
    "Note": "a comment",
}

# Keys only the original's config files have (its config.json, its README's sample): one of
# them, or a Notify/Consume entry written with ``Service``, marks the file as the original's.
ORIGINAL_ONLY_KEYS = frozenset(
    """MaximumConnections UseRemoveIP AnonymizeIP UseGeoIP IPv4GeoIPZip IPv6GeoIPZip
    GeoIPVersion SchemaVersion UrlFilter UrlFilterMatchGroup ProxyUrl ProxyUrlFilter
    IgnoreInsecureTLS ProxyDailyLimit ProxyDailyLimitChecker PruneOldData ConnectionTimeout
    Consume AccountHashMixer CFlagsMarketing CFlagsIgnore UseRegionDescriptions TempDirectory
    PruneLogsTTL PruneLimit""".split()
)

_ENTRY_BATCH_KEYS = {
    "MaxBatchSize": "MaxBatchSize",
    "MaxBatchTime": "MaxBatchTime",
    "BatchFlushInterval": "MaxBatchTime",
}


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _show(value: Any) -> str:
    return json.dumps(value)


class _Translator:
    def __init__(self, data: dict, notes: list[str]):
        self.given = set(data)  # keys the file sets itself: never overwritten by a mapping
        self.out = data
        self.notes = notes

    def mapped(self, text: str) -> None:
        self.notes.append(Mapped(f"mapped {text}"))

    def put(self, key: str, value: Any, source: str, why: str = "") -> None:
        """``out[key] = value`` unless the file gives ``key`` itself."""
        if key in self.given:
            self.notes.append(Mapped(f"{source}: not mapped, {key} is given explicitly"))
            return
        self.out[key] = value
        self.mapped(f"{source} -> {key}: {_show(value)}{why}")

    # -- top level ---------------------------------------------------------------------------

    def is_original(self) -> bool:
        out = self.out
        if any(key in out for key in ORIGINAL_ONLY_KEYS):
            return True
        entries = [e for k in ("Notify", "Consume") if isinstance(out.get(k), list) for e in out[k]]
        return any(isinstance(e, dict) and "Service" in e for e in entries)

    def run(self) -> dict:
        out = self.out
        if self.is_original():
            self._urls()
        # Entries first: their Prune rules may set DataRetentionDays, which PruneOldData names.
        if "Notify" in out and isinstance(out["Notify"], list):
            out["Notify"] = self._notify(out["Notify"])
        if "Consume" in out and isinstance(out["Consume"], list):
            self._consume(out.pop("Consume"))
        self._numbers()
        self._proxy()
        self._ip_mode()
        self._geoip()
        if "ProxyPortRedirect" in out and "ForceHTTPS" not in self.given:
            # The original's ProxyPort never served the API: it only redirected to https.
            out["ForceHTTPS"] = True
            self.mapped(
                "ProxyPortRedirect -> ForceHTTPS: true (ProxyPort answers 301 to https, "
                f"port {out['ProxyPortRedirect'] or 'of ProxyPortTLS'}, as the original's did)"
            )
        if (
            out.get("UseLocalTLS") is False
            and out.get("Domains")
            and "LetsEncryptDomains" not in out
        ):
            # Not done implicitly: Domains often holds names no CA will certify (localhost).
            self.notes.append(
                "UseLocalTLS: false made the original get Let's Encrypt certificates for "
                "Domains; here list the names in LetsEncryptDomains"
            )
        if "PruneOldData" in out:
            on = out.pop("PruneOldData")
            days = out.get("DataRetentionDays", 0)
            self.notes.append(
                Mapped(
                    f"mapped PruneOldData: {_show(on)} -> `python -m sfpltracker prune` deletes "
                    f"rows older than DataRetentionDays ({days or 'keep forever'}); run it from "
                    "cron"
                )
                if on
                else Mapped("PruneOldData: false, nothing is pruned unless the prune command runs")
            )
        for key, why in SUBSUMED.items():
            if key in out:
                out.pop(key)
                self.notes.append(Mapped(f"{key}: {why}"))
        return out

    def _urls(self) -> None:
        """The original stored url/last normalised (reference b.6): so do its users' files,
        unless they say ``NormalizeURLs`` themselves."""
        out = self.out
        url_filter = out.get("UrlFilter", "")
        if url_filter:
            try:
                re.compile(url_filter)
            except re.error as e:
                out.pop("UrlFilter")
                out.pop("UrlFilterMatchGroup", None)
                self.notes.append(
                    f"UrlFilter: {_show(url_filter)} is not a regex Python reads ({e}); "
                    "URLs are normalised without it"
                )
                url_filter = ""
        if "NormalizeURLs" in self.given:
            if not out["NormalizeURLs"]:
                for key in ("UrlFilter", "UrlFilterMatchGroup"):
                    if key in out:
                        out.pop(key)
                        self.notes.append(Mapped(f"{key}: not used, NormalizeURLs is false"))
            return
        out["NormalizeURLs"] = True
        self.mapped(
            "the original's config file -> NormalizeURLs: true (url and last stored as the "
            "original stored them: lower-cased, //host/path, no query)"
        )
        if url_filter:
            self.mapped(
                f"UrlFilter + UrlFilterMatchGroup ({out.get('UrlFilterMatchGroup', 0)}): a URL "
                "it matches is stored as that group (the original's config: the path of its "
                "own sites)"
            )

    def _numbers(self) -> None:
        out = self.out
        if "MaximumConnections" in out:
            n = out.pop("MaximumConnections")
            if isinstance(n, int) and n > 0:
                self.put("MaxConnections", n, "MaximumConnections")
            else:
                self.notes.append(
                    f"MaximumConnections: {_show(n)} made the original answer 503 on every "
                    "route; MaxConnections keeps its default here"
                )
        if "ProxyDailyLimitChecker" in out:
            out.pop("ProxyDailyLimitChecker")
            self.notes.append(
                Mapped("ProxyDailyLimitChecker: the daily limit is counted in memory here")
            )
        if "ConnectionTimeout" in out:
            self.put("IdleTimeoutSeconds", out.pop("ConnectionTimeout"), "ConnectionTimeout")

    def _proxy(self) -> None:
        out = self.out
        url = out.pop("ProxyUrl", "")
        url_filter = out.pop("ProxyUrlFilter", "")
        forward_options = out.pop("IgnoreProxyOptions", False)
        daily_limit = out.pop("ProxyDailyLimit", 0)
        if not url:
            if url_filter:
                self.notes.append("ProxyUrlFilter: ignored, there is no ProxyUrl to proxy")
            if forward_options:
                self.notes.append("IgnoreProxyOptions: ignored, there is no ProxyUrl to proxy")
            if daily_limit:
                self.notes.append("ProxyDailyLimit: ignored, there is no ProxyUrl to proxy")
            return
        sites = out.setdefault("Sites", {})
        if not isinstance(sites, dict):
            return  # the typed load reports the type error
        site = sites.setdefault("*", {})
        proxy = site.setdefault("Proxy", {})
        if "/api/" in proxy:
            self.notes.append(Mapped('ProxyUrl: not mapped, Sites["*"].Proxy["/api/"] is given'))
            return
        proxy["/api/"] = url
        self.mapped(f'ProxyUrl -> Sites["*"].Proxy["/api/"]: {_show(url)} (paths unchanged)')
        if "AnswerOptions" not in site:
            # The original answered /api/ preflights itself unless IgnoreProxyOptions.
            site["AnswerOptions"] = not forward_options
            self.mapped(
                f"IgnoreProxyOptions: {_show(bool(forward_options))} -> "
                f'Sites["*"].AnswerOptions: {_show(not forward_options)}'
            )
        if not daily_limit:
            self.notes.append(Mapped("ProxyDailyLimit: 0, no daily limit on /api/, as here"))
        elif "DailyLimit" not in site:
            site["DailyLimit"] = daily_limit
            self.mapped(
                f'ProxyDailyLimit -> Sites["*"].DailyLimit: {_show(daily_limit)} (/api/ requests '
                "per client IP per UTC day, then 429)"
            )
        if url_filter and "ProxyUrlFilter" not in site:
            site["ProxyUrlFilter"] = url_filter
            self.mapped(
                f'ProxyUrlFilter -> Sites["*"].ProxyUrlFilter: {_show(url_filter)} (proxied '
                "requests whose path it does not match are tracked)"
            )

    def _ip_mode(self) -> None:
        out = self.out
        modes = {}
        for key, mode_if_true in (("AnonymizeIP", "truncate"), ("UseRemoveIP", "none")):
            if key not in out:
                continue
            on = out.pop(key)
            if on:
                modes[key] = mode_if_true
            else:
                # Storing raw IPs is never switched on implicitly: privacy stays the default.
                self.notes.append(
                    f"{key}: false stored raw IPs in the original; here IPMode stays "
                    f"{out.get('IPMode', 'truncate')!r} (set IPMode: full to store them)"
                )
        if not modes:
            return
        if "IPMode" in self.given:
            for key in modes:
                self.notes.append(Mapped(f"{key}: not mapped, IPMode is given explicitly"))
            return
        # The stricter wins when both are given: UseRemoveIP stores no IP at all.
        mode = "none" if "none" in modes.values() else "truncate"
        out["IPMode"] = mode
        for key, wanted in modes.items():
            what = "no IP stored" if wanted == "none" else "IPv4 /24, IPv6 /48"
            self.mapped(f"{key}: true -> IPMode: {_show(mode)} ({what})")

    def _geoip(self) -> None:
        out = self.out
        use = out.pop("UseGeoIP", None)
        zips = [(k, out.pop(k)) for k in ("IPv6GeoIPZip", "IPv4GeoIPZip") if k in out]
        regions = out.pop("UseRegionDescriptions", None)
        if regions is False:
            self.notes.append(
                "UseRegionDescriptions: false is not supported, GeoIP region and city are kept"
            )
        elif regions is not None:
            self.notes.append(Mapped("UseRegionDescriptions: true, as here"))
        if not use:
            if use is not None:
                self.notes.append(Mapped("UseGeoIP: false -> no GeoIPDatabase (GeoIP off)"))
            return
        # The IPv6 database of IP2Location holds the IPv4 ranges too: prefer it.
        for key, path in zips:
            if isinstance(path, str) and path.lower().endswith((".bin", ".mmdb")):
                self.put("GeoIPDatabase", path, f"UseGeoIP + {key}")
                return
        if "GeoIPDatabase" in self.given:
            self.notes.append(Mapped("UseGeoIP: true, read from GeoIPDatabase"))
            return
        self.notes.append(
            "UseGeoIP: the original's CSV zips ("
            + ", ".join(f"{k}={v}" for k, v in zips)
            + ") are not read here; set GeoIPDatabase to an IP2Location .BIN (e.g. "
            "IP2LOCATION-LITE-DB11.BIN) or a MaxMind .mmdb. GeoIP is off until then"
        )

    # -- Notify / Consume --------------------------------------------------------------------

    def _notify(self, entries: list) -> list:
        kept = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                kept.append(entry)  # the typed load reports it
                continue
            entry = self._entry(f"Notify[{i}]", entry)
            if entry is not None:
                kept.append(entry)
        return kept

    def _entry(self, where: str, entry: dict) -> dict | None:
        original_style = "Service" in entry
        kind_from_service = False
        if original_style:
            service = entry.pop("Service")
            if "Type" in entry:
                self.notes.append(f"{where}.Service: ignored, Type is given")
            else:
                entry["Type"] = service
                kind_from_service = True
        kind = entry.get("Type", "embedded")
        if not isinstance(kind, str):
            return entry
        if kind.endswith("_"):
            self.notes.append(
                Mapped(f"{where}: {kind!r} is disabled (trailing _), skipped as the original did")
            )
            return None
        # The Conversions API exists here as {"Type": "facebook", ...} (docs/outputs.md); the
        # original's entry (Service, Context = pixel, Key = token, no Events) is still skipped.
        # So is the original's duckdb entry (its file holds the original's tables); the DuckDB
        # store here is {"Type": "duckdb", "File": ...} (docs/duckdb.md).
        new_style = kind in ("facebook", "duckdb") and not original_style
        if not new_style and (
            kind.lower() in FOREIGN_SERVICES or (original_style and kind not in _STORE_OR_NATS)
        ):
            if entry.get("Critical"):
                raise OriginalConfigError(
                    f"{where}: a {kind} service is not supported here, and the entry is "
                    "Critical (the original would not start without it): remove it, or disable "
                    "it with a trailing _ in its Service"
                )
            self.notes.append(
                f"{where}: a {kind} service is not supported here; entry skipped (events go "
                "to the other Notify stores, or to the embedded store when there is none)"
            )
            return None
        entry["Type"] = kind.lower()
        if kind_from_service:
            self.mapped(f"{where}.Service -> Type: {_show(kind)}")
        if "Host" in entry or "Port" in entry:
            host, port = entry.pop("Host", "localhost"), entry.pop("Port", 9000)
            hosts = [f"{host}:{port}"]
            if "Hosts" in entry:
                self.notes.append(Mapped(f"{where}.Host/Port: not mapped, Hosts is given"))
            else:
                entry["Hosts"] = hosts
                self.mapped(f"{where}.Host + Port -> Hosts: {_show(hosts)}")
        if original_style and isinstance(entry.get("Timeout"), int | float):
            # The original's Timeout is milliseconds (ClickHouse dial timeout).
            ms = entry["Timeout"]
            entry["Timeout"] = ms / 1000
            self.mapped(f"{where}.Timeout: {ms} ms -> {ms / 1000} s")
        if entry["Type"] == "nats" and "Context" in entry and "Subject" not in entry:
            entry["Subject"] = entry.pop("Context")
            self.mapped(
                f"{where}.Context -> Subject: {_show(entry['Subject'])} (the original never "
                "connected a Notify nats entry; here events are published)"
            )
        if "EnableCompression" in entry:
            on = entry.pop("EnableCompression")
            if on and "Compression" not in entry:
                entry["Compression"] = "lz4"
                self.mapped(f'{where}.EnableCompression: true -> Compression: "lz4"')
            else:
                self.notes.append(Mapped(f"{where}.EnableCompression: {_show(on)}, as given"))
        self._entry_batching(where, entry)
        self._prune(where, entry)
        return entry

    def _entry_batching(self, where: str, entry: dict) -> None:
        """The entry's batching keys describe the events table (the bulk of every store)."""
        batching = self.out.setdefault("Batching", {})
        if not isinstance(batching, dict):
            return
        events = batching.setdefault("events", {})
        if not isinstance(events, dict):
            return
        explicit = set(events)
        if "BatchingEnabled" in entry:
            on = entry.pop("BatchingEnabled")
            if on:
                self.notes.append(Mapped(f"{where}.BatchingEnabled: true, batching is on here"))
            elif "Strategy" in explicit:
                self.notes.append(Mapped(f"{where}.BatchingEnabled: not mapped, Strategy given"))
            else:
                events["Strategy"] = "immediate"
                self.mapped(
                    f'{where}.BatchingEnabled: false -> Batching.events.Strategy: "immediate"'
                )
        for key, target in _ENTRY_BATCH_KEYS.items():
            if key not in entry:
                continue
            value = entry.pop(key)
            if target in explicit:
                self.notes.append(
                    Mapped(f"{where}.{key}: not mapped, Batching.events.{target} given")
                )
                continue
            events[target] = value
            explicit.add(target)
            self.mapped(f"{where}.{key} -> Batching.events.{target}: {_show(value)}")
        if not events:
            batching.pop("events")
        if not batching:
            self.out.pop("Batching")

    def _prune(self, where: str, entry: dict) -> None:
        rules = entry.pop("Prune", None)
        if not isinstance(rules, list) or not rules:
            return
        days = []
        for j, rule in enumerate(rules):
            if not isinstance(rule, dict):
                continue
            at = f"{where}.Prune[{j}]"
            ttl = rule.get("TTL")
            table = rule.get("Table", "?")
            if not isinstance(ttl, int | float) or ttl <= 0:
                self.notes.append(f"{at}: no TTL, ignored")
            elif rule.get("ClearAll"):
                days.append(math.ceil(ttl / 86400))
            else:
                cleared = [f.get("Id") for f in rule.get("Fields", []) if isinstance(f, dict)]
                if set(cleared) <= {"ip"}:
                    self.notes.append(
                        Mapped(
                            f"{at}: clearing ip after {ttl} s in {table} is not needed, raw IPs "
                            "are never stored here (IPMode)"
                        )
                    )
                else:
                    self.notes.append(
                        f"{at}: clearing {', '.join(map(str, cleared))} in {table} after {ttl} s "
                        "is not supported (only whole rows are pruned, DataRetentionDays)"
                    )
        if days:
            self.put("DataRetentionDays", min(days), f"{where}.Prune (ClearAll rules)")

    def _consume(self, entries: list) -> None:
        """A ``nats`` Consume entry: its Filter subjects consumed into logs / counters /
        updates (notify/consumer.py), on the Notify nats entry with the same Hosts or on an
        entry of its own that publishes nothing (the original's consumer only consumed)."""
        for i, entry in enumerate(entries):
            where = f"Consume[{i}]"
            service = entry.get("Service", "?") if isinstance(entry, dict) else "?"
            if isinstance(service, str) and service.endswith("_"):
                self.notes.append(Mapped(f"{where}: {service!r} is disabled, skipped"))
            elif service != "nats" or not isinstance(entry, dict):
                self.notes.append(
                    f"{where}: consuming from {service} is not supported here; skipped (only "
                    "nats, as in the original)"
                )
            else:
                self._consume_nats(where, entry)

    def _consume_nats(self, where: str, entry: dict) -> None:
        subjects: dict[str, list[str]] = {}
        for j, f in enumerate(entry.pop("Filter", None) or []):
            alias = f.get("Alias") if isinstance(f, dict) else None
            subject = f.get("Id") if isinstance(f, dict) else None
            if alias not in CONSUME_KINDS or not isinstance(subject, str) or not subject:
                self.notes.append(
                    f"{where}.Filter[{j}]: Alias must be log, count or update with an Id "
                    "(the subject); ignored"
                )
                continue
            subjects.setdefault(alias, []).append(subject)
        if not subjects:
            self.notes.append(f"{where}: no Filter subjects, nothing to consume; skipped")
            return
        entry.pop("Service")
        hosts = entry.get("Hosts")
        notify = self.out.setdefault("Notify", [])
        if not isinstance(notify, list):
            return
        same = next(
            (
                n
                for n in notify
                if isinstance(n, dict) and n.get("Type") == "nats" and n.get("Hosts") == hosts
            ),
            None,
        )
        if same is not None:
            same["Consume"], same["ConsumeSubjects"] = True, subjects
            self.mapped(
                f"{where} -> Consume: true and ConsumeSubjects: {_show(subjects)} on the Notify "
                f"nats entry with Hosts {_show(hosts)}"
            )
            return
        if isinstance(entry.get("Timeout"), int | float):
            entry["Timeout"] = entry["Timeout"] / 1000  # the original's milliseconds
        notify.append({**entry, "Type": "nats", "Consume": True, "Publish": False,
                       "ConsumeSubjects": subjects})  # fmt: skip
        self.mapped(
            f"{where} -> Notify[{len(notify) - 1}]: a nats entry with Consume: true, "
            f"ConsumeSubjects: {_show(subjects)}, Publish: false (events are not published)"
        )


CONSUME_KINDS = ("log", "count", "update")  # the original's Filter aliases (notify/consumer.py)


_STORE_OR_NATS = ("embedded", "clickhouse", "nats")


def translate(data: dict, notes: list[str]) -> dict:
    """A copy of ``data`` with the original's keys rewritten; one note per key in ``notes``."""
    return _Translator(_drop_nulls(copy.deepcopy(data)), notes).run()
