"""``twistd -ny tracker.tac``: the same service as the plugin; config from $SFPL_CONFIG."""

import os

from twisted.application import service

from sfpltracker.config import load
from sfpltracker.notify.reactor import prepare as prepare_reactor
from sfpltracker.service import makeService

config = load(os.environ.get("SFPL_CONFIG", "config.json"))
prepare_reactor(config)  # NATS needs the asyncio reactor: `twistd -r asyncio -ny tracker.tac`
application = service.Application("sfpltracker")
makeService(config).setServiceParent(application)
