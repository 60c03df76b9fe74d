"""One warning when a dependency (Redis, the database) stops answering, one line when it
answers again, and nothing for each failed call in between: an outage of ten seconds under
load used to write a warning per announcement, per subscription and per health probe (over a
thousand lines), which buried the one line an operator needed."""

from __future__ import annotations

import logging
import time


class Outage:
    """The state of one dependency as one component sees it: up, or down since when."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.down_since: float | None = None
        self.failures = 0
        # Outages seen since start, for the operator (and tests).
        self.count = 0
        # When a call last failed (time.monotonic()), or None.
        self.last_failure: float | None = None

    def failed(self, exc: BaseException, consequence: str = "") -> None:
        """A call failed: warn if this starts an outage, else only count it."""
        self.failures += 1
        self.last_failure = time.monotonic()
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.count += 1
            self.log.warning(
                "%s unreachable (%s)%s; more failures are not logged until it is back",
                self.what,
                exc,
                f": {consequence}" if consequence else "",
            )

    def failed_within(self, seconds: float) -> bool:
        """Whether a call failed in the last `seconds`."""
        return self.last_failure is not None and time.monotonic() - self.last_failure < seconds

    def answered(self) -> None:
        """A call went through: end the outage, if there was one (a check on the hot path
        costs one comparison)."""
        if self.down_since is not None:
            seconds = time.monotonic() - self.down_since
            self.log.info(
                "%s answers again after %.1f s (%d failed calls meanwhile)",
                self.what,
                seconds,
                self.failures,
            )
            self.down_since = None
            self.failures = 0
