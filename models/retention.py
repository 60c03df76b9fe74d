"""Deleting executions: one at a time (`deleteExecution`), and the ended ones older than
WORKFLOW_RETENTION, in batches (the pruner of the execution service).

A batch is its own short transaction, and touches only executions that have ended: running
work never waits behind a prune for long, and a running execution is never deleted. Several
execution services may prune at once; deleting what another just deleted deletes nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta

from tortoise.transactions import in_transaction

from models.errors import Conflict, NotFound
from models.executions import EXECUTION_NOT_FOUND, now, valid_id
from models.statuses import EXECUTION_TERMINAL
from models.tables import Execution, TaskRun

# Executions deleted per transaction (with their runs) by the pruner.
PRUNE_BATCH = 200
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, variable: str) -> float:
    """`90s`, `15m`, `12h`, `30d` as seconds. Raises ValueError naming the variable."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{variable} must be a duration such as 90s, 15m, 12h or 30d: {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


async def delete_execution(execution_id: int) -> None:
    """Delete an ended execution with its task runs. Raises NotFound, or Conflict while it
    is pending or running (cancel it first)."""
    if not valid_id(execution_id):
        raise NotFound(EXECUTION_NOT_FOUND)
    async with in_transaction("default") as connection:
        execution = (
            await Execution.filter(id=execution_id).using_db(connection).select_for_update().first()
        )
        if execution is None:
            raise NotFound(EXECUTION_NOT_FOUND)
        if execution.status not in EXECUTION_TERMINAL:
            raise Conflict(
                f"Execution {execution_id} is {execution.status}: cancel it before deleting it"
            )
        await TaskRun.filter(execution_id=execution_id).using_db(connection).delete()
        await Execution.filter(id=execution_id).using_db(connection).delete()


async def prune(older_than: datetime, batch: int = PRUNE_BATCH, rest: float = 0.0) -> int:
    """Delete executions that ended before `older_than`, in batches; how many were deleted.

    After each batch, it rests `rest` times as long as the batch took, leaving the database to
    running work in between (benchmarks/bench_prune.py measures what pruning costs it)."""
    deleted = 0
    while True:
        began = time.perf_counter()
        rows = (
            await Execution.filter(status__in=list(EXECUTION_TERMINAL), completed_at__lt=older_than)
            .order_by("id")
            .limit(batch)
            .values("id")
        )
        ids = [int(row["id"]) for row in rows]
        if not ids:
            return deleted
        async with in_transaction("default") as connection:
            await TaskRun.filter(execution_id__in=ids).using_db(connection).delete()
            # Still ended: nothing else changes an ended execution, but say so anyway.
            deleted += (
                await Execution.filter(id__in=ids, status__in=list(EXECUTION_TERMINAL))
                .using_db(connection)
                .delete()
            )
        if len(ids) < batch:
            return deleted
        if rest:
            await asyncio.sleep((time.perf_counter() - began) * rest)


def cutoff(retention_seconds: float) -> datetime:
    return now() - timedelta(seconds=retention_seconds)
