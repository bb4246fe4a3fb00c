"""The original's NATS consumer ("Consume": true): tic.log / tic.count / tic.update messages,
published on a real nats-server, become logs / counters / updates rows through the intake."""

from __future__ import annotations

import asyncio
import json
import uuid

from tests.test_nats import metric, nats_entry, nats_server  # noqa: F401 - fixture
from tests.test_privacy_cli import cli


def publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    import nats

    async def run():
        nc = await nats.connect(url)
        for subject, data in messages:
            await nc.publish(subject, data)
        await nc.flush()
        await nc.close()

    asyncio.run(run())


def test_consumed_messages_are_stored_once_and_bad_ones_do_not_stop_the_rest(
    nats_server,  # noqa: F811
    gateway_factory,
):
    gw = gateway_factory({"Notify": [nats_entry(nats_server, Consume=True)]})
    gw.wait_for(
        "SELECT 1 AS ok",
        lambda rows: metric(gw, "sfpl_nats_connected") == 1,
    )
    owner = str(uuid.uuid4())
    good = [
        ("tic.count.signups", b"{}"),  # id defaults to the subject
        ("tic.count", json.dumps({"id": "widgets"}).encode()),
        (
            "tic.update.a",
            json.dumps({"id": "u1", "updated": "1700000000000", "msg": "v1"}).encode(),
        ),
        (
            "tic.update.a",
            json.dumps({"id": "u1", "updated": "1700000001000", "msg": "v2"}).encode(),
        ),
        (
            "tic.log.app",
            json.dumps(
                {
                    "topic": "billing",
                    "name": "svc",
                    "level": 3,
                    "msg": "hello",
                    "owner": owner,
                    "ldate": "2026-01-02",
                    "ltimenss": "1767312000123456789",
                    "params": {"k": "v"},
                    "ip": "203.0.113.77",
                    "iphash": "the-original-reversible-hash",
                }
            ).encode(),
        ),
    ]
    bad = [
        ("tic.log.app", b"not json"),
        ("tic.count.x", b"[1, 2]"),
        ("tic.log.app", json.dumps({"owner": "not-a-uuid"}).encode()),
        ("tic.update.a", json.dumps({"updated": "yesterday"}).encode()),
    ]
    # bad ones first and in between: they must not stop the good ones
    publish(nats_server.url, bad[:2] + good[:3] + bad[2:] + good[3:])

    logs = gw.wait_for("SELECT * FROM sfpla.logs", lambda rows: len(rows) >= 1)
    counters = gw.wait_for(
        "SELECT id, sum(total) AS n FROM sfpla.counters GROUP BY id ORDER BY id",
        lambda rows: len(rows) >= 2,
    )
    updates = gw.wait_for(
        "SELECT id, msg FROM sfpla.updates FINAL", lambda rows: rows and rows[0]["msg"] == "v2"
    )
    assert len(logs) == 1
    log = logs[0]
    assert (log["topic"], log["name"], log["level"], log["msg"]) == ("billing", "svc", 3, "hello")
    assert log["owner"] == owner and log["ldate"] == "2026-01-02"
    assert log["ltime"].startswith("2026-01-02 00:00:00.123")
    assert log["params"] == {"k": "v"}
    assert uuid.UUID(log["id"]).version == 1
    # IPMode (default truncate) as for every row with an IP; a message's own iphash is not kept
    assert log["ip"] == "203.0.113.0"
    assert len(log["iphash"]) == 26 and log["iphash"] != "the-original-reversible-hash"
    assert [(c["id"], int(c["n"])) for c in counters] == [("tic.count.signups", 1), ("widgets", 1)]
    assert updates == [{"id": "u1", "msg": "v2"}]
    assert metric(gw, "sfpl_nats_consumed_total") == 5
    assert metric(gw, "sfpl_nats_consume_rejected_total") == 4

    # the log table is what prune --logs-only works on; events are left alone
    done = cli(gw, "prune", "--logs-only", "--days", "30")
    assert "logs" in done.stdout, done.stdout
    assert "events" not in done.stdout, done.stdout
    assert len(gw.query("SELECT id FROM sfpla.logs")) == 1  # today's line is kept
