"""GeoIP: an IP2Location ``.BIN`` or a MaxMind ``.mmdb`` database, chosen by file type.

The database is a local file named by ``GeoIPDatabase``; nothing is downloaded at run time.
Lookups run on the full client IP before ``IPMode`` anonymises it (API.md section 4), fill only
the fields the client did not send, and keep nothing else: the IP itself never reaches a row
through GeoIP.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from sfpltracker.ingest.request import RequestInfo

MMDB_MARKER = b"\xab\xcd\xefMaxMind.com"


class GeoIPError(Exception):
    """The configured database cannot be used; the message names the file."""


@dataclass
class GeoRecord:
    """What ``/ppi/geoip`` answers and what enrichment may copy into a row."""

    ip: str
    country: str = ""  # ISO 3166-1 alpha-2, upper case
    region: str = ""  # the region's name (as the original stored it)
    city: str = ""
    lat: float = 0.0
    lon: float = 0.0
    zip: str = ""
    tz: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _public(ip: str) -> bool:
    """Private, loopback and reserved addresses are in no GeoIP database: skip the lookup."""
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


class MaxMindReader:
    """MaxMind GeoIP2/GeoLite2 City or Country ``.mmdb`` (through ``maxminddb``)."""

    kind = "maxmind"

    def __init__(self, path: Path):
        import maxminddb

        self.path = path
        self._db = maxminddb.open_database(str(path))

    def lookup(self, ip: str) -> GeoRecord | None:
        data = self._db.get(ip)
        if not isinstance(data, dict):
            return None
        country = (data.get("country") or data.get("registered_country") or {}).get("iso_code", "")
        subdivisions = data.get("subdivisions") or [{}]
        location = data.get("location") or {}
        record = GeoRecord(
            ip=ip,
            country=(country or "").upper(),
            region=_name(subdivisions[0]),
            city=_name(data.get("city") or {}),
            lat=float(location.get("latitude") or 0.0),
            lon=float(location.get("longitude") or 0.0),
            zip=str((data.get("postal") or {}).get("code", "")),
            tz=str(location.get("time_zone", "")),
        )
        return record if record.country or record.city else None

    def close(self) -> None:
        self._db.close()


def _name(entry: dict) -> str:
    names = entry.get("names") or {}
    return str(names.get("en") or next(iter(names.values()), ""))


class IP2LocationReader:
    """IP2Location ``.BIN`` (DB1 ... DB26, LITE or commercial; through ``IP2Location``)."""

    kind = "ip2location"

    def __init__(self, path: Path):
        import IP2Location

        self.path = path
        _check_bin_header(path)
        try:
            self._db = IP2Location.IP2Location(str(path))
            self._db.get_all("1.1.1.1")  # a corrupt body fails here, not on the first event
        except (ValueError, struct.error, IndexError) as e:
            raise GeoIPError(
                f"GeoIPDatabase: {path} is not a usable IP2Location BIN: {e}"
            ) from None

    def lookup(self, ip: str) -> GeoRecord | None:
        rec = self._db.get_all(ip)
        if rec is None:
            return None
        country = _field(rec.country_short)
        if not country or " " in country:  # "INVALID IP ADDRESS", "IPV6 ADDRESS MISSING ..."
            return None
        return GeoRecord(
            ip=ip,
            country=country.upper(),
            region=_field(rec.region),
            city=_field(rec.city),
            lat=_number(rec.latitude),
            lon=_number(rec.longitude),
            zip=_field(rec.zipcode),
            tz=_field(rec.timezone),
        )

    def close(self) -> None:
        self._db.close()


def _check_bin_header(path: Path) -> None:
    """The header's counts and offsets must fit the file (the reader does not check)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) < 32:
        raise GeoIPError(f"GeoIPDatabase: {path} is too short for an IP2Location BIN")
    db_type, columns = head[0], head[1]
    v4_count, v4_addr, v6_count, v6_addr, v4_index, v6_index = struct.unpack("<6I", head[5:29])
    fits = (
        1 <= db_type <= 26
        and 2 <= columns <= 40
        and v4_addr + v4_count * columns * 4 <= size + 1
        and v6_addr + v6_count * (columns * 4 + 12) <= size + 1
        and v4_index < size
        and v6_index < size
    )
    if not fits:
        raise GeoIPError(f"GeoIPDatabase: {path} is neither a MaxMind DB nor an IP2Location BIN")


def _field(value) -> str:
    """IP2Location writes ``-`` for unknown and a notice for fields not in this DB type."""
    if not isinstance(value, str) or value == "-" or "unavailable" in value.lower():
        return ""
    return value


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class GeoIP:
    """A database plus a small cache of recent lookups (kept in memory only)."""

    def __init__(self, reader, cache_size: int = 4096):
        self.reader = reader
        self.lookup = functools.lru_cache(maxsize=cache_size)(self._lookup)

    @property
    def kind(self) -> str:
        return self.reader.kind

    def _lookup(self, ip: str) -> GeoRecord | None:
        if not _public(ip):
            return None
        try:
            return self.reader.lookup(ip)
        except (ValueError, struct.error, IndexError):  # a bad record: no geo for this one
            return None

    def close(self) -> None:
        self.lookup.cache_clear()
        self.reader.close()


def open_geoip(path: str | Path) -> GeoIP:
    """Open ``path`` with the reader its content calls for (MaxMind marker, else IP2Location)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - 128 * 1024))
            tail = f.read()
    except OSError as e:
        raise GeoIPError(f"GeoIPDatabase: cannot read {path}: {e.strerror}") from None
    try:
        if MMDB_MARKER in tail:
            return GeoIP(MaxMindReader(path))
        return GeoIP(IP2LocationReader(path))
    except GeoIPError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise GeoIPError(f"GeoIPDatabase: cannot open {path}: {e}") from None


class GeoEnricher:
    """Fills ``country``, ``region``, ``city``, ``zip``, ``lat``/``lon`` the client did not send.

    Client values win (the original's order: GeoIP, then the explicit ``country``). Server
    events (``/str/``) are not enriched: their IP is the site's backend, not the visitor.
    """

    def __init__(self, geoip: GeoIP):
        self.geoip = geoip

    def __call__(self, row: dict, req: RequestInfo) -> None:
        if row.get("server") or not req.ip:
            return
        if all(row.get(k) for k in ("country", "region", "city", "zip")) and row.get("lat"):
            return
        record = self.geoip.lookup(req.ip)
        if record is None:
            return
        for key in ("country", "region", "city", "zip"):
            value = getattr(record, key)
            if value and not row.get(key):
                row[key] = value
        if record.lat and record.lon and not row.get("lat") and not row.get("lon"):
            row["lat"], row["lon"] = record.lat, record.lon
