"""Helpers for execution tests: make workflows, run them over gRPC, wait for the end."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from protos import execution_pb2 as pb

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

TERMINAL = {"completed", "failed", "cancelled"}


def noop(name: str, order: int, duration: float = 0, **fields: Any) -> dict[str, Any]:
    return {"name": name, "order": order, "parameters": {"duration": duration}} | fields


async def make_workflow(client: httpx.AsyncClient, tasks: list[dict[str, Any]]) -> int:
    response = await client.post("/workflows/", json={"name": "run", "tasks": tasks})
    assert response.status_code == 200, response.text
    workflow_id: int = response.json()["id"]
    return workflow_id


async def execute(stub: WorkflowExecutionAsyncStub, workflow_id: int, key: str = "") -> int:
    request = pb.ExecuteWorkflowRequest(workflow_id=workflow_id, idempotency_key=key)
    response = await stub.ExecuteWorkflow(request)
    assert response.status in {"in_progress", *TERMINAL}
    return int(response.execution_id)


async def wait_until_done(
    stub: WorkflowExecutionAsyncStub, execution_id: int, within: float = 30.0
) -> pb.WorkflowStatusResponse:
    """Follow the execution's stream until its terminal state (bounded in time)."""
    request = pb.GetWorkflowStatusRequest(execution_id=execution_id)

    async def follow() -> pb.WorkflowStatusResponse:
        last = None
        async for update in stub.WatchExecution(request):
            last = update
        assert last is not None
        return last

    final = await asyncio.wait_for(follow(), within)
    assert final.status in TERMINAL, final
    return final


async def run(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub, tasks: list[dict[str, Any]]
) -> pb.WorkflowStatusResponse:
    return await wait_until_done(stub, await execute(stub, await make_workflow(client, tasks)))


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def by_name(status: pb.WorkflowStatusResponse) -> dict[str, pb.TaskStatus]:
    return {task.name: task for task in status.tasks}
