"""Fixtures: every behaviour test runs once per backend (SQLite alone; PostgreSQL with Redis)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from graphql_api.app import create_app
from models.settings import Settings
from tests.services import fresh_postgres_database, redis_namespace

BACKENDS = ["sqlite", "postgres-redis"]


@pytest.fixture(scope="session", params=BACKENDS)
async def settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Settings]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "workflows.sqlite3"
        yield Settings(database_url=f"sqlite://{path}")
        return
    async with fresh_postgres_database() as database_url, redis_namespace() as (url, prefix):
        yield Settings(database_url=database_url, redis_url=url, redis_prefix=prefix)


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound to the app in this process (lifespan run: migrations, cache)."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


class QueryCounter(logging.Handler):
    """Counts the SQL statements Tortoise sends (it logs each one at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            self.statements.append(message)

    def reset(self) -> None:
        self.statements.clear()


@pytest.fixture
def sql_queries() -> Iterator[QueryCounter]:
    logger = logging.getLogger("tortoise.db_client")
    counter = QueryCounter()
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(previous)


REPO = Path(__file__).resolve().parent.parent
