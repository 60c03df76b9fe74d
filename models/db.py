"""Database configuration, start-up (migrations applied first) and shutdown."""

from __future__ import annotations

import logging
from typing import Any

from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.context import TortoiseContext
from tortoise.migrations.api import migrate

from models.settings import DEFAULT_DATABASE_URL

log = logging.getLogger(__name__)

APP_LABEL = "models"


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The Tortoise configuration for one database URL (`sqlite://PATH` or `postgres://...`)."""
    return {
        "connections": {"default": database_url},
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
    config = tortoise_config(database_url)
    await migrate(config=config)
    await Tortoise.close_connections()
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
