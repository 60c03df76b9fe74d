"""The event bus: carries announcements of committed state changes to every watcher.

In-process when `REDIS_URL` is unset (one process), Redis pub/sub otherwise (any process).
Delivery is best effort by design: the database is the source of truth, every announcement
carries a version, and a watcher that may have missed something re-reads. A subscriber's queue
is bounded, so a slow watcher never slows the publisher: on overflow its queue is replaced by
a single RESYNC marker, which tells it to re-read the current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Final, Protocol

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from exec_service.redis_client import redis_client

log = logging.getLogger(__name__)

RESYNC: Final = b""  # never a real payload: every announcement is a non-empty JSON object
QUEUE_SIZE = 256  # announcements a subscriber may fall behind before it must re-read
CONTROL_CHANNEL = "control"  # engine-to-engine notices (cancel requests)
REDIS_CHANNEL = "events:{channel}"  # below the configured key prefix
RECONNECT_DELAY_SECONDS = 0.5
# Announcements waiting to go out to Redis; past this many (Redis stalled) new ones are dropped,
# and watchers catch up by re-reading.
OUTBOX_SIZE = 10_000
# Announcements sent in one pipelined round trip at most.
PUBLISH_BATCH = 500
# How long start() waits for Redis to confirm the subscription.
CONFIRM_SECONDS = 5.0
# How long close() gives the last announcements to reach Redis.
CLOSE_SECONDS = 5.0


def glob_escape(text: str) -> str:
    """`text` matched literally in a Redis glob pattern (PSUBSCRIBE, SCAN MATCH)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def execution_channel(execution_id: int) -> str:
    return f"execution:{execution_id}"


class Subscription:
    def __init__(self, maxsize: int = QUEUE_SIZE) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)

    def deliver(self, payload: bytes) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    async def get(self, within: float | None = None) -> bytes | None:
        """The next payload (RESYNC after an overflow), or None after `within` seconds."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            # Not asyncio.wait_for: on Python 3.11 that starts a task for every message.
            async with asyncio.timeout(within):
                return await self._queue.get()
        except TimeoutError:
            return None


class EventBus(Protocol):
    name: str

    async def start(self) -> None: ...
    async def publish(self, channel: str, payload: bytes) -> None: ...
    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class _LocalFanout:
    """Local subscribers by channel (both buses deliver through one of these)."""

    def __init__(self) -> None:
        self.channels: dict[str, set[Subscription]] = {}

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        subscription = Subscription()
        self.channels.setdefault(channel, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self.channels.get(channel, set())
            subscribers.discard(subscription)
            if not subscribers:
                self.channels.pop(channel, None)

    def deliver(self, channel: str, payload: bytes) -> None:
        for subscription in tuple(self.channels.get(channel, ())):
            subscription.deliver(payload)

    def resync_all(self) -> None:
        for subscribers in tuple(self.channels.values()):
            for subscription in tuple(subscribers):
                subscription.deliver(RESYNC)


class MemoryBus:
    name = "memory"

    def __init__(self) -> None:
        self._fanout = _LocalFanout()

    async def start(self) -> None:
        return None

    async def publish(self, channel: str, payload: bytes) -> None:
        self._fanout.deliver(channel, payload)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._fanout.subscribe(channel)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBus:
    """One pub/sub connection per process, subscribed once to every channel of ours (a pattern):
    a watcher starts with no round trip to Redis and no subscription to wait for, and
    delivery to local watchers is by channel, here. The cost is that every process receives
    every announcement, which at the sizes involved (a few KB each) is the cheaper side."""

    name = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        # The health check pings the pub/sub connection when it has been quiet for a while.
        self._redis = redis_client(url, health_check_interval=30)
        self._prefix = prefix
        self._fanout = _LocalFanout()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(OUTBOX_SIZE)
        # Set when Redis confirms the pattern: only then does it deliver what is published.
        self._confirmed = asyncio.Event()

    def _key(self, channel: str) -> str:
        return self._prefix + REDIS_CHANNEL.format(channel=channel)

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        # Every channel under our prefix; glob characters in the prefix itself are escaped.
        prefix = glob_escape(self._prefix)
        await self._pubsub.psubscribe(prefix + REDIS_CHANNEL.format(channel="*"))
        self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")
        self._publisher = asyncio.create_task(self._publish_loop(), name="redis-bus-publisher")
        # Watchers read the current state after subscribing: the pattern must be in force at
        # Redis before anyone relies on it, or what is published in between reaches nobody.
        await asyncio.wait_for(self._confirmed.wait(), CONFIRM_SECONDS)

    async def _read(self) -> None:
        assert self._pubsub is not None
        strip = len(self._prefix + REDIS_CHANNEL.format(channel=""))
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("event bus lost Redis (%s); watchers will re-read", exc)
                self._fanout.resync_all()
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            if message is None:
                continue
            if message["type"] == "pmessage":
                self._fanout.deliver(message["channel"].decode()[strip:], message["data"])
            elif message["type"] == "psubscribe":
                self._confirmed.set()

    async def publish(self, channel: str, payload: bytes) -> None:
        """Queue the announcement; a single sender pipelines them to Redis in order."""
        try:
            self._outbox.put_nowait((channel, payload))
        except asyncio.QueueFull:
            # The change is committed; watchers re-read on their own schedule.
            log.warning("event outbox full (Redis stalled?): dropping an announcement")

    async def _publish_loop(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < PUBLISH_BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            await self._send(batch)

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel, payload in batch:
                    pipe.publish(self._key(channel), payload)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("publishing %d announcements failed: %s", len(batch), exc)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        assert self._pubsub is not None, "start() the bus first"
        # The pattern subscription made in start() covers every channel: only local fan-out.
        return self._fanout.subscribe(channel)

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        leftover = []
        while not self._outbox.empty():
            leftover.append(self._outbox.get_nowait())
        if leftover:
            # Bounded: a Redis that stopped answering must not hold up the shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await self._send(leftover)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()


def make_bus(redis_url: str | None, prefix: str) -> EventBus:
    if redis_url:
        return RedisBus(redis_url, prefix)
    return MemoryBus()
