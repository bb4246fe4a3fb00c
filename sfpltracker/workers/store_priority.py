"""The store process's CPU priority: below the workers while it keeps up, level when it does not.

The workers answer clients; the store process only has to keep up on average, the workers'
spool series holding the difference. Its chDB inserts (hundreds of ms of CPU on every core
chDB uses) made the requests of a burst that landed on one wait for a CPU (the p99 at half
load, docs/performance.md "The store process below the workers"). So while the oldest
acknowledged record the loaders wait on is young, every thread of this process runs
``StoreNice`` levels below the workers; once it is older than ``BEHIND_SECONDS`` (a load the
store cannot keep up with at that priority: its backlog would only grow) they run at the
workers' level again until it is caught up.

A nice value belongs to a thread on Linux and a new thread takes its creator's, so each change
is applied to every thread of the process (but those that chose their own: chDB's MemoryWorker
raises itself) and the threads chDB starts later inherit it.
Lowering a priority needs no privilege, raising it back does (``CAP_SYS_NICE``, or an
``RLIMIT_NICE`` allowing the workers' level): where the process may not, the store stays at
the workers' priority, as lowering it for good would let a sustained load starve the store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

CHECK_SECONDS = 0.5
# The loaders' oldest waiting record in steady state is at most the batch time (2 s) plus an
# insert: level with the workers past BEHIND_SECONDS, below them again under CAUGHT_UP_SECONDS.
BEHIND_SECONDS = 8.0
CAUGHT_UP_SECONDS = 4.0


def move_threads(from_nice: int, to_nice: int) -> int:
    """Every thread of this process at nice ``from_nice`` to ``to_nice``; the threads that
    set their own priority (chDB's MemoryWorker raises itself) are left as they are."""
    moved = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.getpriority(os.PRIO_PROCESS, int(tid)) == from_nice:
                os.setpriority(os.PRIO_PROCESS, int(tid), to_nice)
                moved += 1
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return moved


def may_raise_back(base: int) -> bool:
    """Whether a thread of this process, once lowered, may return to nice ``base``: tried on
    a thread of its own that then ends (only Linux has per-thread nice values here)."""
    if not os.path.isdir("/proc/self/task"):
        return False
    answer: list[bool] = []

    def probe() -> None:
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, base + 1))
            os.setpriority(os.PRIO_PROCESS, tid, base)
            answer.append(True)
        except PermissionError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="nice-probe")
    thread.start()
    thread.join()
    return answer == [True]


class StorePriority:
    """A ``Gateway`` component of the store process (``StoreNice`` > 0, a local spool)."""

    def __init__(self, reactor, levels: int, behind: Callable[[], float]):
        self.reactor = reactor
        self.levels = levels
        self.behind = behind  # seconds the oldest acknowledged record has waited to be stored
        self.base = os.getpriority(os.PRIO_PROCESS, 0)
        self.lowered = False
        self.changes = 0
        self._loop: task.LoopingCall | None = None

    def start(self):
        if not may_raise_back(self.base):
            log.warn(
                "StoreNice: this process may not raise a thread's priority back (no "
                "CAP_SYS_NICE, RLIMIT_NICE below nice {base}): the store process runs at "
                "the workers' priority",
                base=self.base,
            )
            return None
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(CHECK_SECONDS, now=True)
        return None

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return None

    def check(self) -> None:
        behind = self.behind()
        if self.lowered and behind > BEHIND_SECONDS:
            self._set(False, behind)
        elif not self.lowered and behind < CAUGHT_UP_SECONDS:
            self._set(True, behind)

    @property
    def nice(self) -> int:
        return min(19, self.base + self.levels) if self.lowered else self.base

    def _set(self, lowered: bool, behind: float) -> None:
        was = self.nice
        self.lowered = lowered
        self.changes += 1
        move_threads(was, self.nice)
        if self.changes > 1:  # the first is start-up
            log.info(
                "store process at nice {nice}: the oldest waiting record is {behind:.1f} s old",
                nice=self.nice,
                behind=behind,
            )
