"""Garbage-collector settings for the long-running gateway process (applied once it is up).

Measured under wrk (docs/performance.md): with CPython's default thresholds (700, 10, 10) the
reactor thread spent ~14% of its CPU in the cyclic collector. Every tracking call keeps a few
dozen container objects alive until the spool's group commit answers it (the Twisted request
and its headers, the row, the Deferreds), so a generation-0 collection ran every ~20 requests
and found nearly everything still alive; survivors were promoted, and each full collection
then walked the ~120k objects of the loaded libraries (Twisted, chDB, pyarrow) again.

- ``gc.freeze()`` once start-up is done moves everything loaded so far into the permanent
  generation, which no collection walks again.
- A generation-0 threshold of 10,000 lets short-lived objects die by reference counting before
  a collection looks at them; the in-flight requests are the same few thousand objects either
  way. Cyclic garbage waits a little longer (at most that many allocations).

Together they took the collector from ~40 us to ~2 us of CPU per tracking call.
"""

from __future__ import annotations

import gc
import sys

GEN0_THRESHOLD = 10_000


def load_lazy_imports() -> None:
    """Import now what the first insert would import: pyarrow loads pandas on its first
    ``pa.array`` (~0.3 s of CPU holding the GIL, measured), which stalled the reactor of a
    one-process gateway for that long a few seconds into serving (bench/latency.py's p99), and
    left pandas' objects out of ``gc.freeze()``. Only where a store already loaded pyarrow (not
    in a worker)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.array([""], type=pa.string())


def tune_gc() -> None:
    """Freeze what start-up loaded and raise the generation-0 threshold (idempotent)."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
