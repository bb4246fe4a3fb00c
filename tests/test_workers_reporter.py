"""A child's Reporter: it is ready (the worker listens) only once the supervisor's totals are in.

A real AMP server on the UNIX socket of a temporary data directory stands in for the
supervisor's side and holds its first answer until the test lets it go.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.protocols import amp

from sfpltracker.workers import protocol as cmds
from sfpltracker.workers.reporter import FIRST_ANSWER_WAIT, Reporter

TOTALS = {"counters": {"events_accepted": 7}, "processes": [{"name": "w1", "pid": 1}]}


class HeldSupervisor(amp.AMP):
    """Answers every Report with TOTALS, the first only once ``release`` fires."""

    def __init__(self, release: defer.Deferred, reports: list):
        super().__init__()
        self.release, self.reports = release, reports

    @cmds.Report.responder
    def report(self, role, ident, pid, report):
        self.reports.append(report)
        return self.release.addCallback(lambda _: {"totals": dict(TOTALS)})


def reporter(tmp_path, clock=reactor) -> Reporter:
    return Reporter(tmp_path, clock, "worker", "w1", lambda: {"events_accepted": 3}, lambda: "ok")


@pytest_twisted.inlineCallbacks
def test_start_waits_for_the_supervisors_first_totals(tmp_path):
    release: defer.Deferred = defer.Deferred()
    reports: list = []
    factory = protocol.Factory.forProtocol(lambda: HeldSupervisor(release, reports))
    port = yield endpoints.UNIXServerEndpoint(
        reactor, cmds.socket_path(tmp_path, cmds.SUPERVISOR_SOCKET)
    ).listen(factory)
    r = reporter(tmp_path)
    try:
        started = r.start()
        while not reports:  # the first report reached the supervisor, unanswered
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield task.deferLater(reactor, 0.2, lambda: None)
        assert not started.called and r.totals is None
        release.callback(None)
        yield started
        assert r.totals == TOTALS
        assert reports[0]["counters"] == {"events_accepted": 3}
    finally:
        yield r.stop()
        yield port.stopListening()


def test_start_gives_up_waiting_when_no_supervisor_answers(tmp_path):
    clock = task.Clock()
    r = reporter(tmp_path, clock)  # nothing listens on the socket
    started = r.start()
    clock.advance(FIRST_ANSWER_WAIT - 0.5)
    assert not started.called
    clock.advance(1)
    assert started.called and r.totals is None
    r.service.stopService()
    r._loop.stop()
