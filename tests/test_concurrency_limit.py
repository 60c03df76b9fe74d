"""A workflow's `max_concurrent_executions` (issue 16): at most that many of its executions run
at once, the others wait `pending` and start, oldest first, as running ones end; executions of
other workflows are not held up behind them. Shown only when set (REST answers of workflows
without one are as they were). On the shared app, SQLite and PostgreSQL with Redis."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest

from models.tables import Execution
from tests.executions import execute, noop, wait_until_done

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub


async def test_no_more_than_the_limit_run_at_once(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    body = {"name": "capped", "max_concurrent_executions": 2, "tasks": [noop("t", 1, 0.3)]}
    made = await client.post("/workflows/", json=body)
    assert made.status_code == 200, made.text
    assert made.json()["max_concurrent_executions"] == 2
    workflow_id = made.json()["id"]
    free = await client.post("/workflows/", json={"name": "free", "tasks": [noop("t", 1, 0.1)]})
    assert "max_concurrent_executions" not in free.json()

    started = [await execute(stub, workflow_id) for _ in range(5)]
    # Another workflow's execution is not held up behind the waiting ones.
    other = await execute(stub, free.json()["id"])
    most = 0
    sampler_done = asyncio.Event()

    async def sample() -> None:
        nonlocal most
        while not sampler_done.is_set():
            running = await Execution.filter(workflow_id=workflow_id, status="in_progress").count()
            most = max(most, running)
            await asyncio.sleep(0.02)  # sampling interval

    sampler = asyncio.create_task(sample())
    assert (await wait_until_done(stub, other, within=5)).status == "completed"
    finals = [await wait_until_done(stub, execution_id) for execution_id in started]
    sampler_done.set()
    await sampler
    assert [final.status for final in finals] == ["completed"] * 5
    assert most == 2
    # Oldest first: they started in the order they were made.
    rows = await Execution.filter(id__in=started).order_by("id").values("id", "started_at")
    starts = [row["started_at"] for row in rows]
    assert starts == sorted(starts)


@pytest.mark.parametrize("value", [0, -1, 100_001, "many"])
async def test_a_limit_out_of_range_is_refused(client: httpx.AsyncClient, value: object) -> None:
    answer = await client.post(
        "/workflows/", json={"name": "bad", "max_concurrent_executions": value}
    )
    assert answer.status_code == 422, answer.text
    assert "max_concurrent_executions" in answer.text


async def test_graphql_sets_reads_and_clears_the_limit(client: httpx.AsyncClient) -> None:
    create = (
        'mutation { createWorkflow(input: {name: "g", maxConcurrentExecutions: 3}) '
        "{ id maxConcurrentExecutions } }"
    )
    made = (await client.post("/graphql", json={"query": create})).json()["data"]["createWorkflow"]
    assert made["maxConcurrentExecutions"] == 3
    read = await client.post(
        "/graphql",
        json={"query": f'{{ workflow(id: "{made["id"]}") {{ name maxConcurrentExecutions }} }}'},
    )
    assert read.json()["data"]["workflow"] == {"name": "g", "maxConcurrentExecutions": 3}
    cleared = await client.put(f"/workflows/{made['id']}", json={"name": "g"})
    assert "max_concurrent_executions" not in cleared.json()


async def test_a_retry_waits_for_the_limit_too(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    body = {"name": "one", "max_concurrent_executions": 1, "tasks": [noop("t", 1, 0.5)]}
    workflow_id = (await client.post("/workflows/", json=body)).json()["id"]
    first = await execute(stub, workflow_id)
    second = await execute(stub, workflow_id)
    cancelled = await client.post(f"/executions/{second}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    retried = await client.post(f"/executions/{second}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "pending"  # the first still runs
    final = await wait_until_done(stub, retried.json()["id"])
    assert final.status == "completed"
    assert (await wait_until_done(stub, first)).status == "completed"
