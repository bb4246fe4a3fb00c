"""The supervisor (``Workers`` > 1): binds the listening sockets once, runs the processes.

Twisted's documented pattern for a multi-process server: the parent binds each port, starts
children with ``reactor.spawnProcess(..., childFDs=...)`` handing them a listening socket, and
each child serves it with ``reactor.adoptStreamPort``. Children are ``twistd sfpltracker``
again with ``--role``:

- one store process: the store, the loaders of every spool series, the query listener (its
  socket), admin commands; started first, the workers follow once it reported in;
- N workers: the edge listeners and ingestion into their own series. Each edge listener is N
  ``SO_REUSEPORT`` sockets on one address, one per worker slot: the kernel hashes each new
  connection to one of them, so a burst of keep-alive connections is spread evenly (with one
  shared socket the first worker awake accepted up to ``numberAccepts`` at once and kept
  them). The supervisor keeps every socket open: connections that reach a dead worker's
  socket wait in its queue for the restarted worker. A slot given up as failing at start-up
  has its sockets closed (new connections go to the live workers) and, for its next try,
  bound again but not listening: the worker listens when it serves them.

A child that exits is started again after a backoff that doubles while it keeps dying soon
after start (0.5 s up to 30 s), so a worker that cannot start is not restarted in a hot loop;
such a child is logged and shown in every worker's ``/health`` (``processes``). Each child
reports its counters here about once a second (``Report``, answered with the totals over
every process); a dead child's last counters are kept, so the totals never go backwards.

SIGTERM: the workers are stopped first (each commits what it acknowledged to its series),
then the store process (its loaders load what the workers left), then the supervisor exits.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol
from twisted.logger import Logger
from twisted.protocols import amp

from sfpltracker.config import Config, parse_listen
from sfpltracker.gateway import load_or_create_secret
from sfpltracker.workers import LIMIT_KEY_ENV
from sfpltracker.workers import protocol as cmds

log = Logger()

EDGE_LISTENERS = ("ProxyPort", "ProxyExceptHTTP", "ProxyPortTLS")
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 10.0  # a child that ran this long before dying was not failing at start-up
FAILING_AFTER = 3  # quick deaths in a row before it is reported as failing to start
STORE_WAIT = 30.0
STOP_TIMEOUT = 90.0  # a child still running this long after SIGTERM is killed  # start the workers anyway if the store process has not reported by then
TWISTD = "from twisted.scripts.twistd import run; run()"
MAX_OVER_LIMIT = 10000  # clients over RateLimitPerDay sent back in one answer


def bind(
    address: str,
    backlog: int = 1024,
    *,
    port: int | None = None,
    reuseport: bool = False,
    listen: bool = True,
) -> socket.socket:
    interface, configured = parse_listen(address)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, configured if port is None else port))
        if listen:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)  # handed to the children under the same descriptor number
    return sock


def bind_group(address: str, n: int) -> list[socket.socket]:
    """``n`` listening ``SO_REUSEPORT`` sockets on ``address``, all on the port of the first
    (a configured port 0: the free port the kernel chose for it)."""
    if parse_listen(address)[1]:
        # Refused (address in use) if anything listens there: SO_REUSEPORT alone would let a
        # second gateway of the same user share the port silently instead of failing.
        bind(address, listen=False).close()
    first = bind(address, reuseport=True)
    port = first.getsockname()[1]
    return [first, *(bind(address, port=port, reuseport=True) for _ in range(n - 1))]


@dataclass
class Slot:
    """One child process kept running: its role, its sockets, its history."""

    role: str
    name: str
    # listener name -> the socket this slot's child serves; the supervisor keeps it open
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    proc: _Child | None = None
    pid: int = 0
    started_at: float = 0.0
    quick_deaths: int = 0
    restarts: int = 0
    last_exit: str = ""
    respawn: object = None
    base: dict[str, int] = field(default_factory=dict)  # the dead incarnations' totals
    current: dict[str, int] = field(default_factory=dict)
    status: str = "starting"

    @property
    def fds(self) -> dict[str, int]:
        return {name: sock.fileno() for name, sock in self.sockets.items()}

    def close_sockets(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}

    def totals(self) -> dict[str, int]:
        out = dict(self.base)
        for key, n in self.current.items():
            out[key] = out.get(key, 0) + n
        return out


class _Child(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, slot: Slot):
        self.supervisor = supervisor
        self.slot = slot
        self.ended: defer.Deferred = defer.Deferred()

    def processEnded(self, reason):
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


class _SupervisorAMP(amp.AMP):
    def __init__(self, supervisor: Supervisor):
        super().__init__()
        self.supervisor = supervisor

    @cmds.Report.responder
    def report(self, role: str, ident: str, pid: int, report: dict):
        return {"totals": self.supervisor.reported(role, ident, pid, report)}


class Supervisor(service.Service):
    name = "sfpltracker-supervisor"  # type: ignore[assignment]

    def __init__(self, cfg: Config, config_path: str, workers: int, reactor=None, argv=()):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.cfg = cfg
        self.config_path = str(Path(config_path).resolve())
        self.reactor = reactor
        self.argv = list(argv)  # twistd options passed on to the children (--logfile)
        self.edge_ports: dict[str, int] = {}  # edge listener -> its port (bound, never 0)
        self.store = Slot("store", "store")
        self.workers = [Slot("worker", f"w{i + 1}") for i in range(workers)]
        self.stopping = False
        self.port = None
        # RateLimitPerDay over every worker: one key for their client digests (in memory and
        # in the children's environment only) and the day's totals per digest.
        self.limit_key = secrets.token_hex(32)
        self.limit_day = -1
        self.limit_hits: dict[str, int] = {}
        self._store_reported: defer.Deferred = defer.Deferred()

    # -- start --------------------------------------------------------------------------------

    def startService(self):
        super().startService()
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # Created once here, so no two children race to create different ones.
        load_or_create_secret(cfg.data_dir / "secret.key")
        for name in EDGE_LISTENERS:
            if getattr(cfg, name):
                group = bind_group(getattr(cfg, name), len(self.workers))
                self.edge_ports[name] = group[0].getsockname()[1]
                for slot, sock in zip(self.workers, group, strict=True):
                    slot.sockets[name] = sock
        if cfg.QueryPort:  # the store process alone serves it: one socket
            self.store.sockets["QueryPort"] = bind(cfg.QueryPort)
        self._listen_amp()
        self.spawn(self.store)
        d = self._store_reported
        timeout = self.reactor.callLater(STORE_WAIT, lambda: d.called or d.callback(None))
        d.addCallback(lambda _: timeout.active() and timeout.cancel())
        d.addCallback(lambda _: [self.spawn(slot) for slot in self.workers])
        log.info(
            "supervisor: {n} workers and a store process on {listeners}",
            n=len(self.workers),
            listeners=", ".join(
                f"{n} {getattr(cfg, n)}" for n in (*EDGE_LISTENERS, "QueryPort") if getattr(cfg, n)
            ),
        )

    def _listen_amp(self) -> None:
        path = cmds.socket_path(self.cfg.data_dir, cmds.SUPERVISOR_SOCKET)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        factory = protocol.Factory.forProtocol(lambda: _SupervisorAMP(self))
        endpoints.UNIXServerEndpoint(self.reactor, path, mode=0o600).listen(factory).addCallback(
            lambda port: setattr(self, "port", port)
        )

    def command(self, slot: Slot) -> list[str]:
        fds = ",".join(f"{name}={fd}" for name, fd in slot.fds.items())
        return [
            sys.executable,
            "-c",
            TWISTD,
            *self.argv,
            "-n",
            "--pidfile=",
            "sfpltracker",
            "--config",
            self.config_path,
            "--role",
            slot.role,
            "--name",
            slot.name,
            "--fds",
            fds,
            "--supervisor",
            str(os.getpid()),
        ]

    def spawn(self, slot: Slot) -> None:
        slot.respawn = None
        if self.stopping:
            return
        if slot.role == "worker" and not slot.sockets and self.edge_ports:
            try:
                slot.sockets = self._bind_again()
            except OSError as e:  # the port was taken meanwhile (no live worker held it)
                log.error("supervisor: cannot bind {name}'s sockets: {e}", name=slot.name, e=e)
                slot.respawn = self.reactor.callLater(MAX_BACKOFF, self.spawn, slot)
                return
        child = _Child(self, slot)
        child_fds: dict[int, object] = {0: "w", 1: 1, 2: 2}
        child_fds.update({fd: fd for fd in slot.fds.values()})  # same numbers in the child
        transport = self.reactor.spawnProcess(
            child,
            sys.executable,
            self.command(slot),
            env={**os.environ, LIMIT_KEY_ENV: self.limit_key},
            childFDs=child_fds,
        )
        slot.proc = child
        slot.pid = transport.pid
        slot.started_at = self.reactor.seconds()
        slot.status = "starting"
        log.info(
            "supervisor: started {role} {name} (pid {pid})",
            role=slot.role,
            name=slot.name,
            pid=slot.pid,
        )

    def ended(self, child: _Child, reason) -> None:
        slot = child.slot
        if slot.proc is not child:
            return
        slot.proc = None
        slot.base, slot.current = slot.totals(), {}  # counters never go backwards
        slot.status = "down"
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        slot.last_exit = f"signal {sig}" if sig else f"exit code {code}"
        if self.stopping:
            return
        ran = self.reactor.seconds() - slot.started_at
        slot.quick_deaths = slot.quick_deaths + 1 if ran < HEALTHY_AFTER else 0
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, slot.quick_deaths - 1))
        slot.restarts += 1
        if slot.quick_deaths >= FAILING_AFTER:
            slot.status = "failing"
            # Given up for now: its share of new connections goes to the live workers (what
            # waits on its sockets is refused), until a later try serves new sockets.
            if slot.role == "worker":
                slot.close_sockets()
            log.error(
                "supervisor: {role} {name} keeps dying at start-up ({n} times in a row, last "
                "{why}); next try in {delay:.1f} s",
                role=slot.role,
                name=slot.name,
                n=slot.quick_deaths,
                why=slot.last_exit,
                delay=delay,
            )
        else:
            log.warn(
                "supervisor: {role} {name} (pid {pid}) ended ({why}); restarting in {delay:.1f} s",
                role=slot.role,
                name=slot.name,
                pid=slot.pid,
                why=slot.last_exit,
                delay=delay,
            )
        slot.respawn = self.reactor.callLater(delay, self.spawn, slot)

    def _bind_again(self) -> dict[str, socket.socket]:
        """New sockets for a worker slot whose sockets were closed, bound to the edge ports but
        not listening: they join the kernel's group only once its worker listens (adopts them),
        so a try that fails again leaves no connections waiting on them."""
        cfg = self.cfg
        out: dict[str, socket.socket] = {}
        try:
            for name, port in self.edge_ports.items():
                out[name] = bind(getattr(cfg, name), port=port, reuseport=True, listen=False)
        except OSError:
            for sock in out.values():
                sock.close()
            raise
        return out

    # -- numbers ------------------------------------------------------------------------------

    def slots(self) -> list[Slot]:
        return [self.store, *self.workers]

    def reported(self, role: str, ident: str, pid: int, report: dict) -> dict:
        slot = next((s for s in self.slots() if s.name == ident), None)
        if slot is not None and slot.pid == pid and slot.proc is not None:
            slot.current = {k: int(v) for k, v in report.get("counters", {}).items()}
            slot.status = report.get("status", "ok")
            if slot is self.store and not self._store_reported.called:
                self._store_reported.callback(None)
        totals = self.totals()
        if "limits" in report:
            totals["limits"] = self.limit_totals(*report["limits"])
        return totals

    def limit_totals(self, day: int, hits: dict[str, int]) -> list:
        """Add a worker's hits; the totals of those clients and of every client over the
        limit (so a worker refuses a client that went over through the others)."""
        if day > self.limit_day:
            self.limit_day, self.limit_hits = day, {}
        elif day < self.limit_day:
            return [day, {}]
        for digest, n in hits.items():
            self.limit_hits[digest] = self.limit_hits.get(digest, 0) + n
        limit = self.cfg.RateLimitPerDay
        answer = {d: self.limit_hits[d] for d in hits}
        over = (d for d, n in self.limit_hits.items() if n >= limit)
        for d in itertools.islice(over, MAX_OVER_LIMIT):
            answer[d] = self.limit_hits[d]
        return [day, answer]

    def totals(self) -> dict:
        counters: dict[str, int] = {}
        for slot in self.slots():
            for key, n in slot.totals().items():
                # a moment (last_processed_unix) is the latest, a count the sum
                merge = max if key.endswith("_unix") else int.__add__
                counters[key] = merge(counters.get(key, 0), n)
        return {
            "counters": counters,
            "processes": [
                {
                    "role": s.role,
                    "name": s.name,
                    "pid": s.pid if s.proc is not None else None,
                    "status": s.status,
                    "restarts": s.restarts,
                    "last_exit": s.last_exit or None,
                }
                for s in self.slots()
            ],
        }

    # -- stop ---------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        self.stopping = True
        for slot in self.slots():
            if slot.respawn is not None and slot.respawn.active():
                slot.respawn.cancel()
        # Workers first: they commit what they acknowledged; then the store loads it.
        # The children hold their own copies: each socket closes (new connections refused,
        # not left waiting) as soon as its child stops listening.
        for slot in self.slots():
            slot.close_sockets()
        yield self._stop([s for s in self.workers])
        yield self._stop([self.store])
        if self.port is not None:
            yield self.port.stopListening()
        log.info("supervisor: every process stopped")

    @defer.inlineCallbacks
    def _stop(self, slots: list[Slot]):
        waiting = []
        for slot in slots:
            child = slot.proc
            if child is None:
                continue
            try:
                child.transport.signalProcess("TERM")  # type: ignore[union-attr,call-arg]
            except error.ProcessExitedAlready:
                continue
            waiting.append(child.ended)
            # A child that hangs in its shutdown is killed (its spool series keeps the rest).
            kill = self.reactor.callLater(STOP_TIMEOUT, _kill, child)
            child.ended.addBoth(_cancel, kill)
        if waiting:
            yield defer.DeferredList(waiting)


def _cancel(result, call):
    if call.active():
        call.cancel()
    return result


def _kill(child: _Child) -> None:
    log.warn(
        "supervisor: {role} {name} did not stop; killing it",
        role=child.slot.role,
        name=child.slot.name,
    )
    try:
        child.transport.signalProcess("KILL")  # type: ignore[union-attr,call-arg]
    except error.ProcessExitedAlready:
        pass


def exit_with_parent(parent_pid: int) -> None:
    """A child ends (SIGTERM: a clean stop) when its supervisor is gone, even if SIGKILLed,
    so a restarted gateway never finds old workers holding its ports."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent_pid and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect
