"""Fixtures: every behaviour test runs once per backend (SQLite alone; PostgreSQL with Redis)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from graphql_api.app import EmbeddedExecution, create_app
from models.settings import Settings
from protos.execution_pb2_grpc import WorkflowExecutionStub
from tests.live_server import free_port
from tests.services import fresh_postgres_database, redis_namespace

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

# The http tasks of the tests call servers on this machine, which the http action refuses
# unless admitted: admitted here, for this process and every process it starts (servers, SAQ
# workers, Ray's workers). The tests of the refusal set the variable themselves.
os.environ["WORKFLOW_HTTP_ALLOW"] = "127.0.0.1"

BACKENDS = ["sqlite", "postgres-redis"]
# The execution behaviour suite runs on every executor too (on PostgreSQL with Redis):
# its modules say `pytestmark = pytest.mark.parametrize("backend", EXECUTION_BACKENDS, ...)`.
EXECUTION_BACKENDS = [*BACKENDS, "postgres-redis-saq", "postgres-redis-ray"]

# The name the in-process HTTP client gives the app (its Host header).
CLIENT_HOST = "test"

# Short retry delays keep the retry tests quick; the rules are the same at any scale.
FAST: dict[str, Any] = {"retry_base_seconds": 0.05, "lease_seconds": 5.0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run an app of their own in this process (tests/test_tracing.py's `saq_app`)
    first: the ORM has one global context per process, and the session's `app` keeps it from
    the first test that uses it to the end of the session."""
    items.sort(key=lambda item: "saq_app" not in getattr(item, "fixturenames", ()))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the session's Ray before any test runs, if one will need it. Started late in a
    full run (this process already running gRPC servers and their threads, which Ray forks
    with a `preexec_fn`), one start here failed whole: three tries, and no raylet ever came
    up, not even to write its log. Started first, nothing else in the process is running."""
    if session.config.option.collectonly:
        return
    if any(
        item.path.name == "test_ray_executor.py" or "postgres-redis-ray" in item.nodeid
        for item in session.items
    ):
        from tests.ray_cluster import ensure_ray

        try:
            ensure_ray()
        except Exception:
            # The Ray tests try again when they start, and fail alone if Ray does not come up.
            logging.getLogger(__name__).exception("Ray did not start before the tests")


@dataclass(frozen=True)
class Backend:
    name: str
    settings: Settings
    executor: str  # asyncio, saq or ray


@pytest.fixture(scope="session", params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    name: str = request.param
    executor = name.removeprefix("postgres-redis-") if name.count("-") == 2 else "asyncio"
    if executor == "ray":
        from tests.ray_cluster import ensure_ray

        ensure_ray()
    if name == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "workflows.sqlite3"
        yield Backend(name, Settings(database_url=f"sqlite://{path}", **FAST), executor)
        return
    async with fresh_postgres_database() as database_url, redis_namespace() as (url, prefix):
        settings = Settings(database_url=database_url, redis_url=url, redis_prefix=prefix, **FAST)
        yield Backend(name, settings, executor)


@pytest.fixture(scope="session")
async def app(backend: Backend) -> AsyncIterator[FastAPI]:
    """The app as `workflow serve` runs it (execution service embedded), lifespan started."""
    embedded = EmbeddedExecution(executor=backend.executor, port=free_port())
    # The client below addresses the app by the name `test`, which a loopback API would refuse.
    settings = replace(backend.settings, allowed_hosts=(CLIENT_HOST,))
    application = create_app(settings, embedded)
    async with LifespanManager(application):
        yield application  # our lifespan keeps its state on app.state, not in lifespan state


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound to the app in this process."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{CLIENT_HOST}") as http:
        yield http


@pytest.fixture(scope="session")
async def stub(app: FastAPI) -> AsyncIterator[WorkflowExecutionAsyncStub]:
    """A gRPC client of the embedded execution service."""
    port = app.state.exec_service.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield WorkflowExecutionStub(channel)


# How store.claim_pending's look for pending executions reads, as Tortoise logs it.
PENDING_LOOK = "SELECT e.id, w.max_concurrent_executions AS cap, e.workflow_id FROM executions e"


class QueryCounter(logging.Handler):
    """Counts the SQL statements Tortoise sends (it logs each one at DEBUG). The embedded
    engine's lease rounds (renewals, take-over scans and the look for pending executions, every
    second or two) and the scheduler's looks run on their own schedule and are left out: a
    count that caught one would depend on timing."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            return
        if '"lease_owner"=' in message or '"lease_expires_at"<' in message:
            return
        if PENDING_LOOK in message and "'pending'" in message:
            return  # the lease round's look for pending executions (Engine.start_pending)
        if 'FROM "schedules"' in message:
            return  # the scheduler's look for due ticks, every second
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
