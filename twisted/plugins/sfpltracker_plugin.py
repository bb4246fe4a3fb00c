"""twistd plugin: ``twistd -n sfpltracker --config config.json``.

Kept tiny and import-light: twistd imports every plugin file to list them.
"""

from twisted.application.service import ServiceMaker

sfpltracker = ServiceMaker(
    "sfpltracker",
    "sfpltracker.tap",
    "Telemetry gateway: tracking API, short links, TLS edge, ClickHouse storage.",
    "sfpltracker",
)
