"""The messaging tables on the ClickHouse server store: a real gateway process writing over the
native protocol to Debian's ClickHouse 18.16, with the schema downgraded for it
(tests/clickhouse_legacy.py: Bool -> UInt8, JSON -> String, DateTime64 -> DateTime)."""

from __future__ import annotations

import json
import time
import uuid

from tests.clickhouse_legacy import downgrade_schema
from tests.gateway_process import GatewayProcess
from tests.servers import ClickHouseServer

QUICK = {"Strategy": "hybrid", "MaxBatchSize": 100, "MaxBatchTime": "100ms"}


def test_messaging_rows_on_the_server_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    database = "msg_" + uuid.uuid4().hex[:8]
    tid, eid, user = (str(uuid.uuid4()) for _ in range(3))
    with ClickHouseServer() as server:
        config = {
            "Notify": [
                {
                    "Type": "clickhouse",
                    "Hosts": [server.hostport],
                    "Timeout": 5,
                    "Database": database,
                }
            ],
            "Batching": {t: QUICK for t in ("events", "mthreads", "mstore", "mtriage")},
        }
        c = server.client()
        with GatewayProcess(tmp_path, config) as gw:
            event = {
                "eid": eid,
                "tid": tid,
                "ename": "message_sent",
                "subject": "Hello",
                "urgency": "high",  # dropped: mtriage gets its default 8
                "sys": True,
                "users": [user],
                "mtypes": ["email"],
                "meta": {"a": 1},
                "scheduled": 1_794_996_000,
                "cats": ["news"],
            }
            for _ in range(2):  # sent twice: one message under FINAL
                assert gw.http("POST", "/tr/v1/str/", json_body=event).status == 200

            def stored(table):
                return c.execute(f"SELECT count() FROM {database}.{table} FINAL")[0][0]

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(stored(t) == 1 for t in ("mthreads", "mstore", "mtriage")):
                    break
                time.sleep(0.2)
            rows = c.execute(
                "SELECT toString(mid), subject, urgency, sys, arrayMap(u -> toString(u), users), "
                f"mtypes, meta, toUnixTimestamp(scheduled), keep FROM {database}.mtriage FINAL"
            )
            assert rows == [(eid, "Hello", 8, 1, [user], ["email"], '{"a":1}', 1_794_996_000, 1)], (
                gw.log_tail()
            )
            assert c.execute(f"SELECT cats, sys FROM {database}.mthreads FINAL") == [(["news"], 1)]
            assert c.execute(f"SELECT urgency FROM {database}.mstore FINAL") == [(0,)]
            dead = tmp_path / "gw" / "data" / "deadletter"
            assert not dead.exists() or not any(dead.iterdir()), [
                json.loads(line) for p in dead.iterdir() for line in p.read_text().splitlines()
            ]
