"""REST routes of the service we replace, kept byte-for-byte: thin adapters over the data layer.

Every route answers with and without its trailing slash (no redirect), as the original did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from graphql_api.auth import needs
from graphql_api.exec_client import ExecutionClient
from graphql_api.rest_shapes import ExecutionOut, ScheduleOut, Success, TaskOut, WorkflowOut
from models import executions as execution_store
from models import paced_json, retention, schedules
from models import workflows as store
from models.access import Role
from models.errors import WORKFLOW_NOT_FOUND, NotFound
from models.inputs import (
    INT32_MAX,
    ExecuteRequest,
    ScheduleIn,
    TaskCreate,
    WorkflowCreate,
    WorkflowUpdate,
)

router = APIRouter()

SUCCESS = b'{"success":true}'


def _json(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


def _route(method: str, path: str, response_model: Any, role: Role) -> Callable[[Any], Any]:
    """Register the endpoint at `path` and at `path` with its trailing slash toggled; callers
    whose role does not include `role` are answered 403."""

    def register(endpoint: Any) -> Any:
        twin = path[:-1] if path.endswith("/") else path + "/"
        checks = [needs(role)]
        router.add_api_route(
            path, endpoint, methods=[method], response_model=response_model, dependencies=checks
        )
        router.add_api_route(
            twin,
            endpoint,
            methods=[method],
            response_model=response_model,
            include_in_schema=False,
            dependencies=checks,
        )
        return endpoint

    return register


@_route("POST", "/workflows/", WorkflowOut, Role.ADMIN)
async def create_workflow(body: WorkflowCreate) -> Response:
    return _json(store.dumps(await store.create_workflow(body)))


@_route("GET", "/workflows/", list[WorkflowOut], Role.VIEWER)
async def list_workflows(
    skip: int = Query(0, ge=0, le=INT32_MAX),
    limit: int = Query(100, ge=0, le=1000),
) -> Response:
    return _json(await store.list_workflows_json(skip, limit))


@_route("GET", "/workflows/{workflow_id}", WorkflowOut, Role.VIEWER)
async def get_workflow(workflow_id: int) -> Response:
    return _json(await store.get_workflow_json(workflow_id))


@_route("PUT", "/workflows/{workflow_id}", WorkflowOut, Role.ADMIN)
async def update_workflow(workflow_id: int, body: WorkflowUpdate) -> Response:
    return _json(store.dumps(await store.update_workflow(workflow_id, body)))


@_route("DELETE", "/workflows/{workflow_id}", Success, Role.ADMIN)
async def delete_workflow(workflow_id: int) -> Response:
    await store.delete_workflow(workflow_id)
    return _json(SUCCESS)


@_route("POST", "/workflows/{workflow_id}/tasks/", TaskOut, Role.ADMIN)
async def add_task(workflow_id: int, body: TaskCreate) -> Response:
    return _json(store.dumps(await store.add_task(workflow_id, body)))


@_route("PUT", "/workflows/{workflow_id}/tasks/{task_id}", TaskOut, Role.ADMIN)
async def update_task(workflow_id: int, task_id: int, body: TaskCreate) -> Response:
    return _json(store.dumps(await store.update_task(workflow_id, task_id, body)))


@_route("DELETE", "/workflows/{workflow_id}/tasks/{task_id}", Success, Role.ADMIN)
async def delete_task(workflow_id: int, task_id: int) -> Response:
    await store.delete_task(workflow_id, task_id)
    return _json(SUCCESS)


def _authorization(request: Request) -> str | None:
    """The caller's key, passed on to the execution service (which checks it again)."""
    value: str | None = getattr(request.state, "authorization", None)
    return value


def _execution_client(request: Request) -> ExecutionClient:
    client: ExecutionClient = request.app.state.exec_client
    return client


async def _execution_json(execution_id: int) -> Response:
    snapshot = await execution_store.get_execution(execution_id)
    return _json(store.dumps(execution_store.public(snapshot)))


@_route("POST", "/workflows/{workflow_id}/execute", ExecutionOut, Role.OPERATOR)
async def execute_workflow(
    workflow_id: int, request: Request, body: ExecuteRequest | None = None
) -> Response:
    key = (body.idempotency_key or None) if body is not None else None
    input = body.input if body is not None else None
    if not execution_store.valid_id(workflow_id):
        raise NotFound(WORKFLOW_NOT_FOUND)
    execution_id = await _execution_client(request).execute(
        workflow_id, key, input, _authorization(request)
    )
    return await _execution_json(execution_id)


@_route("POST", "/executions/{execution_id}/retry", ExecutionOut, Role.OPERATOR)
async def retry_execution(execution_id: int, request: Request) -> Response:
    """A new execution of a failed or cancelled one; its completed tasks are not run again."""
    if not execution_store.valid_id(execution_id):
        raise NotFound(execution_store.EXECUTION_NOT_FOUND)
    new_id = await _execution_client(request).retry(execution_id, _authorization(request))
    return await _execution_json(new_id)


@_route("POST", "/executions/{execution_id}/cancel", ExecutionOut, Role.OPERATOR)
async def cancel_execution(execution_id: int, request: Request) -> Response:
    """Stop the execution's running tasks and mark it cancelled (an ended one stays as it is)."""
    if not execution_store.valid_id(execution_id):
        raise NotFound(execution_store.EXECUTION_NOT_FOUND)
    await _execution_client(request).cancel(execution_id, _authorization(request))
    return await _execution_json(execution_id)


@_route("GET", "/executions/{execution_id}", ExecutionOut, Role.VIEWER)
async def get_execution(execution_id: int) -> Response:
    return await _execution_json(execution_id)


@_route("DELETE", "/executions/{execution_id}", Success, Role.OPERATOR)
async def delete_execution(execution_id: int) -> Response:
    """Delete an ended execution with its task runs (409 while it is pending or running)."""
    await retention.delete_execution(execution_id)
    return _json(SUCCESS)


@_route("GET", "/workflows/{workflow_id}/executions", list[ExecutionOut], Role.VIEWER)
async def list_workflow_executions(
    workflow_id: int,
    skip: int = Query(0, ge=0, le=INT32_MAX),
    limit: int = Query(100, ge=0, le=1000),
) -> Response:
    await store.get_workflow_json(workflow_id)  # 404 for a workflow that does not exist
    rows = await execution_store.list_executions(workflow_id, skip, limit)
    # Encoded an execution at a time: 1,000 executions of 1,000 tasks are many megabytes.
    shown = [execution_store.public(row) for row in rows]
    return _json((await paced_json.dumps(shown, store.dumps_text, 1)).encode())


@_route("GET", "/workflows/{workflow_id}/schedules", list[ScheduleOut], Role.VIEWER)
async def list_schedules(workflow_id: int) -> Response:
    await store.get_workflow_json(workflow_id)  # 404 for a workflow that does not exist
    return _json(store.dumps(await schedules.list_schedules(workflow_id)))


@_route("POST", "/workflows/{workflow_id}/schedules", ScheduleOut, Role.ADMIN)
async def create_schedule(workflow_id: int, body: ScheduleIn) -> Response:
    """A schedule (exactly one of `cron` and `interval_seconds`); its first tick is the first
    one after now."""
    return _json(store.dumps(await schedules.create_schedule(workflow_id, body)))


@_route("GET", "/schedules/{schedule_id}", ScheduleOut, Role.VIEWER)
async def get_schedule(schedule_id: int) -> Response:
    return _json(store.dumps(await schedules.get_schedule(schedule_id)))


@_route("PUT", "/schedules/{schedule_id}", ScheduleOut, Role.ADMIN)
async def update_schedule(schedule_id: int, body: ScheduleIn) -> Response:
    """Replace the schedule's timing, input and state; its next tick is counted from now."""
    return _json(store.dumps(await schedules.update_schedule(schedule_id, body)))


@_route("DELETE", "/schedules/{schedule_id}", Success, Role.ADMIN)
async def delete_schedule(schedule_id: int) -> Response:
    await schedules.delete_schedule(schedule_id)
    return _json(SUCCESS)
