"""Schedules: made, changed, listed and deleted here; a due tick taken here, exactly once.

A tick is taken in one transaction that moves the schedule's `next_run_at` on, conditionally
(the row still holds the tick this service read, and is enabled), and makes the tick's
execution, waiting (`pending`) for an engine with room. Two services that read the same tick
both try; the database lets one update through (PostgreSQL re-checks the condition after the
row lock, SQLite has one writer), and the other changes nothing. A crash before the commit
leaves the tick due; after it, the execution is there for any engine to start. Disabling or
deleting a schedule commits against the same row, so no tick is taken after it. The
execution's idempotency key is the tick (`schedule:<id>:<UTC time>`): a second guard, unique
per workflow, and what tells the ticks apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from tortoise.transactions import in_transaction

from models import executions as execution_store
from models.errors import WORKFLOW_NOT_FOUND, Conflict, NotFound
from models.executions import now, valid_id
from models.inputs import ScheduleIn
from models.schedule_times import check_timezone, due_tick, first_tick
from models.settings import whole_number
from models.tables import Schedule, Workflow
from models.workflows import iso

SCHEDULE_NOT_FOUND = "Schedule not found"
MAX_SCHEDULES_PER_WORKFLOW = whole_number("WORKFLOW_MAX_SCHEDULES", 100)


def schedule_dict(row: Schedule) -> dict[str, Any]:
    return {
        "id": row.id,
        "workflow_id": row.workflow_id,
        "cron": row.cron,
        "interval_seconds": row.interval_seconds,
        "timezone": row.timezone,
        "input": row.input,
        "enabled": row.enabled,
        # A disabled schedule has no next run.
        "next_run_at": iso(row.next_run_at) if row.enabled else None,
        "last_run_at": iso(row.last_run_at) if row.last_run_at else None,
        "created_at": iso(row.created_at),
    }


def _timing(body: ScheduleIn, moment: datetime) -> dict[str, Any]:
    zone = check_timezone(body.timezone)
    return {
        "cron": body.cron,
        "interval_seconds": body.interval_seconds,
        "timezone": body.timezone,
        "input": body.input,
        "enabled": body.enabled,
        "next_run_at": first_tick(body.cron, body.interval_seconds, zone, moment),
    }


async def create_schedule(workflow_id: int, body: ScheduleIn) -> dict[str, Any]:
    """A new schedule of the workflow; its first tick is the first one after now. Raises
    NotFound, or Conflict past MAX_SCHEDULES_PER_WORKFLOW."""
    if not valid_id(workflow_id):
        raise NotFound(WORKFLOW_NOT_FOUND)
    async with in_transaction("default") as connection:
        if not await Workflow.filter(id=workflow_id).using_db(connection).exists():
            raise NotFound(WORKFLOW_NOT_FOUND)
        count = await Schedule.filter(workflow_id=workflow_id).using_db(connection).count()
        if count >= MAX_SCHEDULES_PER_WORKFLOW:
            raise Conflict(
                f"Workflow {workflow_id} has {count} schedules, the most it may have "
                "(WORKFLOW_MAX_SCHEDULES)"
            )
        row = await Schedule.create(
            using_db=connection, workflow_id=workflow_id, **_timing(body, now())
        )
    return schedule_dict(row)


async def update_schedule(schedule_id: int, body: ScheduleIn) -> dict[str, Any]:
    """Replace a schedule's timing, input and state; its next tick is counted from now (so
    enabling it again does not run the ticks it missed while disabled). Raises NotFound."""
    if not valid_id(schedule_id):
        raise NotFound(SCHEDULE_NOT_FOUND)
    values = _timing(body, now())
    async with in_transaction("default") as connection:
        if not await Schedule.filter(id=schedule_id).using_db(connection).update(**values):
            raise NotFound(SCHEDULE_NOT_FOUND)
        row = await Schedule.filter(id=schedule_id).using_db(connection).get()
    return schedule_dict(row)


async def list_schedules(workflow_id: int | None) -> list[dict[str, Any]]:
    query = Schedule.all() if workflow_id is None else Schedule.filter(workflow_id=workflow_id)
    return [schedule_dict(row) for row in await query.order_by("id")]


async def get_schedule(schedule_id: int) -> dict[str, Any]:
    row = await Schedule.get_or_none(id=schedule_id) if valid_id(schedule_id) else None
    if row is None:
        raise NotFound(SCHEDULE_NOT_FOUND)
    return schedule_dict(row)


async def delete_schedule(schedule_id: int) -> None:
    if not valid_id(schedule_id) or not await Schedule.filter(id=schedule_id).delete():
        raise NotFound(SCHEDULE_NOT_FOUND)


async def next_ticks(limit: int) -> list[Schedule]:
    """Enabled schedules by their next tick, the soonest (or most overdue) first: the due ones,
    then the one the scheduler waits for (one indexed read for both)."""
    return await Schedule.filter(enabled=True).order_by("next_run_at").limit(limit)


def tick_key(schedule_id: int, tick: datetime) -> str:
    return f"schedule:{schedule_id}:{iso(tick)}"


async def take_tick(schedule: Schedule, moment: datetime, owner: str) -> int | None:
    """Take the schedule's due tick: the id of the execution it made (waiting for an engine),
    or None when another service took it first, or the schedule was disabled, changed or
    deleted since it was read. Ticks missed while no service ran are dropped, but for the
    latest."""
    zone = check_timezone(schedule.timezone)
    tick, after = due_tick(
        schedule.cron, schedule.interval_seconds, zone, schedule.next_run_at, moment
    )
    tick = max(tick, schedule.next_run_at)
    async with in_transaction("default") as connection:
        taken = (
            await Schedule.filter(id=schedule.id, enabled=True, next_run_at=schedule.next_run_at)
            .using_db(connection)
            .update(next_run_at=after, last_run_at=tick)
        )
        if not taken:
            return None
        new = await execution_store.create_execution(
            schedule.workflow_id,
            tick_key(schedule.id, tick),
            owner,
            0,
            # (A JSONTextField holds the object; its declared type is the text column's.)
            input=cast(dict[str, Any] | None, schedule.input),
            triggered_by=f"schedule:{schedule.id}",
            pending=True,
        )
    return new.id
