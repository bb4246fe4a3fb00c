"""Workers > 1 with ``Durability: "memory"``, as real processes.

A worker acknowledges once its own batcher queued the rows (no spool, as in one process) and
its batches are inserted by the store process (``Insert`` over AMP). What is acknowledged is
stored once the batch interval passed, and a clean stop (SIGTERM) stores everything queued.
"""

from __future__ import annotations

import signal

from tests.gateway_process import GatewayProcess
from tests.test_workers import Load, assert_stored_once, health, send, wait_until

CONFIG = {"Workers": 2, "Durability": "memory", "Batching": {"events": {"MaxBatchTime": 0.3}}}


def test_two_memory_workers_store_every_acknowledged_event_once(tmp_path):
    with GatewayProcess(tmp_path, CONFIG) as gw:
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        acked = send(gw, [f"mem{i}" for i in range(300)])
        assert len(acked) == 300
        assert health(gw)["spool"]["durability"] == "memory"
        assert_stored_once(gw, acked)
        assert not (gw.workdir / "data" / "spool" / "w1").exists()  # no spool series


def test_sigterm_stores_what_memory_workers_queued(tmp_path):
    # Batches held back during the run: only the stop's flush can store them.
    config = {**CONFIG, "Batching": {"events": {"MaxBatchTime": 120, "MaxBatchSize": 100000}}}
    gw = GatewayProcess(tmp_path, config)
    with gw:
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        with Load(gw, "t") as load:
            load.wait_acked(300)
        acked = list(load.acked)
        assert gw.stop() in (0, -signal.SIGTERM)
        gw.config["Workers"] = 1
        with gw.start():
            assert_stored_once(gw, acked)
