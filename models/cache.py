"""Cache-aside with versioned keys, in Redis or in-process, behind one interface.

Every cached group (one workflow, the workflow list) has a version token. A read looks up the
token and the data stored under it in one round trip; on a miss it loads from the database and
stores the result under the token it saw. A write commits, then replaces the token. A reader
that loaded old data before the write therefore stores it under a token nobody asks for any
more: once a write has returned, no read can see the old value (the classic cache-aside race
cannot resurrect it). Tokens are fresh random strings, never counters, so a version key that
expired or was evicted can only cause a miss, never make old data current again; that is why
version keys may carry a TTL, which keeps reads of absent ids from growing Redis without bound.

With Redis unreachable, reads go to the database and say so in the log; a failed invalidation
is retried in the background, and until it succeeds this process bypasses the cache for that
group. The TTL bounds what a lost invalidation could cost other processes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.outages import Outage

log = logging.getLogger(__name__)

# Redis key layout, below the configured prefix:
VERSION_KEY = "ver:{group}"  # the current token of a group
DATA_KEY = "data:{group}:{token}:{variant}"  # a value cached under one token of a group
# How long a failed invalidation waits before it is tried again, doubling up to the cap.
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
# In-process cache bound, so that listing every page of a large table can't grow memory.
MEMORY_MAX_ENTRIES = 10_000

# Redis returns the group's token (creating one when absent) and the value under it, at once.
_GET_VERSIONED = """
local token = redis.call('GET', KEYS[1])
if not token then
  token = ARGV[3]
  redis.call('SET', KEYS[1], token, 'EX', ARGV[4])
end
return {token, redis.call('GET', ARGV[1] .. token .. ARGV[2])}
"""


class CacheBackend(Protocol):
    name: str

    async def get_versioned(self, group: str, variant: str) -> tuple[str, bytes | None]: ...
    async def set(self, group: str, token: str, variant: str, value: bytes) -> None: ...
    async def bump(self, groups: tuple[str, ...]) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class MemoryBackend:
    """In-process: one process only, which is what the embedded default runs."""

    name = "memory"

    def __init__(self, ttl_seconds: int) -> None:
        self._ttl = ttl_seconds
        self._tokens: OrderedDict[str, str] = OrderedDict()
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._counter = itertools.count(1)

    def _token(self, group: str) -> str:
        token = self._tokens.get(group)
        if token is None:
            # Forgetting a token is safe (the counter never repeats), so this map is bounded too.
            token = self._tokens[group] = str(next(self._counter))
            if len(self._tokens) > MEMORY_MAX_ENTRIES:
                self._tokens.popitem(last=False)
        else:
            self._tokens.move_to_end(group)
        return token

    async def get_versioned(self, group: str, variant: str) -> tuple[str, bytes | None]:
        token = self._token(group)
        key = DATA_KEY.format(group=group, token=token, variant=variant)
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            return token, None
        self._data.move_to_end(key)
        return token, entry[1]

    async def set(self, group: str, token: str, variant: str, value: bytes) -> None:
        if self._tokens.get(group) != token:
            return  # written meanwhile: the value may be old, and nobody would read it anyway
        key = DATA_KEY.format(group=group, token=token, variant=variant)
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > MEMORY_MAX_ENTRIES:
            self._data.popitem(last=False)

    async def bump(self, groups: tuple[str, ...]) -> None:
        for group in groups:
            self._tokens[group] = str(next(self._counter))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()


class NullBackend:
    """No caching at all (`WORKFLOW_CACHE_TTL=0`): every read goes to the database."""

    name = "none"

    async def get_versioned(self, group: str, variant: str) -> tuple[str, bytes | None]:
        return "", None

    async def set(self, group: str, token: str, variant: str, value: bytes) -> None:
        return None

    async def bump(self, groups: tuple[str, ...]) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, prefix: str, ttl_seconds: int) -> None:
        # Short timeouts: a Redis that hangs must cost a read little before it falls back.
        self._redis = Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
        )
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._script = self._redis.register_script(_GET_VERSIONED)
        # Fresh tokens: random per process, a counter within it (no system call per read).
        self._token_prefix = secrets.token_hex(6)
        self._tokens = itertools.count(1)

    def _new_token(self) -> str:
        return f"{self._token_prefix}{next(self._tokens):x}"

    def _version_key(self, group: str) -> str:
        return self._prefix + VERSION_KEY.format(group=group)

    async def get_versioned(self, group: str, variant: str) -> tuple[str, bytes | None]:
        # The script builds DATA_KEY as ARGV[1] .. token .. ARGV[2].
        token, value = await self._script(
            keys=[self._version_key(group)],
            args=[
                f"{self._prefix}data:{group}:",
                f":{variant}",
                self._new_token(),
                self._ttl,
            ],
        )
        return token.decode(), value

    async def set(self, group: str, token: str, variant: str, value: bytes) -> None:
        key = self._prefix + DATA_KEY.format(group=group, token=token, variant=variant)
        await self._redis.set(key, value, ex=self._ttl)

    async def bump(self, groups: tuple[str, ...]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for group in groups:
                pipe.set(self._version_key(group), self._new_token(), ex=self._ttl)
            await pipe.execute()

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


class Cache:
    """Cache-aside reads and invalidations over a backend; tolerant of the backend failing."""

    def __init__(self, backend: CacheBackend) -> None:
        self.backend = backend
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._unconfirmed: set[str] = set()  # groups whose invalidation has not reached Redis
        self._retry_task: asyncio.Task[None] | None = None
        # One warning per Redis outage, however many reads fail in it.
        self.outage = Outage(log, "Redis (cache)")

    async def read(self, group: str, variant: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached value of (group, variant), or `load()`'s answer, which is then cached."""
        if group in self._unconfirmed:
            return await load()
        try:
            token, cached = await self.backend.get_versioned(group, variant)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return await load()
        self.outage.answered()
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        value = await load()
        try:
            await self.backend.set(group, token, variant, value)
        except (RedisError, OSError) as exc:
            self._failed(exc)
        return value

    async def invalidate(self, *groups: str) -> None:
        """Make every later read of these groups miss. Call after the write has committed."""
        try:
            await self.backend.bump(groups)
        except (RedisError, OSError) as exc:
            self.errors += 1
            # Until it goes through, this process reads these groups from the database.
            self.outage.failed(exc, "invalidations are retried in the background")
            self._unconfirmed.update(groups)
            if self._retry_task is None or self._retry_task.done():
                self._retry_task = asyncio.create_task(self._retry_invalidations())

    async def _retry_invalidations(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while self._unconfirmed:
            await asyncio.sleep(delay)
            groups = tuple(self._unconfirmed)
            try:
                await self.backend.bump(groups)
            except (RedisError, OSError):
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            self._unconfirmed.difference_update(groups)
            log.info("cache invalidation of %s went through", groups)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.outage.failed(exc, "reads go to the database")

    @property
    def backend_name(self) -> str:
        return self.backend.name

    async def ping(self) -> None:
        await self.backend.ping()

    async def close(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
        await self.backend.close()


def make_cache(redis_url: str | None, prefix: str, ttl_seconds: int) -> Cache:
    """Redis when a URL is configured, in-process otherwise; none with a TTL of 0."""
    if ttl_seconds <= 0:
        return Cache(NullBackend())
    if redis_url:
        return Cache(RedisBackend(redis_url, prefix, ttl_seconds))
    return Cache(MemoryBackend(ttl_seconds))


_current: Cache | None = None


def set_cache(cache: Cache | None) -> None:
    global _current
    _current = cache


def configured_cache() -> Cache | None:
    """This process's cache, or None where none is configured (the execution service)."""
    return _current


def current_cache() -> Cache:
    if _current is None:
        raise RuntimeError("the cache is not configured: call set_cache() at start-up")
    return _current
