"""The Redis event bus (exec_service/bus.py `RedisBus`), on a real Redis, with two buses standing
for two processes: a process hears its own executions' announcements without Redis, and
everything else through Redis, once each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from exec_service.bus import CONTROL_CHANNEL, RESYNC, RedisBus, Subscription
from tests.services import redis_namespace

CHANNEL = "execution:1"


@pytest.fixture
async def buses() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    async with redis_namespace() as (url, prefix):
        here, there = RedisBus(url, prefix), RedisBus(url, prefix)
        await here.start()
        await there.start()
        try:
            yield here, there
        finally:
            await here.close()
            await there.close()


async def subscribers_at_redis(bus: RedisBus, channel: str) -> int:
    [(_, count)] = await bus._redis.pubsub_numsub(bus._key(channel))
    return int(count)


async def nothing_more(subscription: Subscription) -> bool:
    return await subscription.get(within=0.2) is None


async def test_a_process_hears_its_own_executions_without_redis(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    here, there = buses
    here.claim(CHANNEL)
    async with here.subscribe(CHANNEL) as mine, there.subscribe(CHANNEL) as theirs:
        assert await subscribers_at_redis(here, CHANNEL) == 1  # the other process only
        await here.publish(CHANNEL, b'{"version": 1}')
        assert await mine.get(within=5) == b'{"version": 1}'
        assert await theirs.get(within=5) == b'{"version": 1}'
        assert await nothing_more(mine)
    assert await subscribers_at_redis(here, CHANNEL) == 0  # the last watcher left


async def test_watchers_here_get_the_announcement_itself_and_elsewhere_as_json(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    here, there = buses
    here.claim(CHANNEL)
    announcement = {"version": 2}
    async with here.subscribe(CHANNEL) as mine, there.subscribe(CHANNEL) as theirs:
        await here.publish(CHANNEL, b'{"version": 2}', announcement)
        assert await mine.get(within=5) is announcement  # not encoded and decoded
        assert await theirs.get(within=5) == b'{"version": 2}'


async def test_when_the_runner_goes_its_watchers_hear_the_next_owner(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    here, there = buses
    here.claim(CHANNEL)
    async with here.subscribe(CHANNEL) as mine:
        here.release(CHANNEL, ended=False)  # its lease moved to the other process
        # The watcher re-reads (the next owner may have announced meanwhile), then listens.
        assert await mine.get(within=5) == RESYNC
        assert await subscribers_at_redis(here, CHANNEL) == 1
        there.claim(CHANNEL)
        await there.publish(CHANNEL, b'{"version": 2}')
        assert await mine.get(within=5) == b'{"version": 2}'
        assert await nothing_more(mine)


async def test_watchers_of_an_execution_that_ended_here_stay_off_redis(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    here, _ = buses
    here.claim(CHANNEL)
    async with here.subscribe(CHANNEL) as mine:
        await here.publish(CHANNEL, b'{"version": 9, "status": "completed"}')
        here.release(CHANNEL, ended=True)  # the runner wrote the end, then stopped
        assert await mine.get(within=5) == b'{"version": 9, "status": "completed"}'
        assert await nothing_more(mine)  # no re-read asked for
        assert await subscribers_at_redis(here, CHANNEL) == 0


async def test_a_watcher_there_before_the_runner_hears_each_announcement_once(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    here, _ = buses
    async with here.subscribe(CHANNEL) as mine:  # not announced here yet: through Redis
        assert await subscribers_at_redis(here, CHANNEL) == 1
        here.claim(CHANNEL)  # a runner here takes it over
        await here.publish(CHANNEL, b'{"version": 3}')
        assert await mine.get(within=5) == b'{"version": 3}'
        assert await nothing_more(mine)  # not again from Redis


async def test_control_notices_reach_every_process_once(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    here, there = buses
    async with here.subscribe(CONTROL_CHANNEL) as mine, there.subscribe(CONTROL_CHANNEL) as theirs:
        await here.publish(CONTROL_CHANNEL, b'{"cancel": 1}')
        assert await mine.get(within=5) == b'{"cancel": 1}'
        assert await theirs.get(within=5) == b'{"cancel": 1}'
        assert await nothing_more(mine)
        assert await nothing_more(theirs)
    # The control channel stays subscribed: engines rely on it all along.
    assert await subscribers_at_redis(here, CONTROL_CHANNEL) == 2


async def test_many_watchers_of_one_channel_share_one_subscription(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    here, there = buses
    async with asyncio.TaskGroup() as group:
        entered = asyncio.Event()
        leave = asyncio.Event()
        count = 0

        async def watch() -> None:
            nonlocal count
            async with here.subscribe(CHANNEL) as subscription:
                count += 1
                if count == 10:
                    entered.set()
                await leave.wait()
                assert await subscription.get(within=5) == b'{"version": 4}'

        for _ in range(10):
            group.create_task(watch())
        await asyncio.wait_for(entered.wait(), 5)
        assert await subscribers_at_redis(here, CHANNEL) == 1
        await there.publish(CHANNEL, b'{"version": 4}')
        leave.set()
    assert await subscribers_at_redis(here, CHANNEL) == 0


async def test_a_runner_stopped_as_its_last_watcher_leaves_leaves_no_subscription(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    """A cancel on the process that runs the execution: the watcher sees the end and leaves
    while the runner's release (not ended: it was cancelled) would subscribe at Redis."""
    here, _ = buses
    here.claim(CHANNEL)
    async with here.subscribe(CHANNEL) as mine:
        await here.publish(CHANNEL, b'{"version": 7, "status": "cancelled"}')
        assert await mine.get(within=5) is not None
        here.release(CHANNEL, ended=False)
    await asyncio.gather(*here._background)  # what the release started, if anything
    assert await subscribers_at_redis(here, CHANNEL) == 0
    assert CHANNEL not in here._listening


async def test_a_watcher_that_starts_while_redis_is_away_is_not_refused(
    buses: tuple[RedisBus, RedisBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = buses
    assert here._pubsub is not None

    async def unreachable(*channels: str) -> None:
        raise ConnectionError("Redis is away")

    with monkeypatch.context() as patch:
        patch.setattr(here._pubsub, "subscribe", unreachable)
        async with here.subscribe(CHANNEL):  # goes on, re-reading the database meanwhile
            assert CHANNEL not in here._listening
        assert here._unconfirmed == {}
    # Redis is back: the next watcher subscribes at once (no confirmation left owed).
    async with asyncio.timeout(2), here.subscribe(CHANNEL) as mine:
        await there.publish(CHANNEL, b'{"version": 8}')
        assert await mine.get(within=5) == b'{"version": 8}'
