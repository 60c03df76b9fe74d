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
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any, Final, Protocol, TypeAlias

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from exec_service.redis_client import redis_client
from models.outages import Outage

log = logging.getLogger(__name__)

RESYNC: Final = b""  # never a real payload: every announcement is a non-empty JSON object
# What a subscriber gets: an announcement as JSON; or, when it was published in this process
# with the announcement itself, that object, shared by every watcher here and not to be
# changed (it saves encoding and decoding on the way, twice a task for each watcher).
Payload: TypeAlias = bytes | Mapping[str, Any]
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


def execution_channel(execution_id: int) -> str:
    return f"execution:{execution_id}"


class Subscription:
    def __init__(self, maxsize: int = QUEUE_SIZE) -> None:
        self._queue: asyncio.Queue[Payload] = asyncio.Queue(maxsize)

    def deliver(self, payload: Payload) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)

    async def get(self, within: float | None = None) -> Payload | None:
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
    async def publish(
        self, channel: str, payload: bytes, announcement: Mapping[str, Any] | None = None
    ) -> None: ...
    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...
    def claim(self, channel: str) -> None: ...
    def release(self, channel: str, *, ended: bool) -> None: ...
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

    def deliver(self, channel: str, payload: Payload) -> None:
        for subscription in tuple(self.channels.get(channel, ())):
            subscription.deliver(payload)

    def resync(self, channel: str) -> None:
        for subscription in tuple(self.channels.get(channel, ())):
            subscription.deliver(RESYNC)

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

    async def publish(
        self, channel: str, payload: bytes, announcement: Mapping[str, Any] | None = None
    ) -> None:
        self._fanout.deliver(channel, payload if announcement is None else announcement)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._fanout.subscribe(channel)

    def claim(self, channel: str) -> None:
        return None  # every announcement is local here

    def release(self, channel: str, *, ended: bool) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBus:
    """One pub/sub connection per process, subscribed at Redis only to the channels that have a
    watcher here and are not announced from here.

    A process that runs an execution `claim`s its channel: its own watchers of it get each
    announcement handed to them directly, and the process does not hear its own announcements
    back from Redis (reading them back was about a tenth of the execution service's CPU). Other
    processes' watchers subscribe at Redis, each channel once, confirmed before the watcher
    reads the state it starts from. When the runner goes (its execution ended, or moved to
    another process), a channel still watched here is subscribed at Redis, and its watchers
    re-read the state, in case the next owner announced something in between.
    """

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
        # Channels announced from here, with how many runners here announce each.
        self._sources: dict[str, int] = {}
        # Channels subscribed at Redis, each with a future set once Redis confirmed it...
        self._listening: dict[str, asyncio.Future[None]] = {}
        # ...and how many of its subscribe commands Redis has yet to confirm.
        self._unconfirmed: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly
        # One warning per Redis outage, however many publishes and subscribes fail in it.
        self.outage = Outage(log, "Redis (event bus)")

    def _key(self, channel: str) -> str:
        return self._prefix + REDIS_CHANNEL.format(channel=channel)

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        waiter = self._request(CONTROL_CHANNEL)
        await self._pubsub.subscribe(self._key(CONTROL_CHANNEL))
        self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")
        self._publisher = asyncio.create_task(self._publish_loop(), name="redis-bus-publisher")
        # Engines rely on the control channel from the start.
        await asyncio.wait_for(asyncio.shield(waiter), CONFIRM_SECONDS)

    def _request(self, channel: str) -> asyncio.Future[None]:
        """Note a subscribe command about to be sent; the future of its confirmation."""
        waiter = self._listening.get(channel)
        if waiter is None:
            waiter = self._listening[channel] = asyncio.get_running_loop().create_future()
        self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
        return waiter

    async def _listen(self, channel: str) -> None:
        """Subscribe `channel` at Redis (once, however many watchers), and wait until Redis
        confirms it: only then does it deliver what is published. With Redis away, the
        watchers go on with their re-reads of the database; `_reconcile` subscribes later."""
        assert self._pubsub is not None, "start() the bus first"
        waiter = self._listening.get(channel)
        if waiter is None:
            waiter = self._request(channel)
            try:
                await self._pubsub.subscribe(self._key(channel))
            except (RedisError, OSError) as exc:
                self._withdraw(channel, waiter)
                self.outage.failed(exc, "watchers re-read the database instead")
                return
        try:
            await asyncio.wait_for(asyncio.shield(waiter), CONFIRM_SECONDS)
        except TimeoutError:
            # The watcher goes on: if something passes it by, its quiet-bus re-read finds it.
            log.warning("Redis did not confirm a subscription to %s in time", channel)

    def _withdraw(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """Forget a subscribe command that never reached Redis."""
        left = self._unconfirmed.get(channel, 0) - 1
        if left > 0:
            self._unconfirmed[channel] = left
        else:
            self._unconfirmed.pop(channel, None)
        if self._listening.get(channel) is waiter:
            del self._listening[channel]
        if not waiter.done():
            waiter.set_result(None)

    async def _unlisten(self, channel: str) -> None:
        assert self._pubsub is not None
        waiter = self._listening.pop(channel, None)
        if waiter is None:
            return
        if not waiter.done():
            waiter.set_result(None)  # nobody waits on a subscription that is going
        with contextlib.suppress(RedisError, OSError):
            # If this fails, Redis may subscribe it again on reconnect: _confirmed undoes that.
            await self._pubsub.unsubscribe(self._key(channel))

    async def _read(self) -> None:
        assert self._pubsub is not None
        strip = len(self._prefix + REDIS_CHANNEL.format(channel=""))
        lost = False
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                self.outage.failed(exc, "watchers re-read the database instead")
                lost = True
                self._fanout.resync_all()
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            if lost:
                # Back: redis-py subscribed again what it knew of; subscribe what it did not.
                lost = False
                self._in_background(self._reconcile())
            if message is None:
                continue
            if message["type"] == "message":
                self._fanout.deliver(message["channel"].decode()[strip:], message["data"])
            elif message["type"] == "subscribe":
                self._confirmed(message["channel"].decode()[strip:])

    def _confirmed(self, channel: str) -> None:
        pending = self._unconfirmed.get(channel, 0)
        if pending == 0:
            # Not asked for just now: redis-py subscribed it again after a reconnect.
            if channel in self._listening:
                self._fanout.resync(channel)  # its watchers may have missed something meanwhile
            elif channel != CONTROL_CHANNEL:
                self._in_background(self._drop_stale(channel))  # nobody here wants it now
            return
        if pending > 1:
            self._unconfirmed[channel] = pending - 1
            return
        del self._unconfirmed[channel]
        waiter = self._listening.get(channel)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drop_stale(self, channel: str) -> None:
        assert self._pubsub is not None
        if channel not in self._listening:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(self._key(channel))

    async def _reconcile(self) -> None:
        """Subscribe the channels watched here that should be, and are not (their subscribe
        failed while Redis was away); their watchers re-read."""
        for channel in list(self._fanout.channels):
            if channel not in self._sources and channel not in self._listening:
                await self._listen(channel)
                self._fanout.resync(channel)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def publish(
        self, channel: str, payload: bytes, announcement: Mapping[str, Any] | None = None
    ) -> None:
        """Hand the announcement to this process's watchers (unless it comes back to them from
        Redis), and queue it for Redis; a single sender pipelines them to Redis in order.
        `announcement` is `payload` decoded, if the caller has it: watchers here get that."""
        if channel not in self._listening:
            self._fanout.deliver(channel, payload if announcement is None else announcement)
        try:
            self._outbox.put_nowait((channel, payload))
        except asyncio.QueueFull:
            # The change is committed; watchers re-read on their own schedule.
            self.outage.failed(RuntimeError("outbox full"), "announcements are dropped")

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
            # The changes are committed; watchers elsewhere re-read on their own schedule.
            self.outage.failed(exc, "announcements to other processes are dropped")
        else:
            self.outage.answered()

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        try:
            async with self._fanout.subscribe(channel) as subscription:
                if channel not in self._sources:
                    await self._listen(channel)
                yield subscription
        finally:
            if channel != CONTROL_CHANNEL and channel not in self._fanout.channels:
                await self._unlisten(channel)

    def claim(self, channel: str) -> None:
        """A runner here announces `channel` from now on."""
        self._sources[channel] = self._sources.get(channel, 0) + 1

    def release(self, channel: str, *, ended: bool) -> None:
        """That runner stopped. Unless it `ended` the execution (its watchers here have had the
        last announcement), a channel still watched here is heard from Redis from now on."""
        left = self._sources.get(channel, 0) - 1
        if left > 0:
            self._sources[channel] = left
            return
        self._sources.pop(channel, None)
        if ended:
            return
        if channel in self._fanout.channels and channel not in self._listening:
            self._in_background(self._hear_from_redis(channel))

    async def _hear_from_redis(self, channel: str) -> None:
        if channel not in self._fanout.channels or channel in self._sources:
            return  # its watchers left meanwhile, or a runner here took it back
        await self._listen(channel)
        if channel not in self._fanout.channels:
            await self._unlisten(channel)  # the last watcher left while it subscribed
            return
        self._fanout.resync(channel)  # another process may have announced in between

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        for task in [*self._background, self._publisher]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
                await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await self._redis.aclose()


def make_bus(redis_url: str | None, prefix: str) -> EventBus:
    if redis_url:
        return RedisBus(redis_url, prefix)
    return MemoryBus()
