"""Long work done in slices, so that one request never holds the event loop for long (issue #16).

graphql-core completes a list of plain objects in one go, `json` encodes and decodes a whole
document in one call, and a driver hands back every row of a query at once: a page of 100
workflows of 1,000 tasks is some 100,000 objects, seconds of work in one step of the loop, during
which no other request, lease renewal or health check runs. Code that walks such data checks
`due()` per item and awaits `next_turn()` when it is true; `paced(rows, build)` does that for
GraphQL lists (graphql-core completes an async iterator item by item:
graphql.execution.executor's complete_async_iterator_value).

The slice is shared by everything on the loop, not kept per list: asyncio runs every ready
callback in one iteration of its loop, so 100 lists that each took their own slice of 20 ms
would hold it 2 s. Once the iteration has spent PACE_SECONDS, every paced walker waits for the
next iteration (after the loop has polled sockets and run due timers), and one slice starts
then. Short work never waits: the clock is read, not slept on.
`benchmarks/bench_loop_block.py` measures what a large read holds the loop.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

Row = TypeVar("Row")
Item = TypeVar("Item")

# The most time paced work runs between two turns of the loop. Small enough that a lease
# renewal or /healthz waits at most a few of these; large enough that a page of small items
# goes out in one slice, with no waits at all.
PACE_SECONDS = 0.02

clock = time.perf_counter


class _Slices:
    """One loop's slice: whether one is under way in this iteration of the loop, when it is
    spent, and the turn that walkers past it wait for."""

    __slots__ = ("active", "due", "turn")

    def __init__(self) -> None:
        self.active = False
        self.due = 0.0
        self.turn: asyncio.Future[None] | None = None

    def end(self) -> None:
        # Called soon after the slice began, so in the loop's next iteration: the sockets and
        # timers have been seen to. The walkers waiting go on in the iteration after; the
        # first of them to ask starts the next slice.
        self.active = False
        turn, self.turn = self.turn, None
        if turn is not None and not turn.done():
            turn.set_result(None)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slices] = (
    weakref.WeakKeyDictionary()
)


def _slices() -> tuple[asyncio.AbstractEventLoop, _Slices]:
    loop = asyncio.get_running_loop()
    slices = _by_loop.get(loop)
    if slices is None:
        slices = _by_loop[loop] = _Slices()
    return loop, slices


def due() -> bool:
    """Whether this iteration of the loop has spent its slice. The first paced work of an
    iteration starts the slice: short work never waits."""
    loop, slices = _slices()
    if not slices.active:
        slices.active = True
        slices.due = clock() + PACE_SECONDS
        loop.call_soon(slices.end)
        return False
    return clock() >= slices.due


async def next_turn() -> None:
    """Wait for the loop's next iteration (call after `due()` said the slice is spent)."""
    loop, slices = _slices()
    if not slices.active:
        return  # the slice ended meanwhile
    if slices.turn is None:
        slices.turn = loop.create_future()
    await slices.turn


async def paced(rows: Iterable[Row], build: Callable[[Row], Item]) -> AsyncIterator[Item]:
    """`build(row)` for each row, waiting for the next turn whenever the slice is spent."""
    for row in rows:
        # The time between two items includes the executor completing the previous one.
        if due():
            await next_turn()
        yield build(row)
