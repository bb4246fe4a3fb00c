"""twistd options and service maker, as Twisted's own ``twisted.web.tap`` does it."""

from __future__ import annotations

import dataclasses

from twisted.python import usage

from sfpltracker.config import ConfigError, load, worker_count
from sfpltracker.logs import LogsAsJSON, name_process, twistd_log_file
from sfpltracker.notify import reactor as notify_reactor
from sfpltracker.original_config import Mapped
from sfpltracker.service import makeService as _make_service
from sfpltracker.workers import SINGLE, Role


class Options(usage.Options):
    optParameters = [
        ["config", "c", "config.json", "Path to the JSON configuration file."],
        # Set by the supervisor for its children (Workers > 1), not by hand:
        ["role", None, None, "store | worker: a child of the supervisor."],
        ["name", None, "", "The child's name (a worker's spool series)."],
        ["fds", None, "", "Inherited listening sockets: Name=fd,..."],
        ["supervisor", None, "0", "The supervisor's pid."],
    ]

    def postOptions(self):
        warnings: list[str] = []
        try:
            self["cfg"] = load(self["config"], warnings)
            notify_reactor.prepare(self["cfg"])  # before anything imports the reactor
        except ConfigError as e:
            # One clear line naming the key, not a traceback or the whole usage text.
            raise SystemExit(f"sfpltracker: config error: {e}") from None
        self["warnings"] = warnings


def log_config_notes(notes: list[str]) -> None:
    """The notes ``config.load`` collected: info for mapped original keys, else warnings."""
    from twisted.logger import Logger

    log = Logger(namespace="sfpltracker.config")
    for note in notes:
        # An original tracker's key that kept its meaning is news, not a problem.
        emit = log.info if isinstance(note, Mapped) else log.warn
        emit("config: {note}", note=note)


def _role(options) -> Role:
    if not options["role"]:
        return SINGLE
    from sfpltracker.workers.supervisor import exit_with_parent

    exit_with_parent(int(options["supervisor"]))
    fds = dict(item.split("=", 1) for item in options["fds"].split(",") if item)
    return Role(
        options["role"],
        options["name"],
        {k: int(v) for k, v in fds.items()},
        int(options["supervisor"]),
    )


def worker_config(cfg, role: Role):
    """A worker's config: its share of ``MaxConnections`` (the workers together never hold
    more; the kernel spreads new connections over the workers waiting to accept) and of
    ``LoginFailureLimit`` (together never more failed guesses per window than the limit; a
    client whose logins all reach one worker is stopped sooner, the safe side for a guard
    against guessing)."""
    if role.kind != "worker":
        return cfg
    n = max(1, worker_count(cfg))
    logins = max(1, cfg.LoginFailureLimit // n) if cfg.LoginFailureLimit > 0 else 0
    return dataclasses.replace(
        cfg, MaxConnections=-(-cfg.MaxConnections // n), LoginFailureLimit=logins
    )


def makeService(options):
    role = _role(options)
    cfg = worker_config(options["cfg"], role)
    if role.kind == "single":
        log_config_notes(options["warnings"])  # once: the children read the same file
    try:
        workers = worker_count(cfg) if role.kind == "single" else 0
        if role.kind != "single":
            name_process(role.name)  # a supervisor's child: "store", "w1", ...
        elif workers > 1:
            name_process("supervisor")
        if workers > 1:
            from sfpltracker.workers.supervisor import Supervisor

            twistd = options.parent or {}
            argv = [f"--logfile={twistd['logfile']}"] if twistd.get("logfile") else []
            gateway = Supervisor(cfg, options["config"], workers, argv=argv)
        else:
            gateway = _make_service(cfg, role=role)
    except ConfigError as e:  # found while building (e.g. an unreadable TLSCert)
        raise SystemExit(f"sfpltracker: config error: {e}") from None
    if cfg.LogFormat != "json":
        return gateway
    twistd = options.parent or {}  # twistd's own options: --logfile, -n
    top = LogsAsJSON(twistd_log_file(twistd.get("logfile"), bool(twistd.get("nodaemon"))))
    gateway.setServiceParent(top)
    return top
