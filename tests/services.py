"""Test services: a fresh PostgreSQL database and a private Redis namespace per test session.

Under CI (`CI=true`) a service that does not answer fails the run; elsewhere its tests skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg
import pytest
from redis.asyncio import Redis

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
# Tests use a Redis database number of their own, and a key prefix unique to the session.
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

if TYPE_CHECKING:
    from exec_service.saq_queue import TaskQueue


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not available: {exc}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new, empty database; dropped afterwards, connections and all."""
    name = f"wf_test_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)
        raise
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(POSTGRES_ADMIN_URL, name)
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def redis_namespace() -> AsyncIterator[tuple[str, str]]:
    """(redis URL, key prefix) for this session; every key under the prefix is deleted after,
    and so are SAQ's keys for queues named with it (SAQ files them under `saq:`)."""
    client = Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except OSError as exc:
        await client.aclose()
        unavailable("Redis", exc)
        raise
    except Exception as exc:
        await client.aclose()
        unavailable("Redis", exc)
        raise
    prefix = f"test-{secrets.token_hex(6)}:"
    try:
        yield REDIS_TEST_URL, prefix
    finally:
        for pattern in (f"{prefix}*", f"saq:*{prefix}*"):
            async for key in client.scan_iter(match=pattern, count=1000):
                await client.delete(key)
        await client.aclose()


@asynccontextmanager
async def server_environment(
    backend: str, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str] | None = None
) -> AsyncIterator[dict[str, str]]:
    """The environment of a server process of a test's own, on `backend`: `sqlite` (a fresh
    file) or `postgres-redis` (a fresh database and Redis namespace), with `env` on top."""
    env = env or {}
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("server") / "db.sqlite3"
        yield env | {"DATABASE_URL": f"sqlite://{path}"}
        return
    async with fresh_postgres_database() as database_url, redis_namespace() as (url, prefix):
        yield env | {
            "DATABASE_URL": database_url,
            "REDIS_URL": url,
            "WORKFLOW_REDIS_PREFIX": prefix,
        }


@asynccontextmanager
async def saq_queue() -> AsyncIterator[TaskQueue]:
    """A connected SAQ queue under a fresh prefix (redis_namespace deletes its keys after)."""
    from exec_service.worker import make_queue

    async with redis_namespace() as (url, prefix):
        queue = make_queue(url, prefix)
        await queue.connect()
        try:
            yield queue
        finally:
            await queue.disconnect()
