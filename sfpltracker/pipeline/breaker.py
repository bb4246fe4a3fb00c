"""A circuit breaker around the store: stop hammering a store that keeps failing.

Closed: calls go through. After ``max_failures`` consecutive failures it opens: no calls for
``reset_seconds``, then one trial call (half-open); a success closes it, a failure re-opens it.
"""

from __future__ import annotations


class CircuitBreaker:
    def __init__(self, reactor, max_failures: int = 5, reset_seconds: float = 5.0):
        self.reactor = reactor
        self.max_failures = max_failures
        self.reset_seconds = reset_seconds
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.reactor.seconds() >= self.opened_at + self.reset_seconds:
            return "half-open"
        return "open"

    def allows(self) -> bool:
        return self.state != "open"

    def seconds_until_trial(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.reset_seconds - self.reactor.seconds())

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.max_failures or self.opened_at is not None:
            self.opened_at = self.reactor.seconds()
