"""sfpltracker: a self-hosted, GDPR-friendly telemetry gateway on Twisted."""

__version__ = "0.1.0"
