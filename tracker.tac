"""``twistd -ny tracker.tac``: the same service as the plugin; config from $SFPL_CONFIG."""

import os
import sys

from twisted.application import service
from twisted.logger import ILogObserver

from sfpltracker.config import load, worker_count
from sfpltracker.logs import json_observer
from sfpltracker.notify.reactor import prepare as prepare_reactor
from sfpltracker.service import makeService
from sfpltracker.tap import log_config_notes

notes: list[str] = []
config_path = os.environ.get("SFPL_CONFIG", "config.json")
config = load(config_path, notes)
prepare_reactor(config)  # NATS needs the asyncio reactor: `twistd -r asyncio -ny tracker.tac`
application = service.Application("sfpltracker")
if config.LogFormat == "json":  # JSON lines on standard output (run with -n, as containers do)
    application.setComponent(ILogObserver, json_observer(sys.stdout))
workers = worker_count(config)
if workers > 1:  # a supervisor, the store process and the workers (twistd sfpltracker children)
    from sfpltracker.workers.supervisor import Supervisor

    Supervisor(config, config_path, workers).setServiceParent(application)
else:
    makeService(config).setServiceParent(application)
log_config_notes(notes)  # after the observer is set, so JSON logging carries them too
