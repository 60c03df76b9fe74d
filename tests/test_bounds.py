"""The bounds of contract section 8, each refused at the edge: REST 422 naming the field,
GraphQL BAD_USER_INPUT, gRPC INVALID_ARGUMENT (the execution input, its only bounded field, is
in test_automation_edges.py). And the default task timeout. On SQLite and on PostgreSQL with
Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest

from exec_service import engine
from models.inputs import (
    DEFAULT_TASK_TIMEOUT_SECONDS,
    MAX_ATTEMPTS_LIMIT,
    MAX_TASKS_PER_WORKFLOW,
    PARAMETERS_MAX_BYTES,
    TIMEOUT_SECONDS_MAX,
)
from protos import execution_pb2 as pb
from tests.executions import by_name, make_workflow, wait_until_done

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub


def task(**fields: Any) -> dict[str, Any]:
    return {"name": "t", "order": 1, **fields}


def http_task(parameters: dict[str, Any], **fields: Any) -> dict[str, Any]:
    url = {"url": "https://example.com/"}  # (never called: these tasks are not run)
    return task(action="http", parameters=url | parameters, **fields)


TOO_MUCH: list[tuple[dict[str, Any], str, str]] = [
    (task(max_attempts=MAX_ATTEMPTS_LIMIT + 1), "max_attempts", "maxAttempts"),
    (task(timeout_seconds=TIMEOUT_SECONDS_MAX + 1), "timeout_seconds", "timeoutSeconds"),
    (task(parameters={"x": "y" * PARAMETERS_MAX_BYTES}), "parameters", "parameters"),
    (task(parameters={"duration": 10}, timeout_seconds=5), "duration", "duration"),
    (task(parameters={"duration": DEFAULT_TASK_TIMEOUT_SECONDS + 1}), "duration", "duration"),
    (task(parameters={"duration": "soon"}), "duration", "duration"),
    (http_task({"timeout": 10}, timeout_seconds=5), "timeout", "timeout"),
    (http_task({"timeout": DEFAULT_TASK_TIMEOUT_SECONDS + 1}), "timeout", "timeout"),
    (http_task({"timeout": 0}), "timeout", "timeout"),
    (http_task({"timeout": "30"}), "timeout", "timeout"),
]


def graphql_task(fields: dict[str, Any]) -> dict[str, Any]:
    names = {"max_attempts": "maxAttempts", "timeout_seconds": "timeoutSeconds"}
    return {names.get(key, key): value for key, value in fields.items()}


@pytest.mark.parametrize(("fields", "rest_name", "graphql_name"), TOO_MUCH)
async def test_task_bounds_are_refused_on_rest_and_graphql(
    client: httpx.AsyncClient, fields: dict[str, Any], rest_name: str, graphql_name: str
) -> None:
    workflow_id = await make_workflow(client, [task(name="kept")])
    before = (await client.get(f"/workflows/{workflow_id}")).json()["tasks"]
    task_id = before[0]["id"]
    added = await client.post(f"/workflows/{workflow_id}/tasks/", json=fields)
    assert added.status_code == 422, added.text
    assert rest_name in added.text
    updated = await client.put(f"/workflows/{workflow_id}/tasks/{task_id}", json=fields)
    assert updated.status_code == 422, updated.text
    assert rest_name in updated.text
    created = await client.post("/workflows/", json={"name": "w", "tasks": [fields]})
    assert created.status_code == 422
    assert rest_name in created.text
    ids = {"id": str(workflow_id), "task": str(task_id), "t": graphql_task(fields)}
    for mutation in (
        "mutation($id: ID!, $t: TaskInput!) { addTask(workflowId: $id, input: $t) { id } }",
        "mutation($id: ID!, $task: ID!, $t: TaskInput!) {"
        " updateTask(workflowId: $id, taskId: $task, input: $t) { id } }",
        'mutation($t: TaskInput!) { createWorkflow(input: {name: "w", tasks: [$t]}) { id } }',
    ):
        variables = {name: value for name, value in ids.items() if f"${name}" in mutation}
        answer = await client.post("/graphql", json={"query": mutation, "variables": variables})
        error = answer.json()["errors"][0]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", mutation
        assert graphql_name in error["message"]
    assert (await client.get(f"/workflows/{workflow_id}")).json()["tasks"] == before


async def test_values_within_the_task_timeout_are_accepted(client: httpx.AsyncClient) -> None:
    fitting = [
        task(name="a", parameters={"duration": 5}, timeout_seconds=5),
        task(name="b", parameters={"duration": DEFAULT_TASK_TIMEOUT_SECONDS}),
        task(name="c", parameters={"duration": "{{ input.wait }}"}),  # checked when it runs
        http_task({"timeout": 5}, name="d", timeout_seconds=5),
        http_task({"timeout": None}, name="e"),  # the default
        http_task({"timeout": DEFAULT_TASK_TIMEOUT_SECONDS}, name="f"),
        http_task({"timeout": "{{ input.patience }}"}, name="g"),
    ]
    created = await client.post("/workflows/", json={"name": "fits", "tasks": fitting})
    assert created.status_code == 200, created.text
    assert [shown["timeout_seconds"] for shown in created.json()["tasks"]] == [
        5.0,
        None,  # the default applies when it runs; it is not stored
        None,
        5.0,
        None,
        None,
        None,
    ]


async def test_a_workflow_has_at_most_max_tasks_however_they_come(
    client: httpx.AsyncClient,
) -> None:
    tasks = [task(name=f"t{n}", order=n) for n in range(MAX_TASKS_PER_WORKFLOW + 1)]
    too_many = await client.post("/workflows/", json={"name": "big", "tasks": tasks})
    assert too_many.status_code == 422
    assert "tasks" in too_many.text
    created = await client.post("/workflows/", json={"name": "big", "tasks": tasks[:-1]})
    assert created.status_code == 200, created.text
    workflow_id = created.json()["id"]
    # One at a time, past the cap: refused too (the original service had no cap here).
    one_more = await client.post(f"/workflows/{workflow_id}/tasks/", json=tasks[-1])
    assert one_more.status_code == 422
    assert "WORKFLOW_MAX_TASKS" in one_more.text
    mutation = "mutation($id: ID!, $t: TaskInput!) { addTask(workflowId: $id, input: $t) { id } }"
    variables = {"id": str(workflow_id), "t": tasks[-1]}
    answer = await client.post("/graphql", json={"query": mutation, "variables": variables})
    assert answer.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    shown = (await client.get(f"/workflows/{workflow_id}")).json()["tasks"]
    assert len(shown) == MAX_TASKS_PER_WORKFLOW
    assert (await client.delete(f"/workflows/{workflow_id}")).status_code == 200


async def test_a_task_without_a_timeout_gets_the_default(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default, made short for the test (it is read when the process starts); a duration
    # from a template is checked when the task runs, not at creation.
    monkeypatch.setattr(engine, "DEFAULT_TASK_TIMEOUT_SECONDS", 0.2)
    workflow_id = await make_workflow(
        client, [task(name="waits", parameters={"duration": "{{ input.wait }}"})]
    )
    request = pb.ExecuteWorkflowRequest(workflow_id=workflow_id, input_json='{"wait": 30}')
    final = await wait_until_done(stub, (await stub.ExecuteWorkflow(request)).execution_id)
    assert final.status == "failed"
    assert by_name(final)["waits"].error == "timed out after 0.2s"
