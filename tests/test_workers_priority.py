"""Workers > 1: the store process runs ``StoreNice`` levels below the workers, every thread of it.

Real processes (``twistd sfpltracker``); nice values read from ``/proc/<pid>/task/*/stat``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from sfpltracker.workers.store_priority import may_raise_back
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
        # Lowered only where the process may raise it back (root here, as in CI).
        want = min(19, base + 10) if may_raise_back(base) else base
        assert set(store.values()) == {want}, store
        for worker in ("w1", "w2"):
            assert set(thread_nices(pids[worker]).values()) == {base}, worker
        assert set(thread_nices(gw.proc.pid).values()) == {base}  # the supervisor


# As root, the unprivileged case runs as nobody (setpriv is util-linux's, on every Debian);
# a user that is not root is unprivileged already.
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.parametrize("user", ["this", "unprivileged"])
def test_the_store_process_is_level_with_the_workers_while_it_is_behind(user):
    # In a process of its own: nice values of pytest's threads are not touched.
    script = textwrap.dedent(
        """
        import os, threading
        from twisted.internet.task import Clock
        from sfpltracker.workers import store_priority
        from sfpltracker.workers.store_priority import StorePriority, may_raise_back

        def nice(tid):
            return os.getpriority(os.PRIO_PROCESS, tid)

        base = nice(0)
        ready, go, done = threading.Event(), threading.Event(), threading.Event()
        tids = {}
        def early(name, own):
            tids[name] = threading.get_native_id()
            if own is not None:  # a thread that chose its own priority (chDB's MemoryWorker)
                os.setpriority(os.PRIO_PROCESS, tids[name], own)
            ready.set(); done.wait()
        threads = [threading.Thread(target=early, args=("early", None)),
                   threading.Thread(target=early, args=("own", base + 15))]
        for t in threads:
            ready.clear(); t.start(); ready.wait()
        behind = [0.0]
        clock = Clock()
        priority = StorePriority(clock, 10, lambda: behind[0])
        priority.start()
        seen = []
        def state():
            late = {}
            t = threading.Thread(target=lambda: late.update(n=nice(threading.get_native_id())))
            t.start(); t.join()
            seen.append((nice(0), nice(tids["early"]), late["n"], nice(tids["own"])))
        state()                                          # caught up at start
        behind[0] = store_priority.BEHIND_SECONDS + 1; clock.advance(0.5); state()
        behind[0] = store_priority.CAUGHT_UP_SECONDS + 1; clock.advance(0.5); state()
        behind[0] = store_priority.CAUGHT_UP_SECONDS - 1; clock.advance(0.5); state()
        done.set()
        print(base, may_raise_back(base), seen)
        """
    )
    prefix = AS_NOBODY if user == "unprivileged" and os.geteuid() == 0 else []
    out = subprocess.run(
        [*prefix, sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    base_text, may, seen_text = out.split(" ", 2)
    if prefix:  # nobody may lower a priority, not raise it back
        assert may == "False"
    base, seen = int(base_text), eval(seen_text)  # noqa: S307 - our own script's list of tuples
    own = min(19, base + 15)
    low = min(19, base + 10)
    if may == "True":
        # main thread, a thread from before, a thread started after, one with its own priority
        assert seen == [
            (low, low, low, own),  # below the workers while caught up
            (base, base, base, own),  # behind: level with them
            (base, base, base, own),  # not yet caught up again (hysteresis)
            (low, low, low, own),  # caught up: below again
        ], seen
    else:  # may not raise a priority back: never lowered (a load could starve the store)
        assert seen == [(base, base, base, own)] * 4, seen
