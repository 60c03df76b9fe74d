"""Turn GraphQL arguments into the data layer's validated inputs, or BAD_USER_INPUT errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from graphql_api.types import TaskInput, WorkflowInput
from models.errors import Invalid
from models.inputs import INT32_MAX, ScheduleIn, TaskCreate, WorkflowCreate, WorkflowUpdate

ModelT = TypeVar("ModelT", bound=BaseModel)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _validate(model: type[ModelT], data: dict[str, Any], argument: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            path = ".".join([argument, *(_camel(str(part)) for part in error["loc"])])
            problems.append(f"{path}: {error['msg']}")
        raise Invalid("Invalid input: " + "; ".join(problems)) from None


def parse_id(value: str, argument: str = "id") -> int:
    """An ID argument as the integer it stands for."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise Invalid(f"Invalid input: {argument}: must be a positive integer id")
    number = int(text)
    if not 1 <= number <= INT32_MAX:
        raise Invalid(f"Invalid input: {argument}: must be a positive integer id")
    return number


def _task_data(task: TaskInput) -> dict[str, Any]:
    return {
        "name": task.name,
        "description": task.description,
        "order": task.order,
        "execution_type": task.execution_type.value,
        "parameters": task.parameters if task.parameters is not None else {},
        "action": task.action,
        "max_attempts": task.max_attempts,
        "timeout_seconds": task.timeout_seconds,
        "when": task.when,
    }


def task_create(task: TaskInput, argument: str = "input") -> TaskCreate:
    return _validate(TaskCreate, _task_data(task), argument)


def workflow_create(data: WorkflowInput) -> WorkflowCreate:
    tasks = [_task_data(task) for task in data.tasks or []]
    payload = {
        "name": data.name,
        "description": data.description,
        "tasks": tasks,
        "max_concurrent_executions": data.max_concurrent_executions,
    }
    return _validate(WorkflowCreate, payload, "input")


def workflow_update(data: WorkflowInput) -> tuple[WorkflowUpdate, list[TaskCreate] | None]:
    if data.tasks is None:
        payload = {
            "name": data.name,
            "description": data.description,
            "max_concurrent_executions": data.max_concurrent_executions,
        }
        return _validate(WorkflowUpdate, payload, "input"), None
    full = workflow_create(data)
    update = WorkflowUpdate(
        name=full.name,
        description=full.description,
        max_concurrent_executions=full.max_concurrent_executions,
    )
    return update, full.tasks


def schedule_in(data: dict[str, Any]) -> ScheduleIn:
    return _validate(ScheduleIn, data, "input")
