"""A child's numbers to the supervisor, and the totals over every process back.

Every second a child sends its counters and its health status (``Report``); the answer is the
supervisor's totals (counters summed over every process, a dead one's last counters kept) and
the state of each process, which ``/metrics`` and ``/health`` show whichever worker answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, protocol, task
from twisted.logger import Logger
from twisted.protocols import amp

from sfpltracker.workers import protocol as cmds

log = Logger()

INTERVAL = 1.0
# How long start() waits for the supervisor's first answer (it is the parent: milliseconds
# unless it is gone, and then this process serves with its own numbers rather than never).
FIRST_ANSWER_WAIT = 10.0


class Reporter:
    def __init__(
        self,
        data_dir: Path,
        reactor,
        role: str,
        name: str,
        counters: Callable[[], dict[str, int]],
        status: Callable[[], str],
    ):
        self.reactor = reactor
        self.role, self.name = role, name
        self.counters, self.status = counters, status
        self.totals: dict | None = None  # the last answer, or None before the first
        self.limiter = None  # RateLimitPerDay's DailyLimiter, its counts shared (workers)
        self.proto: amp.AMP | None = None
        self.service = ClientService(
            endpoints.UNIXClientEndpoint(  # type: ignore[arg-type]
                reactor, cmds.socket_path(data_dir, cmds.SUPERVISOR_SOCKET)
            ),
            protocol.Factory.forProtocol(amp.AMP),  # type: ignore[arg-type]
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=2.0),
            clock=reactor,
            prepareConnection=self._connected,
        )
        self._loop = task.LoopingCall(self.report)
        self._loop.clock = reactor
        self._first_answer: defer.Deferred = defer.Deferred()

    def _connected(self, proto) -> None:
        self.proto = proto
        self.report()

    def start(self) -> defer.Deferred:
        """Fires once the supervisor's totals are here (or after FIRST_ANSWER_WAIT): a worker
        listens only then, so its first /health and /metrics already show every process
        (the kernel hands a new connection to any worker, the one just started included)."""
        self.service.startService()
        self._loop.start(INTERVAL, now=False)
        first = self._first_answer
        timeout = self.reactor.callLater(FIRST_ANSWER_WAIT, self._give_up_waiting)
        first.addCallback(lambda _: timeout.active() and timeout.cancel())
        return first

    def _give_up_waiting(self) -> None:
        if not self._first_answer.called:
            log.warn("no totals from the supervisor yet: serving with this process's own")
            self._first_answer.callback(None)

    def stop(self) -> defer.Deferred:
        if self._loop.running:
            self._loop.stop()
        self.report()  # the last counters, before this process exits
        return self.service.stopService()

    def report(self) -> defer.Deferred:
        """Send this process's numbers; fires once ``totals`` holds the answer (or it failed:
        ``totals`` keeps the last one)."""
        proto = self.proto
        if proto is None or proto.transport is None or not proto.transport.connected:
            self.proto = None
            return defer.succeed(None)
        report = {"counters": dict(self.counters()), "status": self.status()}
        if self.limiter is not None:
            report["limits"] = list(self.limiter.take_unsent())
        d = proto.callRemote(
            cmds.Report, role=self.role, ident=self.name, pid=os.getpid(), report=report
        )
        return d.addCallbacks(self._answered, self._failed)

    def _failed(self, failure) -> None:
        # said, not swallowed: a worker without totals shows its own counts on /metrics
        if self._loop.running:  # not the last report, sent as the supervisor stops us
            log.warn("report to the supervisor failed: {why}", why=failure.getErrorMessage())

    def _answered(self, answer: dict) -> None:
        self.totals = answer["totals"]
        if not self._first_answer.called:
            self._first_answer.callback(None)
        limits = self.totals.pop("limits", None)
        if limits and self.limiter is not None:
            self.limiter.merge(*limits)
