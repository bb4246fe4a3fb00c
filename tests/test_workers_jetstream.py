"""Workers > 1 with a JetStream spool, as real processes against a real ``nats-server``.

Each worker publishes what it accepts into the stream and answers 2xx only after JetStream's
PubAck; the store process runs the one durable consumer (the loader). Asserted outcomes: every
acknowledged event stored exactly once, the views counting each stored event once.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.gateway_process import GatewayProcess
from tests.servers import NatsServer
from tests.test_nats import metric, wait_loader_idle
from tests.test_workers import (
    Load,
    _alive,
    assert_stored_once,
    health,
    process,
    send,
    wait_until,
)


@pytest.fixture
def jetstream(tmp_path):
    with NatsServer(jetstream=True, base_dir=tmp_path / "nats-js") as server:
        yield server


@pytest.fixture
def workers(tmp_path, jetstream):
    entry = {
        "Type": "nats",
        "Hosts": [jetstream.url],
        "JetStream": True,
        "Timeout": 3,
        "AckWaitSeconds": 2,  # what a killed loader fetched comes back soon
    }
    config = {"Workers": 2, "Notify": [entry], "Batching": {"events": {"MaxBatchTime": 0.3}}}
    with GatewayProcess(tmp_path, config) as gw:
        # No waiting for the workers to reach NATS: a worker listens only once it has (or
        # Timeout passed), so no request is answered 503 from here on.
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        yield gw


def assert_views_count_once(gw: GatewayProcess, server: NatsServer) -> None:
    """Nothing waits in the stream, and the ``visitors`` view (it sums every row ever
    inserted, where ``events`` may have merged a duplicate away) counts each stored event
    once: no event inserted twice, no batch half stored."""
    wait_loader_idle(server)
    stored = gw.query("SELECT uniqExact(ename) AS n FROM sfpla.events WHERE bot = 0")[0]["n"]
    counted = gw.query("SELECT sum(events) AS n FROM sfpla.visitors")[0]["n"]
    assert int(counted) == int(stored)


def test_two_workers_publish_and_the_store_process_loads_every_event_once(workers, jetstream):
    gw = workers
    with Load(gw, "j") as load:
        load.wait_acked(400)
    assert load.non_2xx == []
    spool = health(gw)["spool"]
    assert spool["durability"] == "jetstream" and spool["loader"] is False  # a worker's
    assert_stored_once(gw, load.acked)
    assert_views_count_once(gw, jetstream)
    # /metrics counts every worker's publishing and the store process's loading, whichever
    # worker answers the scrape: the answering worker's numbers as of the scrape, the other
    # processes' as of their last report (each reports every second). Once one scrape shows
    # every event, every process has reported since the load, and every scrape says the same.
    n = len(load.acked)
    names = ("sfpl_jetstream_published_total", "sfpl_jetstream_loaded_total")
    wait_until(lambda: all(metric(gw, name) == n for name in names), what="totals")
    for name in names:
        assert {metric(gw, name) for _ in range(10)} == {n}
    # No local spool series: the stream is the spool.
    assert not (gw.workdir / "data" / "spool" / "w1").exists()


def test_worker_sigkilled_under_load_every_acked_event_stored_once(workers, jetstream):
    gw = workers
    with Load(gw, "k") as load:
        load.wait_acked(200)
        victim = process(gw, "w1")["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: process(gw, "w1")["pid"] not in (None, victim), what="w1 restarted")
        load.wait_acked(200)
    assert process(gw, "w1")["restarts"] >= 1
    # The restarted worker listens once it reached NATS: no 503 meanwhile (the connections
    # the killed worker held are cut, not answered, and are not acknowledged).
    assert load.non_2xx == []
    assert_stored_once(gw, load.acked)
    assert_views_count_once(gw, jetstream)


def test_store_process_sigkilled_workers_keep_acking_then_all_stored_once(workers, jetstream):
    gw = workers
    with Load(gw, "s") as load:
        load.wait_acked(200)
        victim = process(gw, "store")["pid"]
        os.kill(victim, signal.SIGKILL)  # fetched rows in memory, inserts without acks
        wait_until(lambda: process(gw, "store")["pid"] != victim, what="the kill noticed")
        load.wait_acked(100)  # the stream holds them while no loader runs (chDB opening)
        wait_until(lambda: process(gw, "store")["status"] == "ok", what="store back")
        load.wait_acked(100)
    assert load.non_2xx == []
    assert_stored_once(gw, load.acked)
    assert_views_count_once(gw, jetstream)


def test_store_process_stalled_past_ack_wait_stores_every_event_once(workers, jetstream):
    """The store process stopped (SIGSTOP: a VM pause, a swap storm) longer than AckWait while
    it loads: JetStream delivers what it had fetched again, and its client may hold both copies
    of a message in one fetch (tests/test_jetstream_copies.py). Once it runs on, every
    acknowledged event is stored once and the views count each once."""
    gw = workers
    with Load(gw, "p") as load:
        for _ in range(3):
            load.wait_acked(200)
            pid = process(gw, "store")["pid"]
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(3)  # AckWaitSeconds is 2
            finally:
                os.kill(pid, signal.SIGCONT)
        load.wait_acked(200)
    assert load.non_2xx == []
    assert_stored_once(gw, load.acked)
    assert_views_count_once(gw, jetstream)


def test_a_store_outage_is_absorbed_by_the_stream_and_every_worker_says_degraded(
    workers, jetstream
):
    """The store process's store refuses inserts (its events table made unwritable): the
    workers keep answering 2xx, any worker's /health is degraded (the loader cannot store),
    then everything acknowledged is stored once and /health is ok again."""
    from tests.test_durability import events_table_dir, store_writes_blocked

    gw = workers
    with Load(gw, "o") as load:
        load.wait_acked(50)
        with store_writes_blocked(events_table_dir(gw)):
            wait_until(lambda: health(gw)["status"] == "degraded", what="degraded health")
            load.wait_acked(100)
    assert load.non_2xx == []
    assert_stored_once(gw, load.acked)
    assert_views_count_once(gw, jetstream)
    wait_until(lambda: health(gw)["status"] == "ok", what="ok again")


def test_series_left_by_a_spool_mode_run_are_loaded_after_the_switch(tmp_path, jetstream):
    # Workers 2 with the local spool: the store process is killed before it inserts anything,
    # then the supervisor; what the workers acknowledged stays in their series. Started again
    # with JetStream as the spool (no process writes a series any more), the store process
    # loads what was left: switching loses nothing.
    held = {"events": {"MaxBatchTime": 600, "MaxBatchSize": 1_000_000}}
    gw = GatewayProcess(tmp_path, {"Workers": 2, "Batching": held})
    try:
        gw.start()
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        children = [p["pid"] for p in health(gw)["processes"]]
        acked = send(gw, [f"left{i}" for i in range(60)])
        assert len(acked) == 60
        os.kill(process(gw, "store")["pid"], signal.SIGKILL)
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in children), what="children gone")
        entry = {"Type": "nats", "Hosts": [jetstream.url], "JetStream": True, "Timeout": 3}
        gw.config.update({"Notify": [entry], "Batching": {"events": {"MaxBatchTime": 0.3}}})
        gw.start()
        assert_stored_once(gw, acked, timeout=45)
    finally:
        gw.__exit__(None, None, None)
