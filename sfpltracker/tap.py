"""twistd options and service maker, as Twisted's own ``twisted.web.tap`` does it."""

from __future__ import annotations

from twisted.python import usage

from sfpltracker.config import ConfigError, load
from sfpltracker.logs import LogsAsJSON, twistd_log_file
from sfpltracker.notify import reactor as notify_reactor
from sfpltracker.original_config import Mapped
from sfpltracker.service import makeService as _make_service


class Options(usage.Options):
    optParameters = [
        ["config", "c", "config.json", "Path to the JSON configuration file."],
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


def makeService(options):
    log_config_notes(options["warnings"])
    cfg = options["cfg"]
    try:
        gateway = _make_service(cfg)
    except ConfigError as e:  # found while building (e.g. an unreadable TLSCert)
        raise SystemExit(f"sfpltracker: config error: {e}") from None
    if cfg.LogFormat != "json":
        return gateway
    twistd = options.parent or {}  # twistd's own options: --logfile, -n
    top = LogsAsJSON(twistd_log_file(twistd.get("logfile"), bool(twistd.get("nodaemon"))))
    gateway.setServiceParent(top)
    return top
