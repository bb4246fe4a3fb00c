"""Writes a small IP2Location DB11 ``.BIN`` in the format IP2Location documents and its readers use.

Layout (all integers little-endian, file offsets in the header 1-based, string pointers 0-based):

- header (64 bytes): db type (11), column count (8), year, month, day, IPv4 row count, IPv4 rows
  offset, IPv6 row count, IPv6 rows offset, IPv4 index offset (0: none), IPv6 index offset,
  product code (1 = IP2Location), license code, database size.
- IPv4 rows: ``ip_from`` (u32) then one 4-byte cell per column: country, region, city
  (string pointers), latitude, longitude (float32), zip, time zone (string pointers). A row
  covers ``[ip_from, next row's ip_from)``; rows cover the whole space, a final row closes it.
- IPv6 rows: the same with a 16-byte ``ip_from`` (four u32, least significant first).
- strings: a length byte then the bytes; the country cell points at the short code, and the
  long name follows it (``pointer + 3``).
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

DB_TYPE = 11
COLUMNS = 8  # ip_from, country, region, city, latitude, longitude, zip, time zone
HEADER = 64


def write_db11(path: Path, ranges: list[dict]) -> Path:
    """``ranges``: dicts with ``cidr`` and optional country, country_long, region, city, lat,
    lon, zip, tz. Space between them is filled with ``-`` (unknown) rows."""
    v4 = sorted((r for r in ranges if ipaddress.ip_network(r["cidr"]).version == 4), key=_start)
    v6 = sorted((r for r in ranges if ipaddress.ip_network(r["cidr"]).version == 6), key=_start)
    rows4 = _rows(v4, 32)
    rows6 = _rows(v6, 128)

    strings = bytearray()
    string_base = 0  # set once the row sizes are known
    offsets: dict[tuple[str, str], int] = {}

    def pointer(kind: str, text: str) -> int:
        key = (kind, text)
        if key not in offsets:
            offsets[key] = string_base + len(strings)
            data = text.encode("latin-1")
            strings.extend(bytes([len(data)]) + data)
        return offsets[key]

    row4_size = COLUMNS * 4
    row6_size = COLUMNS * 4 + 12
    ipv4_base = HEADER  # 0-based
    ipv6_base = ipv4_base + (len(rows4) + 1) * row4_size
    string_base = ipv6_base + (len(rows6) + 1) * row6_size

    def cells(rec: dict | None) -> bytes:
        rec = rec or {}
        short = rec.get("country", "-")
        country_ptr = pointer("country", short)
        # the long name must directly follow the short code
        if ("country_long", short) not in offsets:
            offsets[("country_long", short)] = pointer("long", rec.get("country_long", short))
        return struct.pack(
            "<IIIffII",
            country_ptr,
            pointer("s", rec.get("region", "-")),
            pointer("s", rec.get("city", "-")),
            float(rec.get("lat", 0.0)),
            float(rec.get("lon", 0.0)),
            pointer("s", rec.get("zip", "-")),
            pointer("s", rec.get("tz", "-")),
        )

    body4 = bytearray()
    for start, rec in rows4:
        body4 += struct.pack("<I", start) + cells(rec)
    body4 += struct.pack("<I", 2**32 - 1) + cells(None)  # closes the last range
    body6 = bytearray()
    for start, rec in rows6:
        body6 += _u128(start) + cells(rec)
    body6 += _u128(2**128 - 1) + cells(None)

    header = struct.pack(
        "<BBBBBIIIIIIBBB",
        DB_TYPE,
        COLUMNS,
        25,
        1,
        1,
        len(rows4),
        ipv4_base + 1,
        len(rows6),
        ipv6_base + 1,
        0,
        0,
        1,  # product code: IP2Location
        1,
        1,
    ).ljust(HEADER, b"\0")
    # the reader may read one cell past the closing row: pad the row areas generously
    data = header + bytes(body4) + bytes(body6) + bytes(strings) + b"\0" * 512
    assert len(header) + len(body4) == ipv6_base and ipv6_base + len(body6) == string_base
    path.write_bytes(data)
    return path


def _start(rec: dict) -> int:
    return int(ipaddress.ip_network(rec["cidr"]).network_address)


def _rows(ranges: list[dict], bits: int) -> list[tuple[int, dict | None]]:
    """Rows covering the whole space: each range, with unknown rows in the gaps."""
    rows: list[tuple[int, dict | None]] = []
    cursor = 0
    for rec in ranges:
        net = ipaddress.ip_network(rec["cidr"])
        first, last = int(net.network_address), int(net.broadcast_address)
        if first > cursor:
            rows.append((cursor, None))
        rows.append((first, rec))
        cursor = last + 1
    if cursor < 2**bits - 1:
        rows.append((cursor, None))
    return rows


def _u128(value: int) -> bytes:
    return b"".join(struct.pack("<I", (value >> (32 * i)) & 0xFFFFFFFF) for i in range(4))
