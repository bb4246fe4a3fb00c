"""The in-memory view of the short links the serving path reads, never the store per request.

Two modes, chosen at every (re)load by how many live links the store holds:

* **index** (up to ``max_index`` links, 100,000 by default): every live link is in memory, so a
  lookup is a dict access and a miss is known without asking the store. A flood of random
  slugs costs nothing.
* **lru** (more links than that): a least-recently-used map of at most ``max_entries`` keys,
  positive entries until the next change, negative entries for ``negative_ttl`` seconds. A
  cold key costs one store query (concurrent lookups of one key share it); the set of hosts
  that have links is still held in full, so requests for other hosts never reach the store.

Freshness: a change made through this process is applied at once (``apply``). Changes made by
other processes sharing the store are noticed by ``poll`` every ``poll_seconds`` (2 s), which
reads a cheap version of the tables (see ``LinkRepository.version``) and reloads when it moved.
With workers only the store process polls: it hands each version it reads to ``listeners``,
which send it to every worker, whose cache (``poll_seconds=None``) reloads when ``told`` a
version other than its own. One version query per interval however many workers there are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from sfpltracker.links.model import Link, possible_key

log = Logger()


class LinkCache:
    def __init__(
        self,
        repo,
        clock,
        *,
        max_index: int = 100_000,
        max_entries: int = 10_000,
        negative_ttl: float = 10.0,
        poll_seconds: float | None = 2.0,
    ):
        self.repo = repo
        self.clock = clock
        self.max_index = max_index
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self.poll_seconds = poll_seconds
        self.index: dict[str, Link] | None = None  # every live link (index mode)
        self.hosts: set[str] | None = None  # hosts with live links; None = not known yet
        self.lru: OrderedDict[str, tuple[Link | None, float]] = OrderedDict()
        self.version: tuple | None = None
        self.reloads = 0
        self.lookups = 0  # lookups that had to ask the store (lru mode, cold keys)
        self._generation = 0  # moves on every change, so a slow lookup cannot store stale data
        self._reloading: defer.Deferred | None = None
        self._changes_during_reload: list[tuple[str, Link | None]] = []
        self._pending: dict[str, defer.Deferred] = {}
        self._loop: task.LoopingCall | None = None
        # Called with every version a poll reads (the store process tells its workers).
        self.listeners: list[Callable[[tuple], None]] = []

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Load the links, then poll for changes by other processes (unless told them)."""
        if self.poll_seconds is not None:
            self._loop = task.LoopingCall(self.poll)
            self._loop.clock = self.clock
            self._loop.start(self.poll_seconds, now=False).addErrback(
                lambda f: log.failure("short-link polling stopped", f)
            )
        return self.poll()

    def stop(self) -> defer.Deferred:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._reloading if self._reloading is not None else defer.succeed(None)

    @property
    def mode(self) -> str:
        return "index" if self.index is not None else "lru"

    # -- reads ------------------------------------------------------------------------------

    def may_have(self, host: str) -> bool:
        """False when ``host`` certainly has no link (no lookup needed at all)."""
        return self.hosts is None or host in self.hosts

    def lookup(self, key: str):
        """The live ``Link`` of ``key``, None, or (lru mode, cold key) a Deferred of either."""
        index = self.index
        if index is not None:
            return index.get(key)
        if not possible_key(key):  # e.g. a slug with %0d%0a: no link has it, ask no store
            return None
        entry = self.lru.get(key)
        if entry is not None:
            link, until = entry
            if link is not None or self.clock.seconds() < until:
                self.lru.move_to_end(key)
                return link
            del self.lru[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = self._fetch(key)
        result: defer.Deferred = defer.Deferred()

        def relay(r: object) -> object:  # a copy for this caller; the shared chain keeps r
            result.callback(r)
            return r

        pending.addBoth(relay)
        return result

    def _fetch(self, key: str) -> defer.Deferred:
        self.lookups += 1
        generation = self._generation
        d = self.repo.get(key)

        def store(link):
            if self._pending.get(key) is d:
                del self._pending[key]
            if generation == self._generation and self.index is None:
                self._remember(key, link)
            return link

        def failed(failure):
            if self._pending.get(key) is d:
                del self._pending[key]
            log.warn("short-link lookup failed: {why}", why=failure.getErrorMessage())
            return None

        d.addCallbacks(store, failed)
        return d

    def _remember(self, key: str, link: Link | None) -> None:
        until = 0.0 if link is not None else self.clock.seconds() + self.negative_ttl
        self.lru[key] = (link, until)
        self.lru.move_to_end(key)
        while len(self.lru) > self.max_entries:
            self.lru.popitem(last=False)

    # -- changes ----------------------------------------------------------------------------

    def apply(self, key: str, link: Link | None) -> None:
        """A change made in this process (``link`` None = deleted): visible to the next request."""
        self._generation += 1
        self._pending.pop(key, None)
        if self._reloading is not None:
            self._changes_during_reload.append((key, link))
        self._apply(key, link)

    def _apply(self, key: str, link: Link | None) -> None:
        if link is not None and self.hosts is not None:
            self.hosts.add(link.host)
        if self.index is not None:
            if link is None:
                self.index.pop(key, None)
                return
            self.index[key] = link
            if len(self.index) > self.max_index:
                self.index = None
                self.lru.clear()
            return
        self._remember(key, link)

    def poll(self) -> defer.Deferred:
        """Reload when the store's version of the links moved (or nothing was loaded yet)."""
        if self._reloading is not None:
            return self._reloading
        d = self.repo.version()

        def compare(version):
            for listener in self.listeners:
                listener(version)
            return self.told(version)

        d.addCallback(compare)
        d.addErrback(
            lambda f: log.warn("short links not refreshed: {why}", why=f.getErrorMessage())
        )
        return d

    def told(self, version: tuple) -> defer.Deferred:
        """The store's current version (read by ``poll``, or by the store process's poll and
        sent here): reload when it is not the one loaded. A version told during a reload is
        dropped: the next one (every poll interval) compares again."""
        if self._reloading is None and (version != self.version or self.hosts is None):
            return self._reload(version)
        return defer.succeed(None)

    def _reload(self, version) -> defer.Deferred:
        self._changes_during_reload = []
        self._reloading = d = self._load(version)

        def done(result):
            self._reloading = None
            self._changes_during_reload = []
            return result

        d.addBoth(done)
        return d

    @defer.inlineCallbacks
    def _load(self, version):
        now_ms = int(self.clock.seconds() * 1000)
        links = yield self.repo.load(self.max_index + 1, now_ms)
        self._generation += 1
        if len(links) <= self.max_index:
            self.index = {link.key: link for link in links}
            self.hosts = {link.host for link in links}
        else:
            hosts = yield self.repo.hosts()
            self.index = None
            self.hosts = hosts
        self.lru.clear()
        self._pending.clear()
        for key, link in self._changes_during_reload:
            self._apply(key, link)
        self.version = version
        self.reloads += 1
        log.debug("short links loaded: {count} ({mode} mode)", count=len(links), mode=self.mode)
