"""Response shapes of the REST routes, for `/openapi.json` (the routes render JSON themselves)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from models.inputs import TaskCreate, WorkflowUpdate


class TaskOut(TaskCreate):
    id: int
    workflow_id: int


class WorkflowOut(WorkflowUpdate):
    id: int
    created_at: datetime
    updated_at: datetime
    tasks: list[TaskOut]


class Success(BaseModel):
    success: bool


class TaskRunOut(BaseModel):
    task_id: int
    name: str
    order: int
    status: str
    attempts: int
    started_at: datetime | None
    completed_at: datetime | None
    output: dict[str, Any] | None
    error: str | None
    # As the action received them (templates rendered) once the task started.
    parameters: dict[str, Any]


class ExecutionOut(BaseModel):
    id: int
    workflow_id: int
    status: str
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    tasks: list[TaskRunOut]
    input: dict[str, Any] | None
    # {task name: output} of the completed tasks.
    output: dict[str, Any]
    triggered_by: str
    retry_of: int | None


class ScheduleOut(BaseModel):
    id: int
    workflow_id: int
    cron: str | None
    interval_seconds: int | None
    timezone: str
    input: dict[str, Any] | None
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
