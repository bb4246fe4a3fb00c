"""GeoIP against real databases: MaxMind's test ``.mmdb`` files (tests/data/maxmind) and an
IP2Location DB11 ``.BIN`` written by ``tests/ip2location_bin.py`` in the documented format."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfpltracker.ingest.request import RequestInfo
from sfpltracker.privacy.geoip import GeoEnricher, GeoIPError, open_geoip
from tests.ip2location_bin import write_db11

DATA = Path(__file__).parent / "data" / "maxmind"
CITY_MMDB = DATA / "GeoIP2-City-Test.mmdb"
COUNTRY_MMDB = DATA / "GeoLite2-Country-Test.mmdb"

BIN_RANGES = [
    {
        "cidr": "81.2.69.0/24",
        "country": "GB",
        "country_long": "United Kingdom of Great Britain and Northern Ireland",
        "region": "England",
        "city": "London",
        "lat": 51.50853,
        "lon": -0.12574,
        "zip": "EC1A",
        "tz": "+01:00",
    },
    {
        "cidr": "216.160.83.0/24",
        "country": "US",
        "region": "California",
        "city": "San Jose",
        "lat": 37.33939,
        "lon": -121.89496,
        "zip": "95101",
        "tz": "-07:00",
    },
    {"cidr": "177.0.0.0/16", "country": "BR", "region": "Sao Paulo", "city": "Sao Paulo"},
    {
        "cidr": "2a02:8070::/32",
        "country": "DE",
        "region": "Berlin",
        "city": "Berlin",
        "lat": 52.52437,
        "lon": 13.41053,
        "zip": "10115",
        "tz": "+02:00",
    },
]


def write_test_bin(path: Path) -> Path:
    return write_db11(path, BIN_RANGES)


def test_maxmind_city_database():
    geo = open_geoip(CITY_MMDB)
    assert geo.kind == "maxmind"
    london = geo.lookup("81.2.69.142")
    assert (london.country, london.region, london.city) == ("GB", "England", "London")
    assert (london.lat, london.lon, london.tz) == (51.5142, -0.0931, "Europe/London")
    milton = geo.lookup("216.160.83.56")
    assert (milton.country, milton.region, milton.city, milton.zip) == (
        "US",
        "Washington",
        "Milton",
        "98354",
    )
    japan = geo.lookup("2001:218::1")  # IPv6
    assert japan.country == "JP" and japan.city == ""
    assert geo.lookup("8.8.8.8") is None  # not in the test database
    assert geo.lookup("127.0.0.1") is None and geo.lookup("10.1.2.3") is None  # never looked up


def test_maxmind_country_database():
    geo = open_geoip(COUNTRY_MMDB)
    record = geo.lookup("89.160.20.112")
    assert record.country == "SE" and record.city == "" and record.lat == 0.0


def test_ip2location_bin_database(tmp_path):
    geo = open_geoip(write_test_bin(tmp_path / "IP2LOCATION-LITE-DB11.BIN"))
    assert geo.kind == "ip2location"
    london = geo.lookup("81.2.69.142")
    assert (london.country, london.region, london.city, london.zip, london.tz) == (
        "GB",
        "England",
        "London",
        "EC1A",
        "+01:00",
    )
    assert london.lat == pytest.approx(51.50853, abs=1e-4)
    assert geo.lookup("216.160.83.1").city == "San Jose"
    assert geo.lookup("177.0.255.255").country == "BR"
    assert geo.lookup("177.1.0.0") is None  # just past the range: an unknown ("-") row
    berlin = geo.lookup("2a02:8070:1234::1")
    assert (berlin.country, berlin.city, berlin.zip) == ("DE", "Berlin", "10115")
    assert geo.lookup("2a02:8071::1") is None
    assert geo.lookup("8.8.8.8") is None


def test_the_reader_is_chosen_by_content_not_name(tmp_path):
    disguised_bin = write_test_bin(tmp_path / "geo.mmdb")
    assert open_geoip(disguised_bin).kind == "ip2location"
    disguised_mmdb = tmp_path / "geo.BIN"
    disguised_mmdb.write_bytes(CITY_MMDB.read_bytes())
    assert open_geoip(disguised_mmdb).kind == "maxmind"
    junk = tmp_path / "junk.BIN"
    junk.write_bytes(b"\x01\x02" * 100)
    with pytest.raises(GeoIPError):
        open_geoip(junk).lookup("81.2.69.142")
    with pytest.raises(GeoIPError, match="cannot read"):
        open_geoip(tmp_path / "missing.BIN")


def test_enrichment_fills_only_what_the_client_did_not_send(tmp_path):
    enrich = GeoEnricher(open_geoip(CITY_MMDB))
    req = RequestInfo(ip="81.2.69.142")
    row = {"server": 0}
    enrich(row, req)
    assert row == {
        "server": 0,
        "country": "GB",
        "region": "England",
        "city": "London",
        "lat": 51.5142,
        "lon": -0.0931,
    }
    sent = {"server": 0, "country": "FR", "city": "Paris"}
    enrich(sent, req)
    assert sent["country"] == "FR" and sent["city"] == "Paris" and sent["region"] == "England"
    server = {"server": 1}
    enrich(server, req)
    assert server == {"server": 1}  # a backend's IP says nothing about the visitor
