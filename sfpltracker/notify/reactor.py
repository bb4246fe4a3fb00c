"""nats-py is an asyncio library: with a NATS ``Notify`` entry the gateway runs on Twisted's
asyncio reactor, so NATS coroutines and Twisted code share one event loop.

``prepare(cfg)`` runs before anything imports ``twisted.internet.reactor`` (``tap.Options``,
``tracker.tac``) and installs the asyncio reactor when the config needs it; ``require(reactor)``
refuses to start with any other reactor, with a message that says what to do.
"""

from __future__ import annotations

import sys

from sfpltracker.config import Config, ConfigError


def nats_entries(cfg: Config) -> list[tuple[int, object]]:
    return [(i, n) for i, n in enumerate(cfg.Notify) if n.Type == "nats" and not n.Skip]


def is_asyncio(reactor) -> bool:
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor)


def prepare(cfg: Config) -> None:
    """Install Twisted's asyncio reactor when ``cfg`` has a NATS entry and none is installed yet.

    With ``twistd -r <name>`` the reactor is already installed when this runs: then it is only
    checked, and a wrong one stops start-up here with a clear line.
    """
    entries = nats_entries(cfg)
    if not entries:
        return
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
        return
    from twisted.internet import reactor

    require(reactor, entries[0][0])


def require(reactor, index: int = 0) -> None:
    if not is_asyncio(reactor):
        name = type(reactor).__name__
        raise ConfigError(
            f"Notify[{index}]: NATS needs Twisted's asyncio reactor, but the {name} is running; "
            "start with `twistd -r asyncio ...` (or leave out -r: the plugin then installs it)"
        )
