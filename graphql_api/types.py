"""GraphQL object types, built from the data layer's dicts (never from ORM rows)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from enum import Enum
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from models.errors import Invalid
from models.executions import execution_output
from models.inputs import INT32_MAX, Page
from models.pacing import paced

# The most items one GraphQL list page holds (`limit`). REST keeps its own bound (1,000, as the
# service it replaces had); GraphQL documents can nest and alias pages, so theirs is smaller,
# and the query cost rule (graphql_api/query_cost.py) counts with it.
MAX_PAGE = 100


def checked_page(skip: int, limit: int) -> Page:
    if not 0 <= limit <= MAX_PAGE:
        raise Invalid(f"Invalid input: limit must be between 0 and {MAX_PAGE}")
    try:
        return Page(skip=skip, limit=limit)
    except ValueError:
        raise Invalid(f"Invalid input: skip must be between 0 and {INT32_MAX}") from None


@strawberry.enum
class ExecutionType(Enum):
    SYNC = "sync"
    ASYNC = "async"


@strawberry.type
class Task:
    id: strawberry.ID
    workflow_id: strawberry.ID
    name: str
    description: str | None
    order: int
    execution_type: ExecutionType
    action: str
    parameters: JSON
    max_attempts: int
    timeout_seconds: float | None
    when: str | None = strawberry.field(
        description="A template expression: the task runs only if it holds when it would "
        "start (else it is skipped and the run goes on)."
    )

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Task:
        return cls(
            id=strawberry.ID(str(row["id"])),
            workflow_id=strawberry.ID(str(row["workflow_id"])),
            name=row["name"],
            description=row["description"],
            order=row["order"],
            execution_type=ExecutionType(row["execution_type"]),
            action=row["action"],
            parameters=row["parameters"],
            max_attempts=row["max_attempts"],
            timeout_seconds=row["timeout_seconds"],
            when=row.get("when"),
        )


@strawberry.type
class Workflow:
    id: strawberry.ID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    # The data layer loads a page of workflows with all their tasks in two queries, so the
    # tasks are already here: no per-workflow query, no DataLoader needed for this list.
    task_rows: strawberry.Private[list[dict[str, Any]]]
    max_concurrent_executions: int | None = strawberry.field(
        default=None,
        description="At most this many of its executions run at once (the rest wait pending).",
    )

    @strawberry.field(description="Its tasks, in running order.", graphql_type=list[Task])
    def tasks(self) -> AsyncIterator[Task]:
        # Paced: a workflow's 1,000 tasks completed in one go hold the loop some 100 ms.
        return paced(self.task_rows, Task.from_dict)

    @strawberry.field(
        description="This workflow's executions, newest first.", graphql_type=list["Execution"]
    )
    async def executions(
        self, info: strawberry.Info, skip: int = 0, limit: int = 20
    ) -> AsyncIterator[Execution]:
        page = checked_page(skip, limit)
        rows = await info.context["executions_loader"].load((int(self.id), page.skip, page.limit))
        return paced(rows, Execution.from_dict)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Workflow:
        return cls(
            id=strawberry.ID(str(row["id"])),
            name=row["name"],
            description=row["description"],
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
            task_rows=row["tasks"],
            max_concurrent_executions=row.get("max_concurrent_executions"),
        )


@strawberry.input
class TaskInput:
    name: str
    order: int
    description: str | None = None
    execution_type: ExecutionType = ExecutionType.SYNC
    action: str = "noop"
    # Null (the default) is {}: a default of {} itself cannot be shown by introspection
    # (graphql-core cannot write a JSON object as a literal), which broke GraphiQL's schema.
    parameters: JSON | None = None
    max_attempts: int = 1
    timeout_seconds: float | None = None
    when: str | None = None


@strawberry.input
class WorkflowInput:
    name: str
    description: str | None = None
    # On create: the tasks to create with it. On update: when given, the new task list
    # (replacing the old one); when left out, the tasks stay as they are.
    tasks: list[TaskInput] | None = None
    # At most this many of its executions run at once; null: no limit.
    max_concurrent_executions: int | None = None


@strawberry.enum
class ExecutionStatus(Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@strawberry.enum
class TaskRunStatus(Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@strawberry.type
class TaskRun:
    task_id: strawberry.ID
    name: str
    order: int
    status: TaskRunStatus
    attempts: int
    started_at: datetime | None
    completed_at: datetime | None
    output: JSON | None
    error: str | None
    parameters: JSON = strawberry.field(
        description="As the action received them (templates rendered) once the task started; "
        "as written before."
    )

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> TaskRun:
        return cls(
            task_id=strawberry.ID(str(row["task_id"])),
            name=row["name"],
            order=row["order"],
            status=TaskRunStatus(row["status"]),
            attempts=row["attempts"],
            started_at=_moment(row["started_at"]),
            completed_at=_moment(row["completed_at"]),
            output=row["output"],
            error=row["error"],
            parameters=row["parameters"],
        )


@strawberry.type
class Execution:
    id: strawberry.ID
    workflow_id: strawberry.ID
    status: ExecutionStatus
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    run_rows: strawberry.Private[list[dict[str, Any]]]
    input: JSON | None = strawberry.field(description="The JSON object it was started with.")
    output: JSON = strawberry.field(description="{task name: output} of its completed tasks.")
    triggered_by: str = strawberry.field(
        description="Who started it: an API key's name, schedule:<id>, trigger:<id>, anonymous."
    )
    retry_of: strawberry.ID | None = strawberry.field(
        description="The failed or cancelled execution this one retries."
    )

    @strawberry.field(description="Its task runs, in running order.", graphql_type=list[TaskRun])
    def task_runs(self) -> AsyncIterator[TaskRun]:
        # Paced, as a workflow's tasks are.
        return paced(self.run_rows, TaskRun.from_dict)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Execution:
        return cls(
            id=strawberry.ID(str(row["id"])),
            workflow_id=strawberry.ID(str(row["workflow_id"])),
            status=ExecutionStatus(row["status"]),
            started_at=_moment(row["started_at"]),
            completed_at=_moment(row["completed_at"]),
            error=row["error"],
            run_rows=row["tasks"],
            input=row["input"],
            output=cast(JSON, execution_output(row["tasks"])),
            triggered_by=row["triggered_by"],
            retry_of=strawberry.ID(str(row["retry_of"])) if row["retry_of"] else None,
        )


@strawberry.type
class ExecutionEvent:
    execution_id: strawberry.ID
    status: ExecutionStatus
    # The task run whose change this event reports; null for the first event (the current
    # state) and for changes of the execution alone.
    task_id: strawberry.ID | None
    task_status: TaskRunStatus | None
    at: datetime
    execution: Execution


@strawberry.type
class Trigger:
    id: strawberry.ID
    workflow_id: strawberry.ID
    name: str
    path: str = strawberry.field(description="Where deliveries go: POST, signed (see README).")
    created_at: datetime

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Trigger:
        return cls(
            id=strawberry.ID(str(row["id"])),
            workflow_id=strawberry.ID(str(row["workflow_id"])),
            name=row["name"],
            path=row["path"],
            created_at=datetime.fromisoformat(row["created_at"]),
        )


@strawberry.type
class NewTrigger:
    id: strawberry.ID
    name: str
    path: str
    secret: str = strawberry.field(description="Signs deliveries: shown this once, never again.")


@strawberry.enum(name="Role")
class RoleEnum(Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


@strawberry.type
class ApiKey:
    id: strawberry.ID
    name: str
    role: RoleEnum
    prefix: str = strawberry.field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ApiKey:
        return cls(
            id=strawberry.ID(str(row["id"])),
            name=row["name"],
            role=RoleEnum(row["role"]),
            prefix=row["prefix"],
            created_at=datetime.fromisoformat(row["created_at"]),
            revoked_at=_moment(row["revoked_at"]),
        )


@strawberry.type
class NewApiKey:
    id: strawberry.ID
    name: str
    role: RoleEnum
    key: str = strawberry.field(description="The secret: shown this once, never again.")

    @classmethod
    def from_dict(cls, row: dict[str, Any], key: str) -> NewApiKey:
        return cls(
            id=strawberry.ID(str(row["id"])), name=row["name"], role=RoleEnum(row["role"]), key=key
        )
