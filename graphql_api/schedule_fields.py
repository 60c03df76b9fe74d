"""GraphQL for schedules: the Schedule type, ScheduleInput, and their query and mutations
(reading needs `viewer`, changing needs `admin`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from graphql_api.auth import Needs
from graphql_api.inputs import parse_id, schedule_in
from models import schedules


@strawberry.type
class Schedule:
    id: strawberry.ID
    workflow_id: strawberry.ID
    cron: str | None = strawberry.field(description="Five-field cron, in `timezone`.")
    interval_seconds: int | None = strawberry.field(description="Or a tick every N seconds.")
    timezone: str = strawberry.field(description="IANA zone of `cron`, e.g. Europe/Berlin.")
    input: JSON | None = strawberry.field(description="The input of each execution it starts.")
    enabled: bool
    next_run_at: datetime | None = strawberry.field(description="Null while disabled.")
    last_run_at: datetime | None
    created_at: datetime

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Schedule:
        def moment(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value is not None else None

        return cls(
            id=strawberry.ID(str(row["id"])),
            workflow_id=strawberry.ID(str(row["workflow_id"])),
            cron=row["cron"],
            interval_seconds=row["interval_seconds"],
            timezone=row["timezone"],
            input=row["input"],
            enabled=row["enabled"],
            next_run_at=moment(row["next_run_at"]),
            last_run_at=moment(row["last_run_at"]),
            created_at=datetime.fromisoformat(row["created_at"]),
        )


@strawberry.input(description="Exactly one of cron and intervalSeconds.")
class ScheduleInput:
    cron: str | None = None
    interval_seconds: int | None = None
    timezone: str = "UTC"
    input: JSON | None = None
    enabled: bool = True


@strawberry.type
class ScheduleQuery:
    @strawberry.field(
        description="Schedules, of one workflow when given.", permission_classes=[Needs.VIEWER]
    )
    async def schedules(self, workflow_id: strawberry.ID | None = None) -> list[Schedule]:
        workflow = parse_id(workflow_id, "workflowId") if workflow_id is not None else None
        return [Schedule.from_dict(row) for row in await schedules.list_schedules(workflow)]


def _data(input: ScheduleInput) -> dict[str, Any]:
    return {
        "cron": input.cron,
        "interval_seconds": input.interval_seconds,
        "timezone": input.timezone,
        "input": input.input,
        "enabled": input.enabled,
    }


@strawberry.type
class ScheduleMutation:
    @strawberry.mutation(
        description="A schedule: its first tick is the first one after now.",
        permission_classes=[Needs.ADMIN],
    )
    async def create_schedule(self, workflow_id: strawberry.ID, input: ScheduleInput) -> Schedule:
        workflow = parse_id(workflow_id, "workflowId")
        row = await schedules.create_schedule(workflow, schedule_in(_data(input)))
        return Schedule.from_dict(row)

    @strawberry.mutation(
        description="Replace a schedule's timing, input and state; its next tick is counted "
        "from now (enabling it again does not run the ticks it missed).",
        permission_classes=[Needs.ADMIN],
    )
    async def update_schedule(self, id: strawberry.ID, input: ScheduleInput) -> Schedule:
        row = await schedules.update_schedule(parse_id(id), schedule_in(_data(input)))
        return Schedule.from_dict(row)

    @strawberry.mutation(
        description="Delete a schedule: no tick starts after this answer.",
        permission_classes=[Needs.ADMIN],
    )
    async def delete_schedule(self, id: strawberry.ID) -> bool:
        await schedules.delete_schedule(parse_id(id))
        return True
