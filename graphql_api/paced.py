"""Long GraphQL lists answered in slices, so that one answer never holds the event loop for long.

graphql-core completes a list of plain objects in one go: a page of 100 workflows of 1,000
tasks is 100,000 objects built and completed in one step of the loop (about a second on our
2-core machines), during which no other request, lease renewal or health check runs (issue
#16). A resolver that returns `paced(rows, build)` instead hands the executor an async iterator:
graphql-core completes each item as it arrives (graphql.execution.executor's
complete_async_iterator_value), and the iterator gives the loop a turn once a slice of
PACE_SECONDS has passed. Short lists never wait: the clock is read, not slept on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

Row = TypeVar("Row")
Item = TypeVar("Item")

# The most time items are built and completed between two turns of the loop. Small enough that
# a lease renewal or /healthz waits at most a few of these; large enough that a page of small
# items goes out in one slice, with no waits at all.
PACE_SECONDS = 0.02


async def paced(rows: Iterable[Row], build: Callable[[Row], Item]) -> AsyncIterator[Item]:
    """`build(row)` for each row, yielding the loop whenever PACE_SECONDS have passed."""
    clock = time.perf_counter
    due = clock() + PACE_SECONDS
    for row in rows:
        # The time between two items includes the executor completing the previous one.
        if clock() >= due:
            await asyncio.sleep(0)
            due = clock() + PACE_SECONDS
        yield build(row)
