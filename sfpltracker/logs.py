"""Log output: twistd's text lines by default, JSON lines with ``"LogFormat": "json"``.

twistd chooses its log observer when the application starts, and an ``ILogObserver`` component
on the application wins over its own text observer (``twisted.application.app.AppLogger``).
So JSON logging is that component: ``tracker.tac`` sets it on its application, and for the
plugin the top service sets it when twistd parents it to the application it made. It writes
where twistd would have: ``--logfile``, else standard output under ``-n``, else ``twistd.log``.

One line per event, readable without Twisted: ``time`` (UTC, ISO 8601), ``level``,
``namespace``, ``text`` (the formatted message, as the text log shows it) and, for an error
with a traceback, ``traceback``; with ``Workers`` > 1, ``process`` (``supervisor``, ``store``,
``w1``...), which a text line shows first in its brackets: ``[w1 sfpltracker.x#info]``. Only the formatted message is written, not the event's raw
fields, so a JSON log holds no more than the text log (no raw IPs, no credentials).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any

from twisted.application import service
from twisted.logger import FileLogObserver, ILogObserver, formatEvent, globalLogPublisher
from twisted.python import logfile
from twisted.python.components import Componentized

PROCESS_KEY = "sfpl_process"


def name_process(name: str, publisher=globalLogPublisher) -> None:
    """Every log event of this process names it (the processes of ``Workers`` > 1 write one
    log). Added before twistd adds its own observer (the plugin's makeService runs first),
    so it sees each event first: the event dict it marks is the one the text and JSON
    observers then format."""

    def mark(event: dict) -> None:
        if PROCESS_KEY in event:
            return
        event[PROCESS_KEY] = name
        system = event.get("log_system")
        if system is None:  # what the text log shows without one
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        event["log_system"] = f"{name} {system}"

    publisher.addObserver(mark)


def json_line(event: dict[str, Any]) -> str:
    moment = datetime.datetime.fromtimestamp(event.get("log_time", 0), datetime.UTC)
    level = event.get("log_level")
    line: dict[str, Any] = {
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    if PROCESS_KEY in event:
        line["process"] = event[PROCESS_KEY]
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    return json.dumps(line, ensure_ascii=False, default=str) + "\n"


def json_observer(out: IO[str]) -> FileLogObserver:
    return FileLogObserver(out, json_line)


def twistd_log_file(logfile_option: str | None, nodaemon: bool) -> IO[str]:
    """Where twistd writes its log for these options (its own rule, for the JSON observer)."""
    if logfile_option == "-" or (not logfile_option and nodaemon):
        return sys.stdout
    return logfile.LogFile.fromFullPath(logfile_option or "twistd.log")


class LogsAsJSON(service.MultiService):
    """The plugin's top service when ``LogFormat`` is ``json``: on being parented to twistd's
    application it gives that application the JSON observer, before twistd starts logging."""

    def __init__(self, out: IO[str]):
        super().__init__()
        self.out = out

    def setServiceParent(self, parent):
        if isinstance(parent, Componentized):  # twistd's Application
            parent.setComponent(ILogObserver, json_observer(self.out))
        super().setServiceParent(parent)
