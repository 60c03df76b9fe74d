"""GraphQL queries and mutations for workflows and tasks (contract section 3)."""

from __future__ import annotations

from typing import Any

import httpx

from models.cache import current_cache
from models.workflows import LIST_GROUP
from tests.conftest import QueryCounter

WORKFLOW_FIELDS = """
  id name description createdAt updatedAt
  tasks { id workflowId name description order executionType action parameters
          maxAttempts timeoutSeconds }
"""


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def error_code(result: dict[str, Any]) -> str:
    code: str = result["errors"][0]["extensions"]["code"]
    return code


CREATE = f"""
mutation($input: WorkflowInput!) {{ createWorkflow(input: $input) {{ {WORKFLOW_FIELDS} }} }}
"""


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    fields.setdefault("name", "wf")
    result = await gql(client, CREATE, {"input": fields})
    assert "errors" not in result, result
    workflow: dict[str, Any] = result["data"]["createWorkflow"]
    return workflow


async def test_create_and_read_back(client: httpx.AsyncClient) -> None:
    created = await create(
        client,
        name="pipeline",
        description="nightly",
        tasks=[
            {"name": "b", "order": 2, "executionType": "ASYNC", "parameters": {"n": 1}},
            {"name": "a", "order": 1, "maxAttempts": 3, "timeoutSeconds": 2.5, "action": "http"},
        ],
    )
    assert created["name"] == "pipeline"
    assert [task["name"] for task in created["tasks"]] == ["a", "b"]
    first, second = created["tasks"]
    assert (first["maxAttempts"], first["timeoutSeconds"], first["action"]) == (3, 2.5, "http")
    assert (second["executionType"], second["parameters"]) == ("ASYNC", {"n": 1})
    assert first["workflowId"] == created["id"]

    query = f"query($id: ID!) {{ workflow(id: $id) {{ {WORKFLOW_FIELDS} }} }}"
    read = await gql(client, query, {"id": created["id"]})
    assert read["data"]["workflow"] == created

    rest = (await client.get(f"/workflows/{created['id']}")).json()
    assert rest["tasks"][0]["max_attempts"] == 3


async def test_missing_workflow_is_null(client: httpx.AsyncClient) -> None:
    result = await gql(client, '{ workflow(id: "2147483000") { id } }')
    assert result == {"data": {"workflow": None}}


async def every_workflow_id(client: httpx.AsyncClient) -> list[str]:
    """Every workflow's id, page by page (a GraphQL page holds at most 100)."""
    ids: list[str] = []
    while True:
        page = await gql(client, f"{{ workflows(skip: {len(ids)}, limit: 100) {{ id }} }}")
        rows = page["data"]["workflows"]
        ids += [row["id"] for row in rows]
        if len(rows) < 100:
            return ids


async def test_workflows_paging(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, name=f"p{n}"))["id"] for n in range(3)]
    listed = [int(workflow_id) for workflow_id in await every_workflow_id(client)]
    assert listed == sorted(listed)
    start = listed.index(int(ids[0]))
    page = await gql(client, f"{{ workflows(skip: {start}, limit: 2) {{ id }} }}")
    assert [row["id"] for row in page["data"]["workflows"]] == ids[:2]
    bad = await gql(client, "{ workflows(skip: -1) { id } }")
    assert error_code(bad) == "BAD_USER_INPUT"


async def test_update_workflow_keeps_or_replaces_tasks(client: httpx.AsyncClient) -> None:
    created = await create(client, name="u", tasks=[{"name": "t", "order": 1}])
    mutation = f"""
    mutation($id: ID!, $input: WorkflowInput!) {{
      updateWorkflow(id: $id, input: $input) {{ {WORKFLOW_FIELDS} }}
    }}"""
    kept = await gql(client, mutation, {"id": created["id"], "input": {"name": "u2"}})
    updated = kept["data"]["updateWorkflow"]
    assert updated["name"] == "u2"
    assert updated["description"] is None
    assert updated["tasks"] == created["tasks"]

    new_tasks = [{"name": "x", "order": 5}, {"name": "y", "order": 4}]
    replaced = await gql(
        client, mutation, {"id": created["id"], "input": {"name": "u3", "tasks": new_tasks}}
    )
    assert [t["name"] for t in replaced["data"]["updateWorkflow"]["tasks"]] == ["y", "x"]

    missing = await gql(client, mutation, {"id": "2147483000", "input": {"name": "n"}})
    assert error_code(missing) == "NOT_FOUND"
    assert missing["data"] is None


async def test_delete_workflow(client: httpx.AsyncClient) -> None:
    created = await create(client, name="d")
    mutation = "mutation($id: ID!) { deleteWorkflow(id: $id) }"
    assert (await gql(client, mutation, {"id": created["id"]}))["data"] == {"deleteWorkflow": True}
    again = await gql(client, mutation, {"id": created["id"]})
    assert error_code(again) == "NOT_FOUND"
    assert again["errors"][0]["message"] == "Workflow not found"


async def test_task_mutations(client: httpx.AsyncClient) -> None:
    workflow = await create(client, name="tasks")
    other = await create(client, name="other")
    add = """mutation($w: ID!, $input: TaskInput!) {
      addTask(workflowId: $w, input: $input) { id workflowId name order parameters }
    }"""
    added = await gql(
        client, add, {"w": workflow["id"], "input": {"name": "a", "order": 1, "parameters": {}}}
    )
    task = added["data"]["addTask"]
    assert task["workflowId"] == workflow["id"]

    update = """mutation($w: ID!, $t: ID!, $input: TaskInput!) {
      updateTask(workflowId: $w, taskId: $t, input: $input) { id name order executionType }
    }"""
    changed = await gql(
        client,
        update,
        {
            "w": workflow["id"],
            "t": task["id"],
            "input": {"name": "b", "order": 7, "executionType": "ASYNC"},
        },
    )
    assert changed["data"]["updateTask"] == {
        "id": task["id"],
        "name": "b",
        "order": 7,
        "executionType": "ASYNC",
    }
    wrong = await gql(
        client, update, {"w": other["id"], "t": task["id"], "input": {"name": "c", "order": 1}}
    )
    assert error_code(wrong) == "NOT_FOUND"
    assert wrong["errors"][0]["message"] == "Task not found in this workflow"

    no_workflow = await gql(client, add, {"w": "2147483000", "input": {"name": "a", "order": 1}})
    assert error_code(no_workflow) == "NOT_FOUND"

    delete = "mutation($w: ID!, $t: ID!) { deleteTask(workflowId: $w, taskId: $t) }"
    assert (await gql(client, delete, {"w": workflow["id"], "t": task["id"]}))["data"] == {
        "deleteTask": True
    }
    gone = await gql(client, delete, {"w": workflow["id"], "t": task["id"]})
    assert error_code(gone) == "NOT_FOUND"


async def test_malformed_ids_are_bad_user_input(client: httpx.AsyncClient) -> None:
    for bad in ["abc", "-1", "0", "1.5", "99999999999", ""]:
        result = await gql(client, "query($id: ID!) { workflow(id: $id) { id } }", {"id": bad})
        assert error_code(result) == "BAD_USER_INPUT", (bad, result)


async def test_graphiql_for_browsers(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


async def test_queries_over_get(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "{ workflows(limit: 1) { id } }"})
    assert response.status_code == 200
    assert "workflows" in response.json()["data"]


async def test_a_hundred_workflows_with_tasks_cost_a_constant_number_of_queries(
    client: httpx.AsyncClient, sql_queries: QueryCounter
) -> None:
    tasks = [{"name": f"t{n}", "order": n} for n in range(3)]
    ids = [(await create(client, name=f"bulk{n}", tasks=tasks))["id"] for n in range(100)]
    start = (await every_workflow_id(client)).index(ids[0])
    query = """query($skip: Int!, $limit: Int!) {
      workflows(skip: $skip, limit: $limit) { id name tasks { id name order parameters } }
    }"""
    counts = {}
    for limit in (1, 10, 100):
        await current_cache().invalidate(LIST_GROUP)  # measure the uncached path
        sql_queries.reset()
        result = await gql(client, query, {"skip": start, "limit": limit})
        rows = result["data"]["workflows"]
        assert [row["id"] for row in rows] == ids[:limit]
        assert all(len(row["tasks"]) == 3 for row in rows)
        counts[limit] = len(sql_queries.statements)
    assert counts == {1: 2, 10: 2, 100: 2}  # the page, then every task of it at once


async def test_the_full_introspection_query_answers_without_errors(
    client: httpx.AsyncClient,
) -> None:
    # GraphiQL asks it for its docs and completion; a default graphql-core cannot write as a
    # literal (TaskInput.parameters once defaulted to {}) made it answer "Unexpected error.".
    from graphql import get_introspection_query

    answer = await client.post("/graphql", json={"query": get_introspection_query()})
    assert answer.status_code == 200, answer.text
    assert "errors" not in answer.json(), answer.json()["errors"]
    assert answer.json()["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_a_task_without_parameters_gets_an_empty_object(client: httpx.AsyncClient) -> None:
    mutation = (
        'mutation { createWorkflow(input: {name: "p", tasks: [{name: "a", order: 1}, '
        '{name: "b", order: 2, parameters: null}]}) { tasks { name parameters } } }'
    )
    made = (await client.post("/graphql", json={"query": mutation})).json()
    tasks = made["data"]["createWorkflow"]["tasks"]
    assert [task["parameters"] for task in tasks] == [{}, {}]
