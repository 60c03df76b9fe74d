"""Reads and writes of workflows and their tasks, the functions both planes call.

Reads return the REST shape of contract section 2 (snake_case keys in the original service's
order, ISO 8601 timestamps) as JSON bytes, cached; `*_dict` variants parse them for callers that
want objects. Writes commit in one transaction, then invalidate the cache.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from models import paced_json
from models.cache import current_cache
from models.db import placeholders
from models.errors import TASK_NOT_FOUND, WORKFLOW_NOT_FOUND, Invalid, NotFound, shown
from models.inputs import (
    INT32_MAX,
    MAX_TASKS_PER_WORKFLOW,
    TaskCreate,
    WorkflowCreate,
    WorkflowUpdate,
)
from models.pacing import due, next_turn
from models.stages import stages
from models.tables import Task, Workflow
from models.templates import check_when, has_templates, parameter_references

# Cache groups: one per workflow, one for every page of the list.
LIST_GROUP = "workflows"


def workflow_group(workflow_id: int) -> str:
    return f"workflow:{workflow_id}"


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 as pydantic writes it, which is what the service we replace answered."""
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def dumps_text(value: Any) -> str:
    """JSON exactly as FastAPI's JSONResponse renders it (compact, no NaN), before UTF-8."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> bytes:
    """JSON exactly as FastAPI's JSONResponse renders it (compact, UTF-8, no NaN)."""
    return dumps_text(value).encode()


def task_dict(task: Task) -> dict[str, Any]:
    return _task_shape(
        task.workflow_id,
        task.id,
        task.name,
        task.description,
        task.order,
        task.execution_type,
        task.parameters,
        task.action,
        task.max_attempts,
        task.timeout_seconds,
        task.condition,
    )


def _task_shape(
    workflow_id: int,
    id: int,
    name: str,
    description: str | None,
    order: int,
    execution_type: str,
    parameters: Any,
    action: str,
    max_attempts: int,
    timeout_seconds: float | None,
    condition: str | None,
) -> dict[str, Any]:
    """A task as REST shows it, from a model (task_dict) or a row of _TASKS_OF (in its column
    order): one shape for both, so the cached page and a write's answer cannot drift apart."""
    row = {
        "name": name,
        "description": description,
        "order": order,
        "execution_type": execution_type,
        "parameters": parameters,
        "action": action,
        "max_attempts": max_attempts,
        "timeout_seconds": timeout_seconds,
        "id": id,
        "workflow_id": workflow_id,
    }
    # Only when set: a task without one answers byte for byte as the original service did.
    if condition is not None:
        row["when"] = condition
    return row


def workflow_dict(workflow: Workflow, tasks: list[Task]) -> dict[str, Any]:
    row = {
        "name": workflow.name,
        "description": workflow.description,
        "id": workflow.id,
        "created_at": iso(workflow.created_at),
        "updated_at": iso(workflow.updated_at),
        "tasks": [task_dict(task) for task in tasks],
    }
    # Only when set: a workflow without one answers byte for byte as the original service did.
    if workflow.max_concurrent_executions is not None:
        row["max_concurrent_executions"] = workflow.max_concurrent_executions
    return row


def _valid_id(value: int) -> bool:
    # Ids are int32 on every plane (the gRPC messages say so); anything else cannot exist, and
    # PostgreSQL would answer it with an out-of-range error rather than "no rows".
    return 1 <= value <= INT32_MAX


async def _workflows_json(workflows: list[Workflow]) -> list[str]:
    """Each workflow's JSON with its tasks, in two queries whatever their number.

    A workflow is made into text as soon as its rows are read, and its rows and dicts dropped:
    a page of workflows of 1,000 tasks is 100,000 rows, which alive all at once cost the
    garbage collector pauses of a tenth of a second (benchmarks/bench_loop_block.py).
    """
    texts: dict[int, str] = {}
    if workflows:
        by_id = {workflow.id: workflow for workflow in workflows}
        connection = Task._meta.db
        marks = ", ".join(placeholders(connection, len(by_id)))
        _, found = await connection.execute_query(_TASKS_OF.format(marks=marks), list(by_id))
        rows: list[Any] = found if isinstance(found, list) else list(found)
        del found  # rows alone holds them
        group_id: int | None = None
        group: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            rows[index] = None  # let it go now, not with the page
            if row[0] != group_id:
                if group_id is not None:
                    texts[group_id] = _workflow_text(by_id[group_id], group)
                group_id, group = row[0], []
            group.append(_task_row_dict(row))
            if due():
                await next_turn()
        if group_id is not None:
            texts[group_id] = _workflow_text(by_id[group_id], group)
    return [
        texts[workflow.id] if workflow.id in texts else _workflow_text(workflow, [])
        for workflow in workflows
    ]


def _workflow_text(workflow: Workflow, tasks: list[dict[str, Any]]) -> str:
    return dumps_text(workflow_dict(workflow, []) | {"tasks": tasks})


# The tasks of several workflows, the columns in _task_shape's order.
_TASKS_OF = (
    'SELECT workflow_id, id, name, description, "order", execution_type, parameters, action, '
    "max_attempts, timeout_seconds, condition FROM tasks WHERE workflow_id IN ({marks}) "
    'ORDER BY workflow_id, "order", id'
)


def _task_row_dict(row: Any) -> dict[str, Any]:
    """task_dict of a row of _TASKS_OF (an asyncpg Record or a sqlite3.Row: read by index)."""
    return _task_shape(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        json.loads(row[6]),
        row[7],
        row[8],
        row[9],
        row[10],
    )


async def _load_workflow_json(workflow_id: int) -> bytes:
    workflow = await Workflow.get_or_none(id=workflow_id)
    if workflow is None:
        # Absence is cached too, as JSON null: a later create gets a new id, and a delete bumps
        # the token, so "null" can never hide a workflow that exists.
        return b"null"
    return (await _workflows_json([workflow]))[0].encode()


async def get_workflow_json(workflow_id: int) -> bytes:
    """The workflow's REST JSON. Raises NotFound."""
    if not _valid_id(workflow_id):
        raise NotFound(WORKFLOW_NOT_FOUND)
    body = await current_cache().read(
        workflow_group(workflow_id), "", lambda: _load_workflow_json(workflow_id)
    )
    if body == b"null":
        raise NotFound(WORKFLOW_NOT_FOUND)
    return body


async def get_workflow(workflow_id: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await get_workflow_json(workflow_id))
    return result


async def find_workflow(workflow_id: int) -> dict[str, Any] | None:
    try:
        return await get_workflow(workflow_id)
    except NotFound:
        return None


async def _load_page_json(skip: int, limit: int) -> bytes:
    workflows = await Workflow.all().order_by("id").offset(skip).limit(limit)
    return ("[" + ",".join(await _workflows_json(list(workflows))) + "]").encode()


async def list_workflows_json(skip: int, limit: int) -> bytes:
    """A page of workflows ordered by id, as REST JSON."""
    if limit == 0:
        return b"[]"
    return await current_cache().read(
        LIST_GROUP, f"{skip}:{limit}", lambda: _load_page_json(skip, limit)
    )


async def list_workflows(skip: int, limit: int) -> list[dict[str, Any]]:
    return await paced_json.loads_list(await list_workflows_json(skip, limit))


async def _invalidate(workflow_id: int) -> None:
    await current_cache().invalidate(workflow_group(workflow_id), LIST_GROUP)


def _task_fields(data: TaskCreate) -> dict[str, Any]:
    fields = data.model_dump()
    fields["condition"] = fields.pop("when")
    return fields


async def _check_references(workflow_id: int, connection: BaseDBAsyncClient) -> None:
    """Every template of the workflow's tasks names only tasks of earlier stages, by a name no
    other task of the workflow has. Raises Invalid (the caller's transaction rolls back)."""
    tasks = await Task.filter(workflow_id=workflow_id).using_db(connection)
    if not any(task.condition or has_templates(task.parameters) for task in tasks):
        return
    names = Counter(task.name for task in tasks)
    earlier: set[str] = set()
    for stage in stages(tasks, lambda t: (t.order, t.id), lambda t: t.execution_type == "async"):
        for task in stage:
            found = dict(parameter_references(task.parameters))
            if task.condition:
                found["when"] = check_when(task.condition)
            for where, referenced in found.items():
                for name in sorted(referenced):
                    problem = None
                    if names[name] > 1:
                        problem = f"{names[name]} tasks of this workflow are named {name!r}"
                    elif name not in earlier:
                        # A name from a template: as long as the parameters, so cut short.
                        problem = f"no task named {shown(name)!r} runs in an earlier stage"
                    if problem is not None:
                        field = "when" if where == "when" else f"parameters.{where}"
                        raise Invalid(
                            f"Invalid input: task {task.name!r}: {field}: template: {problem}",
                            [
                                {
                                    "loc": ["body", "tasks", task.name, *field.split(".")],
                                    "msg": f"template: {problem}",
                                    "type": "value_error",
                                }
                            ],
                        )
        earlier |= {task.name for task in stage}


async def create_workflow(data: WorkflowCreate) -> dict[str, Any]:
    async with in_transaction("default") as connection:
        workflow = await Workflow.create(
            name=data.name,
            description=data.description,
            max_concurrent_executions=data.max_concurrent_executions,
        )
        for task in data.tasks:
            await Task.create(workflow_id=workflow.id, **_task_fields(task))
        await _check_references(workflow.id, connection)
    await _invalidate(workflow.id)
    return await get_workflow(workflow.id)


async def update_workflow(
    workflow_id: int, data: WorkflowUpdate, tasks: list[TaskCreate] | None = None
) -> dict[str, Any]:
    """Set name and description; with `tasks`, replace the task list too, in one transaction."""
    if not _valid_id(workflow_id):
        raise NotFound(WORKFLOW_NOT_FOUND)
    async with in_transaction("default") as connection:
        workflow = await Workflow.filter(id=workflow_id).select_for_update().first()
        if workflow is None:
            raise NotFound(WORKFLOW_NOT_FOUND)
        workflow.update_from_dict(data.model_dump())
        await workflow.save()
        if tasks is not None:
            await Task.filter(workflow_id=workflow_id).delete()
            for task in tasks:
                await Task.create(workflow_id=workflow_id, **_task_fields(task))
            await _check_references(workflow_id, connection)
    await _invalidate(workflow_id)
    return await get_workflow(workflow_id)


async def delete_workflow(workflow_id: int) -> None:
    """Delete the workflow with its tasks and executions. Raises NotFound."""
    if not _valid_id(workflow_id):
        raise NotFound(WORKFLOW_NOT_FOUND)
    async with in_transaction("default"):
        deleted = await Workflow.filter(id=workflow_id).delete()
    if not deleted:
        raise NotFound(WORKFLOW_NOT_FOUND)
    await _invalidate(workflow_id)


async def add_task(workflow_id: int, data: TaskCreate) -> dict[str, Any]:
    if not _valid_id(workflow_id):
        raise NotFound(WORKFLOW_NOT_FOUND)
    async with in_transaction("default") as connection:
        workflow = await Workflow.filter(id=workflow_id).select_for_update().first()
        if workflow is None:
            raise NotFound(WORKFLOW_NOT_FOUND)
        # Counted under the workflow's row lock: two adds at once cannot both pass the cap.
        if await Task.filter(workflow_id=workflow_id).count() >= MAX_TASKS_PER_WORKFLOW:
            raise Invalid(
                f"Invalid input: a workflow has at most {MAX_TASKS_PER_WORKFLOW} tasks "
                "(WORKFLOW_MAX_TASKS)",
                [
                    {
                        "loc": ["path", "workflow_id"],
                        "msg": f"the workflow has {MAX_TASKS_PER_WORKFLOW} tasks already, the "
                        "most it may have (WORKFLOW_MAX_TASKS)",
                        "type": "too_long",
                    }
                ],
            )
        task = await Task.create(workflow_id=workflow_id, **_task_fields(data))
        await _check_references(workflow_id, connection)
    await _invalidate(workflow_id)
    return task_dict(task)


async def update_task(workflow_id: int, task_id: int, data: TaskCreate) -> dict[str, Any]:
    if not (_valid_id(workflow_id) and _valid_id(task_id)):
        raise NotFound(TASK_NOT_FOUND)
    async with in_transaction("default") as connection:
        task = await Task.filter(id=task_id, workflow_id=workflow_id).select_for_update().first()
        if task is None:
            raise NotFound(TASK_NOT_FOUND)
        task.update_from_dict(_task_fields(data))
        await task.save()
        await _check_references(workflow_id, connection)
    await _invalidate(workflow_id)
    return task_dict(task)


async def delete_task(workflow_id: int, task_id: int) -> None:
    if not (_valid_id(workflow_id) and _valid_id(task_id)):
        raise NotFound(TASK_NOT_FOUND)
    async with in_transaction("default"):
        deleted = await Task.filter(id=task_id, workflow_id=workflow_id).delete()
    if not deleted:
        raise NotFound(TASK_NOT_FOUND)
    await _invalidate(workflow_id)
