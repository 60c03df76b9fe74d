"""Response shapes of the REST routes, for `/openapi.json` (the routes render JSON themselves)."""

from __future__ import annotations

from datetime import datetime

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
