"""Database configuration, start-up (migrations applied first) and shutdown."""

from __future__ import annotations

import logging
from typing import Any

from tortoise import Tortoise, connections
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.context import TortoiseContext, get_current_context
from tortoise.migrations.api import migrate

from models.db_unavailable import quiet_pool_during_outages
from models.settings import DEFAULT_DATABASE_URL

log = logging.getLogger(__name__)

APP_LABEL = "models"


# Connections in the PostgreSQL pool unless the URL says (`?maxsize=`): every running
# execution writes, and a pool of Tortoise's default 5 queues them.
POSTGRES_POOL_SIZE = 20


# The group-commit statement (models/batched_changes.py) runs on a pool of its own, whose
# sessions keep one generic plan for it. Left to choose, PostgreSQL plans that statement anew on
# every call (its list of changes has no length to plan a generic plan by), and the planning
# cost about as much as the run: 0.2 ms a statement, measured (with the earlier array form).
# Only this pool is told; every other query keeps PostgreSQL's own choice.
# `benchmarks/group_commit_plan.py` prints the generic plan.
BATCHED_CONNECTION = "batched"
BATCHED_POOL_SIZE = 8


async def _keep_session(connection: Any) -> None:
    """asyncpg's pool resets a connection with a query on every release (advisory locks,
    cursors, LISTEN, SET). We hold none of those across queries, so the round trip is waste."""
    return None


def _pool(database_url: str) -> dict[str, Any]:
    """A PostgreSQL connection pool's configuration: the URL's, with sessions kept on release."""
    connection = expand_db_url(database_url)
    connection["credentials"]["reset"] = _keep_session
    return connection


def _connections(database_url: str) -> dict[str, Any]:
    if not database_url.startswith(("postgres://", "postgresql://", "asyncpg://")):
        return {"default": database_url}
    default, batched = _pool(database_url), _pool(database_url)
    default["credentials"].setdefault("maxsize", POSTGRES_POOL_SIZE)
    credentials = batched["credentials"]
    credentials["maxsize"] = BATCHED_POOL_SIZE
    settings = dict(credentials.get("server_settings") or {})
    credentials["server_settings"] = settings | {"plan_cache_mode": "force_generic_plan"}
    return {"default": default, BATCHED_CONNECTION: batched}


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The Tortoise configuration for one database URL (`sqlite://PATH` or `postgres://...`)."""
    connections = _connections(database_url)
    return {
        "connections": connections,
        "apps": {
            APP_LABEL: {
                "models": ["models.tables"],
                "migrations": "models.migrations",
                "default_connection": "default",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


# What `tortoise makemigrations` reads: `tortoise -c models.db.TORTOISE_ORM makemigrations`.
TORTOISE_ORM = tortoise_config(DEFAULT_DATABASE_URL)


_context: TortoiseContext | None = None


async def start_database(database_url: str) -> None:
    """Apply pending migrations, then open the connections every request shares."""
    global _context
    quiet_pool_during_outages()
    config = tortoise_config(database_url)
    await migrate(config=config)
    # The migration's connections, closed. (Not Tortoise.close_connections(), which does the
    # same and then logs "Tortoise-ORM shutdown": a misleading first line of every start.)
    migrating = get_current_context()
    if migrating is not None:
        await migrating.close_connections()
    # Global fallback: requests served on other tasks (uvicorn, gRPC) see the same ORM state
    # instead of "No TortoiseContext is currently active".
    _context = await Tortoise.init(config=config, _enable_global_fallback=True)
    log.info("database ready: %s", redact_url(database_url))


async def stop_database() -> None:
    """Close the connections and release the global ORM state, so that it can start again."""
    global _context
    if _context is not None:
        await _context.close_connections()
        _context = None
    # Tortoise caches each model's INSERT statement by connection name, not by dialect: a
    # process that starts again on another database (the test suite does) must not reuse them.
    EXECUTOR_CACHE.clear()


async def ping_database() -> None:
    """Raise unless the database answers a trivial query."""
    await connections.get("default").execute_query("SELECT 1")


def redact_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def placeholders(connection: Any, count: int) -> list[str]:
    """`count` parameter marks in the connection's dialect, for hand-written SQL."""
    if connection.capabilities.dialect == "postgres":
        return [f"${index}" for index in range(1, count + 1)]
    return ["?"] * count
