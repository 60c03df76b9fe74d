"""GraphQL execution operations: executeWorkflow, cancelExecution, execution, executions and
Workflow.executions (a DataLoader: a constant number of queries for any number of workflows)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx

from tests.conftest import QueryCounter
from tests.executions import make_workflow, noop, wait_until_done
from tests.test_graphql import every_workflow_id, gql

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

EXECUTION_FIELDS = """id workflowId status startedAt completedAt error
  taskRuns { taskId name order status attempts startedAt completedAt output error }"""


EXECUTE = f"""mutation($w: ID!, $key: String) {{
  executeWorkflow(workflowId: $w, idempotencyKey: $key) {{ {EXECUTION_FIELDS} }}
}}"""


async def test_execute_and_read_back(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    workflow_id = await make_workflow(client, [noop("a", 1, 0.3), noop("b", 2)])
    started = await gql(client, EXECUTE, {"w": str(workflow_id)})
    execution = started["data"]["executeWorkflow"]
    assert execution["workflowId"] == str(workflow_id)
    assert execution["status"] == "IN_PROGRESS"
    assert [run["name"] for run in execution["taskRuns"]] == ["a", "b"]
    await wait_until_done(stub, int(execution["id"]))

    query = f"query($id: ID!) {{ execution(id: $id) {{ {EXECUTION_FIELDS} }} }}"
    read = (await gql(client, query, {"id": execution["id"]}))["data"]["execution"]
    assert read["status"] == "COMPLETED"
    assert read["taskRuns"][0]["output"] == {}
    assert all(run["status"] == "COMPLETED" for run in read["taskRuns"])
    missing = await gql(client, '{ execution(id: "2147483000") { id } }')
    assert missing["data"] == {"execution": None}


async def test_idempotency_key_and_errors(client: httpx.AsyncClient) -> None:
    workflow_id = await make_workflow(client, [])
    first = await gql(client, EXECUTE, {"w": str(workflow_id), "key": "k1"})
    again = await gql(client, EXECUTE, {"w": str(workflow_id), "key": "k1"})
    assert first["data"]["executeWorkflow"]["id"] == again["data"]["executeWorkflow"]["id"]
    missing = await gql(client, EXECUTE, {"w": "2147483000"})
    assert missing["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    long_key = await gql(client, EXECUTE, {"w": str(workflow_id), "key": "k" * 300})
    assert long_key["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_cancel(client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub) -> None:
    workflow_id = await make_workflow(client, [noop("long", 1, 30)])
    started = await gql(client, EXECUTE, {"w": str(workflow_id)})
    execution_id = started["data"]["executeWorkflow"]["id"]
    cancel = f"mutation($id: ID!) {{ cancelExecution(id: $id) {{ {EXECUTION_FIELDS} }} }}"
    cancelled = (await gql(client, cancel, {"id": execution_id}))["data"]["cancelExecution"]
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["taskRuns"][0]["status"] == "CANCELLED"
    final = await wait_until_done(stub, int(execution_id), within=5)
    assert final.status == "cancelled"
    unknown = await gql(client, cancel, {"id": "2147483000"})
    assert unknown["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_executions_newest_first(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    workflow_id = await make_workflow(client, [noop("a", 1)])
    ids = [
        (await gql(client, EXECUTE, {"w": str(workflow_id)}))["data"]["executeWorkflow"]["id"]
        for _ in range(3)
    ]
    query = "query($w: ID) { executions(workflowId: $w, limit: 10) { id } }"
    listed = (await gql(client, query, {"w": str(workflow_id)}))["data"]["executions"]
    assert [row["id"] for row in listed] == ids[::-1]
    everything = (await gql(client, "{ executions(limit: 2) { id } }"))["data"]["executions"]
    assert len(everything) == 2
    assert int(everything[0]["id"]) > int(everything[1]["id"])


async def test_workflow_executions_cost_a_constant_number_of_queries(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub, sql_queries: QueryCounter
) -> None:
    workflow_ids = [await make_workflow(client, [noop("a", 1)]) for _ in range(12)]
    for workflow_id in workflow_ids:
        for _ in range(2):
            result = await gql(client, EXECUTE, {"w": str(workflow_id)})
            await wait_until_done(stub, int(result["data"]["executeWorkflow"]["id"]))
    query = """query($skip: Int!, $limit: Int!) { workflows(skip: $skip, limit: $limit) {
      id executions(limit: 5) { id status taskRuns { name status } } } }"""
    start = [int(i) for i in await every_workflow_id(client)].index(workflow_ids[0])
    counts = {}
    for limit in (2, 12):
        sql_queries.reset()
        rows = (await gql(client, query, {"skip": start, "limit": limit}))["data"]["workflows"]
        assert all(len(row["executions"]) == 2 for row in rows)
        assert all(r["executions"][0]["status"] == "COMPLETED" for r in rows)
        # Reads of executions by this query; the engine's lease rounds run meanwhile.
        counts[limit] = len(
            [
                s
                for s in sql_queries.statements
                if s.startswith("SELECT")
                # (By table: the workflows' column max_concurrent_executions is not one.)
                and re.search(r'FROM "?(executions|task_runs)"?\b', s)
                and '"lease_owner"=' not in s
                and '"lease_expires_at"<' not in s
            ]
        )
    assert counts[2] == counts[12] == 3  # page of ids, executions, their task runs
