"""How fast each caller may start executions: a token bucket per name (the API key's name, or
`trigger:<id>` for a webhook), in each execution service.

A workflow whose `http` task called its own `execute` started over a thousand executions in
five seconds; the per-workflow concurrency limit stops such a loop, and this bounds what any
one key can start however many workflows it spreads them over. Per process: with several
execution services, a key may start that many on each.
"""

from __future__ import annotations

import time

from models.errors import TooManyRequests

# Names whose buckets are kept at most; the least recently used go first.
MAX_BUCKETS = 10_000


class StartRate:
    def __init__(self, per_second: float, burst: float | None = None) -> None:
        self.per_second = per_second
        self.burst = burst if burst is not None else max(1.0, per_second)
        # name -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str) -> None:
        """Count one start for `name`. Raises TooManyRequests when its bucket is empty."""
        if self.per_second <= 0:
            return  # unlimited
        moment = time.monotonic()
        tokens, counted = self._buckets.pop(name, (self.burst, moment))
        tokens = min(self.burst, tokens + (moment - counted) * self.per_second)
        if tokens < 1:
            self._buckets[name] = (tokens, moment)
            wait = (1 - tokens) / self.per_second
            raise TooManyRequests(
                f"Too many executions started by {name!r}: at most {self.per_second:g} a "
                f"second (WORKFLOW_MAX_STARTS_PER_SECOND); try again in {wait:.2f} s"
            )
        self._buckets[name] = (tokens - 1, moment)  # re-inserted: most recently used last
        if len(self._buckets) > MAX_BUCKETS:
            del self._buckets[next(iter(self._buckets))]
