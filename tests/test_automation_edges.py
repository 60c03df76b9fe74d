"""Templates, `when` and execution input at the edge: what is refused, on REST, GraphQL and
gRPC, before anything is written. On SQLite, and on PostgreSQL with Redis."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest

from models.inputs import INPUT_MAX_BYTES
from protos import execution_pb2 as pb
from tests.executions import make_workflow, wait_until_done

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub


def echo(name: str, order: int, parameters: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": name, "order": order, "action": "echo", "parameters": parameters, **fields}


async def workflow_count(client: httpx.AsyncClient) -> int:
    return len((await client.get("/workflows/?limit=1000")).json())


@pytest.mark.parametrize(
    ("tasks", "field", "text"),
    [
        ([echo("a", 1, {"x": "{{ input. }}"})], "parameters", "template: x:"),
        ([echo("a", 1, {"x": "{{ secrets.key }}"})], "parameters", "unknown name 'secrets'"),
        ([echo("a", 1, {"x": "{{ ''.__class__ }}"})], None, None),  # parses; refused at run
        ([echo("a", 1, {}, when="tasks.b.output ==")], "when", "template:"),
        ([echo("a", 1, {}, when="   ")], "when", "must be an expression"),
        # A later stage, the same (async) stage, the task itself: not earlier.
        (
            [echo("a", 1, {"x": "{{ tasks.b.output }}"}), echo("b", 2, {})],
            "tasks",
            "no task named 'b' runs in an earlier stage",
        ),
        (
            [
                echo("a", 1, {}, execution_type="async"),
                echo("b", 2, {"x": "{{ tasks.a.status }}"}, execution_type="async"),
            ],
            "tasks",
            "no task named 'a' runs in an earlier stage",
        ),
        ([echo("a", 1, {"x": "{{ tasks['a'].output }}"})], "tasks", "earlier stage"),
        (
            [echo("a", 1, {}), echo("a", 2, {}), echo("c", 3, {}, when="tasks.a.output")],
            "tasks",
            "2 tasks of this workflow are named 'a'",
        ),
    ],
)
async def test_templates_are_checked_at_creation(
    client: httpx.AsyncClient,
    tasks: list[dict[str, Any]],
    field: str | None,
    text: str | None,
) -> None:
    before = await workflow_count(client)
    response = await client.post("/workflows/", json={"name": "w", "tasks": tasks})
    if field is None:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(field in error["loc"] and text in error["msg"] for error in detail), detail
    assert await workflow_count(client) == before  # nothing half-written
    # GraphQL refuses the same, as BAD_USER_INPUT.
    mutation = "mutation($input: WorkflowInput!) { createWorkflow(input: $input) { id } }"
    graphql_tasks = [
        {
            "name": task["name"],
            "order": task["order"],
            "action": "echo",
            "parameters": task["parameters"],
            "executionType": task.get("execution_type", "sync").upper(),
            "when": task.get("when"),
        }
        for task in tasks
    ]
    answer = await client.post(
        "/graphql",
        json={"query": mutation, "variables": {"input": {"name": "w", "tasks": graphql_tasks}}},
    )
    error = answer.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert text in error["message"]
    assert await workflow_count(client) == before


async def test_adding_or_moving_a_task_keeps_references_to_earlier_stages(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = await make_workflow(client, [echo("fetch", 1, {})])
    uses = echo("use", 2, {"id": "{{ tasks.fetch.output.id }}"}, when="tasks.fetch.output")
    added = await client.post(f"/workflows/{workflow_id}/tasks/", json=uses)
    assert added.status_code == 200, added.text
    assert added.json()["when"] == "tasks.fetch.output"
    fetch_id = (await client.get(f"/workflows/{workflow_id}")).json()["tasks"][0]["id"]
    # Moving `fetch` after the task that reads it is refused, and nothing changes.
    moved = await client.put(
        f"/workflows/{workflow_id}/tasks/{fetch_id}", json=echo("fetch", 3, {})
    )
    assert moved.status_code == 422, moved.text
    assert "no task named 'fetch' runs in an earlier stage" in moved.text
    tasks = (await client.get(f"/workflows/{workflow_id}")).json()["tasks"]
    assert [(task["name"], task["order"]) for task in tasks] == [("fetch", 1), ("use", 2)]
    # A second task named `fetch` would make the reference ambiguous.
    twin = await client.post(f"/workflows/{workflow_id}/tasks/", json=echo("fetch", 0, {}))
    assert twin.status_code == 422
    assert "2 tasks of this workflow are named 'fetch'" in twin.text
    assert len((await client.get(f"/workflows/{workflow_id}")).json()["tasks"]) == 2


async def test_a_task_without_when_answers_as_the_original_service_did(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = await make_workflow(client, [echo("plain", 1, {})])
    task = (await client.get(f"/workflows/{workflow_id}")).json()["tasks"][0]
    assert "when" not in task
    query = "query($id: ID!) { workflow(id: $id) { tasks { name when } } }"
    answer = await client.post(
        "/graphql", json={"query": query, "variables": {"id": str(workflow_id)}}
    )
    assert answer.json()["data"]["workflow"]["tasks"] == [{"name": "plain", "when": None}]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"input": [1, 2]}, "dictionary"),
        ({"input": "text"}, "dictionary"),
        ({"input": {"big": "x" * INPUT_MAX_BYTES}}, f"at most {INPUT_MAX_BYTES} bytes"),
        ({"input": {"nul": "a\x00b"}}, "NUL"),
    ],
)
async def test_rest_refuses_input_that_is_not_a_bounded_object(
    client: httpx.AsyncClient, body: dict[str, Any], text: str
) -> None:
    workflow_id = await make_workflow(client, [echo("a", 1, {})])
    response = await client.post(f"/workflows/{workflow_id}/execute", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", "input"]
    assert text in response.text
    listed = await client.get(f"/workflows/{workflow_id}/executions")
    assert listed.json() == []


async def test_graphql_and_grpc_take_input_and_refuse_bad_input(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    workflow_id = await make_workflow(client, [echo("a", 1, {"v": "{{ input.v }}"})])
    mutation = (
        "mutation($id: ID!, $input: JSON, $key: String) "
        "{ executeWorkflow(workflowId: $id, input: $input, idempotencyKey: $key) { id input } }"
    )
    variables = {"id": str(workflow_id), "input": {"v": 1}, "key": "k1"}
    first = await client.post("/graphql", json={"query": mutation, "variables": variables})
    started = first.json()["data"]["executeWorkflow"]
    assert started["input"] == {"v": 1}
    # The idempotency key still answers the first execution, whatever the input this time.
    again = await client.post(
        "/graphql", json={"query": mutation, "variables": variables | {"input": {"v": 2}}}
    )
    assert again.json()["data"]["executeWorkflow"] == started
    final = await wait_until_done(stub, int(started["id"]))
    assert json.loads(final.output_json) == {"a": {"v": 1}}

    bad = await client.post(
        "/graphql", json={"query": mutation, "variables": variables | {"input": [1], "key": None}}
    )
    assert bad.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "input: must be a JSON object" in bad.json()["errors"][0]["message"]
    for text in ("[1]", "NaN", '{"a": NaN}', "{", json.dumps({"x": "y" * INPUT_MAX_BYTES})):
        request = pb.ExecuteWorkflowRequest(workflow_id=workflow_id, input_json=text)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteWorkflow(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input_json" in (refused.value.details() or "")
