"""Short links across processes: two gateways sharing one ClickHouse server.

A link created, changed or deleted through gateway A's admin API must be served (or no longer
served) by gateway B within a few seconds (issue #5): B polls a tiny version query and
reloads its link cache when it moved (docs/shortlinks.md, "The link cache"). The server is
Debian's clickhouse-server 18.16 with the schema downgraded for it (``SFPL_SCHEMA_DIR``,
``tests/clickhouse_legacy.py``), as in ``tests/test_clickhouse_gateway.py``.
"""

from __future__ import annotations

import time

import pytest

from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer
from tests.test_shortlinks import bearer, create_account

PROPAGATION_SECONDS = 10  # the cache polls every 2 s; generous for a loaded machine


@pytest.fixture
def pair(gateway_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    with ClickHouseServer() as ch:
        config = {
            "Notify": [{"Type": "clickhouse", "Hosts": [ch.hostport], "Timeout": 5}],
            "Domains": ["localhost", "tracker.test"],
        }
        a = gateway_factory(config, name="a")
        b = gateway_factory(config, name="b")
        yield a, b
        a.stop()
        b.stop()


def location_at(gw, host: str, path: str) -> tuple[int, str | None]:
    r = gw.http("GET", path, headers={"Host": host})
    return r.status, r.header("location")


def wait_until_served(gw, host: str, path: str, expected: tuple[int, str | None]) -> float:
    """Seconds until ``gw`` answers ``expected`` for ``host``+``path``; fails after the limit."""
    began = time.monotonic()
    seen = None
    while time.monotonic() - began < PROPAGATION_SECONDS:
        seen = location_at(gw, host, path)
        if seen == expected:
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"after {PROPAGATION_SECONDS} s {gw.workdir.name} still answers {seen}")


def test_create_update_delete_through_a_are_served_by_b(pair):
    a, b = pair
    account = create_account(a, "acme")
    auth = bearer(account)
    host, path = "go.shared.test", "/spring"
    assert location_at(b, host, path)[0] == 404  # B knows no link yet

    r = a.http(
        "POST",
        "/tr/v1/rpi/redirect",
        json_body={"urlfrom": f"https://{host}{path}", "urlto": "https://www.example.com/one"},
        headers=auth,
    )
    assert r.status == 200 and r.json()["created"] is True, r
    assert location_at(a, host, path) == (302, "https://www.example.com/one")  # A at once
    wait_until_served(b, host, path, (302, "https://www.example.com/one"))

    r = a.http(
        "POST",
        "/tr/v1/rpi/redirect",
        json_body={
            "urlfrom": f"https://{host}{path}",
            "urlto": "https://www.example.com/two",
            "status": 301,
        },
        headers=auth,
    )
    assert r.status == 200 and r.json()["created"] is False, r
    wait_until_served(b, host, path, (301, "https://www.example.com/two"))

    # the account and the link are in the shared store: B's admin API sees them too
    r = b.http("GET", f"/tr/v1/rpi/redirects/{host}", headers=auth)
    assert r.status == 200, r
    assert [link["urlto"] for link in r.json()["results"]] == ["https://www.example.com/two"]

    r = a.http("DELETE", f"/tr/v1/rpi/redirect?urlfrom={host}{path}", headers=auth)
    assert r.status == 200, r
    assert location_at(a, host, path)[0] == 404
    wait_until_served(b, host, path, (404, None))

    # and the other way round: a link made through B reaches A
    r = b.http(
        "POST",
        "/tr/v1/rpi/redirect",
        json_body={"urlfrom": f"https://{host}/autumn", "urlto": "https://www.example.com/b"},
        headers=auth,
    )
    assert r.status == 200, r
    wait_until_served(a, host, "/autumn", (302, "https://www.example.com/b"))
