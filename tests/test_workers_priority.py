"""Workers > 1: the store process runs ``StoreNice`` levels below the workers, every thread of it.

Real processes (``twistd sfpltracker``); nice values read from ``/proc/<pid>/task/*/stat``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.gateway_process import ROOT, GatewayProcess
from tests.test_workers import health, send, stored, wait_until


def thread_nices(pid: int) -> dict[str, int]:
    """Every thread of ``pid``: its name and tid -> its nice value."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name}/{tid}"] = int(fields[16])  # field 19 of stat(5): nice
    return out


def test_the_store_process_and_every_thread_it_starts_run_below_the_workers(tmp_path):
    with GatewayProcess(tmp_path, {"Workers": 2}) as gw:  # StoreNice: its default, 10
        wait_until(lambda: all(p["pid"] for p in health(gw)["processes"]), what="all up")
        acked = send(gw, [f"nice{i}" for i in range(20)])
        stored(gw, acked)  # the store has inserted: chDB's pools and merges have threads now
        base = os.getpriority(os.PRIO_PROCESS, gw.proc.pid)
        pids = {p["name"]: p["pid"] for p in health(gw)["processes"]}
        # chDB's MemoryWorker (it samples the process's memory) raises its own priority
        # where it may (as root): ClickHouse's choice, not the store's work.
        store = {k: v for k, v in thread_nices(pids["store"]).items() if "MemoryWorker" not in k}
        assert len(store) > 10, store  # the reactor's, the spool's and chDB's threads
        assert set(store.values()) == {min(19, base + 10)}, store
        for worker in ("w1", "w2"):
            assert set(thread_nices(pids[worker]).values()) == {base}, worker
        assert set(thread_nices(gw.proc.pid).values()) == {base}  # the supervisor


def test_lower_priority_moves_running_threads_and_later_ones_inherit_it():
    script = textwrap.dedent(
        """
        import os, threading
        from sfpltracker.tuning import lower_priority
        before = os.getpriority(os.PRIO_PROCESS, 0)
        seen = {}
        ready, go = threading.Event(), threading.Event()
        def early():
            ready.set(); go.wait()
            seen["early"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        t = threading.Thread(target=early); t.start(); ready.wait()
        got = lower_priority(3)
        go.set(); t.join()
        def late():
            seen["late"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        t = threading.Thread(target=late); t.start(); t.join()
        print(before, got, seen["early"], seen["late"], lower_priority(0))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    before = int(out[0])
    want = min(19, before + 3)
    assert [int(v) for v in out[1:]] == [want, want, want, want]
