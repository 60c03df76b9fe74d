"""Telling "the database is not answering" from every other error.

Such an error says nothing about the request: the same call may work in a moment. The HTTP
planes answer it 503 with Retry-After, gRPC `UNAVAILABLE`, and the engine retries its writes
until the database is back rather than drop the state it holds (a task whose attempt ended
must not run again because its end could not be written for a few seconds)."""

from __future__ import annotations

import logging

import asyncpg
from tortoise.exceptions import DBConnectionError

from models.outages import Outage

# What a client is told, and after how many seconds it should try again.
UNAVAILABLE_MESSAGE = "The database is not reachable at the moment; try again shortly"
RETRY_AFTER_SECONDS = 5

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    # Refused, reset, timed out (TimeoutError is an OSError): the server is not there.
    OSError,
    DBConnectionError,
    # asyncpg: the connection broke...
    asyncpg.PostgresConnectionError,
    # ...or its state was left half-way when the server cut it ("cannot switch to state 12;
    # another operation is in progress", seen when PostgreSQL stopped under load)...
    asyncpg.InternalClientError,
    # ...or the server is stopping or starting (57P01, 57P02, 57P03).
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


def round_failed(
    error: BaseException, what: str, outage: Outage, consequence: str, log: logging.Logger
) -> None:
    """A background round (`what`: lease renewal, schedule ticks, pruning) failed. A database
    that does not answer is an outage, warned of once with its `consequence`; anything else is
    logged with its stack. Either way the caller tries again next round."""
    if database_unavailable(error):
        outage.failed(error, consequence)
    else:
        log.exception("%s failed; trying again next round", what)


def database_unavailable(error: BaseException) -> bool:
    """Whether `error`, or what it was raised from, is the database not answering."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 5:
        if isinstance(current, _UNAVAILABLE):
            return True
        # ...or the pool or connection closed under us (other InterfaceErrors are misuse,
        # which trying again cannot mend).
        if isinstance(current, asyncpg.InterfaceError) and "clos" in str(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


class _QuietPoolDuringOutages(logging.Filter):
    """asyncpg's pool logs "Failed to restore the pool connection floor" with a traceback
    each time it tries to reconnect while the database is down. The components that use the
    database warn once per outage instead (models.outages)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not database_unavailable(error)


_QUIET_POOL = _QuietPoolDuringOutages()


def quiet_pool_during_outages() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if _QUIET_POOL not in pool_log.filters:
        pool_log.addFilter(_QUIET_POOL)
