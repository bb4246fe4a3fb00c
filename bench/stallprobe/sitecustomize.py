"""A stall probe loaded into every gateway process by ``bench/stalls.py`` (never by the gateway).

``bench/stalls.py`` puts this directory first on ``PYTHONPATH`` and sets ``SFPL_STALL_PROBE`` to
a directory; Python imports ``sitecustomize`` at start-up in each process (supervisor, store
process, workers), and this one then appends JSON lines to ``<dir>/<pid>.jsonl``:

- ``lag``: the reactor thread ran a timer late by more than ``SFPL_STALL_MS`` (default 3 ms): a
  ``callLater(PERIOD)`` re-armed each time; its lateness is the time the reactor spent on
  anything else (callbacks, reading sockets, a GC pause) or waiting for a CPU;
- ``gc``: a cyclic-GC collection of generation >= 1, or of any generation over 1 ms;
- ``insert``: a chDB insert (``EmbeddedStore._send``, on the store's writer thread), start/time;
- ``commit``: a spool group commit (write + ``fdatasync``, on its thread) over 2 ms;
- ``roundtrip``: a group commit from the reactor's hand-off to its answer, over 2 ms.

Times are ``time.time()`` so the bench can line them up with each request's.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time

DIR = os.environ.get("SFPL_STALL_PROBE")
PERIOD = 0.002
THRESHOLD = float(os.environ.get("SFPL_STALL_MS", "3")) / 1000


def _role() -> str:
    argv = sys.argv
    if "--role" in argv:
        i = argv.index("--role")
        name = argv[argv.index("--name") + 1] if "--name" in argv else ""
        return f"{argv[i + 1]}:{name}"
    return "supervisor-or-single"


def _install(directory: str) -> None:
    role = _role()
    path = os.path.join(directory, f"{os.getpid()}.jsonl")
    lock = threading.Lock()
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def emit(kind: str, **fields) -> None:
        line = json.dumps({"kind": kind, "pid": os.getpid(), "role": role, **fields})
        with lock:
            out.write(line + "\n")

    gc_start = [0.0, 0.0, 0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[:] = time.time(), time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - gc_start[1]
        if info["generation"] >= 1 or took > 0.001:
            emit(
                "gc",
                t=gc_start[0],
                ms=took * 1000,
                cpu_ms=(time.thread_time() - gc_start[2]) * 1000,
                gen=info["generation"],
                collected=info["collected"],
                thread=threading.current_thread().name,
                counts=gc.get_count(),
            )

    gc.callbacks.append(on_gc)

    def start_lag_probe(reactor) -> None:
        def tick(due: float) -> None:
            now = time.perf_counter()
            late = now - due
            if late > THRESHOLD:
                emit("lag", t=time.time() - late, ms=late * 1000)
            reactor.callLater(PERIOD, tick, time.perf_counter() + PERIOD)

        reactor.callLater(PERIOD, tick, time.perf_counter() + PERIOD)
        emit("probe", t=time.time(), ms=0.0)

    def wait_for_reactor() -> None:
        # The reactor is installed and run by twistd after this module: wait for it running.
        while True:
            time.sleep(0.05)
            mod = sys.modules.get("twisted.internet.reactor")
            if mod is not None and getattr(mod, "running", False):
                mod.callFromThread(start_lag_probe, mod)
                return

    threading.Thread(target=wait_for_reactor, name="stall-probe", daemon=True).start()

    def timed(module: str, cls: str, method: str, kind: str, min_ms: float) -> None:
        """Wrap a method (of a module imported later, if ever) to emit its start and time."""
        deadline = time.monotonic() + 60
        while getattr(sys.modules.get(module), cls, None) is None:
            if time.monotonic() > deadline:
                return  # not used in this process
            time.sleep(0.05)
        klass = getattr(sys.modules[module], cls)
        original = getattr(klass, method)

        def wrapper(self, *args):
            t0, p0, cpu0 = time.time(), time.perf_counter(), time.thread_time()
            try:
                return original(self, *args)
            finally:
                ms = (time.perf_counter() - p0) * 1000
                if ms >= min_ms:
                    emit(kind, t=t0, ms=ms, thread_cpu_ms=(time.thread_time() - cpu0) * 1000)

        setattr(klass, method, wrapper)

    def commit_round_trips() -> None:
        """A group commit from the reactor's hand-off to its answer back on the reactor,
        next to the write + fdatasync inside it: the rest is the thread hand-offs (GIL)."""
        deadline = time.monotonic() + 60
        module = "sfpltracker.pipeline.spool"
        while getattr(sys.modules.get(module), "SpoolWriter", None) is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        klass = sys.modules[module].SpoolWriter
        commit, committed = klass._commit, klass._committed

        def timed_commit(self):
            was = self._committing
            commit(self)
            if self._committing and not was:
                self._probe_sent = (time.time(), time.perf_counter())

        def timed_committed(self, group, sizes, waiting):
            sent = getattr(self, "_probe_sent", None)
            if sent is not None:
                ms = (time.perf_counter() - sent[1]) * 1000
                if ms >= 2.0:
                    emit(
                        "roundtrip",
                        t=sent[0],
                        ms=ms,
                        write_fsync_ms=group.seconds * 1000,
                        frames=len(sizes),
                    )
            return committed(self, group, sizes, waiting)

        klass._commit, klass._committed = timed_commit, timed_committed

    threading.Thread(target=commit_round_trips, name="stall-probe-patch", daemon=True).start()

    for spec in (
        # chDB inserts (the store's writer thread), every one
        ("sfpltracker.store.embedded.store", "EmbeddedStore", "_send", "insert", 0.0),
        # a group commit's pwrite + fdatasync (a series' writer thread), the slow ones
        ("sfpltracker.pipeline.spool", "SpoolWriter", "_write_group", "commit", 2.0),
    ):
        threading.Thread(target=timed, args=spec, name="stall-probe-patch", daemon=True).start()


if DIR:
    _install(DIR)
