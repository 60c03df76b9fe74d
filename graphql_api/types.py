"""GraphQL object types, built from the data layer's dicts (never from ORM rows)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

import strawberry
from strawberry.scalars import JSON


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
    tasks: list[Task]

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Workflow:
        return cls(
            id=strawberry.ID(str(row["id"])),
            name=row["name"],
            description=row["description"],
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
            tasks=[Task.from_dict(task) for task in row["tasks"]],
        )


@strawberry.input
class TaskInput:
    name: str
    order: int
    description: str | None = None
    execution_type: ExecutionType = ExecutionType.SYNC
    action: str = "noop"
    parameters: JSON = strawberry.field(default_factory=dict)
    max_attempts: int = 1
    timeout_seconds: float | None = None


@strawberry.input
class WorkflowInput:
    name: str
    description: str | None = None
    # On create: the tasks to create with it. On update: when given, the new task list
    # (replacing the old one); when left out, the tasks stay as they are.
    tasks: list[TaskInput] | None = None
