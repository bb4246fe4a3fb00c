"""``Workers``: a supervisor, one store process and N ingest workers (ARCHITECTURE.md).

- ``supervisor.py``: binds every listening socket once, starts the store process and the
  workers with the sockets inherited, restarts them with backoff, keeps their totals;
- ``store_side.py``: in the store process, the loaders of the workers' spool series and the
  AMP server the workers call (reads and writes of the store);
- ``worker_side.py``: in a worker, the spool intake that only writes its own series and the
  store reached over AMP;
- ``protocol.py``: the AMP commands between them (UNIX sockets in ``DataDirectory``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Role:
    """Which process this is: ``single`` (Workers: 1, everything in one process), ``store``
    (the store, loaders, query listener) or ``worker`` (the edge and ingestion, series
    ``name``); ``fds``: listener name -> the inherited listening socket."""

    kind: str = "single"
    name: str = ""
    fds: dict[str, int] = field(default_factory=dict)
    supervisor: int = 0  # the supervisor's pid (a child exits when it is gone)


SINGLE = Role()

# The supervisor's RateLimitPerDay key for its workers (edge/limits.py), in their environment.
LIMIT_KEY_ENV = "SFPL_LIMIT_KEY"
