"""The error every store raises, so callers (batcher, query listener) need not know the store."""

from __future__ import annotations


class StoreError(Exception):
    """A store failure; ``code`` is ClickHouse's error code when there is one."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code
