"""``twistd -ny tracker.tac``: the same service as the plugin; config from $SFPL_CONFIG."""

import os

from twisted.application import service

from sfpltracker.config import load
from sfpltracker.service import makeService

application = service.Application("sfpltracker")
makeService(load(os.environ.get("SFPL_CONFIG", "config.json"))).setServiceParent(application)
