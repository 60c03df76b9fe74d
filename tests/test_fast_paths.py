"""The fast paths answer byte for byte as the framework behind them would.

`FastWorkflowReads` (REST `GET /workflows/{id}`) and `FastGraphQLReads` (`workflow(id)`
queries) bypass FastAPI's routing and Strawberry's executor; here each answer is compared with
the one the bypassed code gives for the same request.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from graphql_api.fast_graphql import FastGraphQLReads, make_plan
from graphql_api.schema import schema

FULL = """query($id: ID!) { workflow(id: $id) { id name description createdAt updatedAt
  tasks { id workflowId name description order executionType action parameters maxAttempts
          timeoutSeconds __typename } __typename } }"""

FULL_PAGE = """{ workflows { id name description createdAt updatedAt maxConcurrentExecutions
  tasks { id workflowId name description order executionType action parameters maxAttempts
          timeoutSeconds when } __typename } }"""


async def strawberry_answer(app: FastAPI, query: str, variables: dict[str, Any]) -> bytes:
    """What Strawberry itself answers, encoded as its HTTP view encodes it."""
    context = {"executions_loader": None, "exec_client": app.state.exec_client}
    result = await schema.execute(query, variable_values=variables, context_value=context)
    assert result.errors is None, result.errors
    return json.dumps({"data": result.data}, separators=(",", ":")).encode()


@pytest.fixture
async def workflow_id(client: httpx.AsyncClient) -> int:
    tasks = [
        {
            "name": "ünïcode ✓",
            "order": 2,
            "execution_type": "async",
            "timeout_seconds": 30,
            "parameters": {"b": [1, 2.5, None, True], "a": {"x": "y"}},
            "max_attempts": 3,
        },
        {
            "name": "plain",
            "order": 1,
            "description": "d",
            "action": "http",
            "parameters": {"url": "http://127.0.0.1:1/"},
        },
    ]
    created = await client.post(
        "/workflows/", json={"name": 'fast "path"', "description": None, "tasks": tasks}
    )
    identifier: int = created.json()["id"]
    return identifier


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (FULL, {"id": "{id}"}),
        (FULL, {"id": "{id}", "unused": 1}),
        ('{ workflow(id: "{id}") { name } }', {}),
        ("{ workflow(id: {id}) { name } }", {}),
        ('{ w: workflow(id: "{id}") { n: name t: tasks { o: order p: parameters } } }', {}),
        ('{ workflow(id: "2147483000") { id } }', {}),
        ("query Named($id: ID!) { workflow(id: $id) { id tasks { name } } }", {"id": "{id}"}),
        (FULL_PAGE, {}),
        ("{ workflows(limit: 3, skip: 0) { n: name } }", {}),
        (
            "query($s: Int!, $l: Int!) { ws: workflows(skip: $s, limit: $l) { id t: tasks "
            "{ order } } }",
            {"s": 0, "l": 100},
        ),
        ("query($s: Int!) { workflows(skip: $s) { id } }", {"s": 1_000_000}),
    ],
)
async def test_graphql_fast_path_answers_as_strawberry(
    app: FastAPI,
    client: httpx.AsyncClient,
    workflow_id: int,
    query: str,
    variables: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answered: list[bytes] = []
    original = FastGraphQLReads._answer_with

    async def spied(self: FastGraphQLReads, *args: Any) -> bytes:
        answer = await original(self, *args)
        answered.append(answer)
        return answer

    monkeypatch.setattr(FastGraphQLReads, "_answer_with", spied)
    query = query.replace("{id}", str(workflow_id))
    variables = {
        k: v.replace("{id}", str(workflow_id)) if isinstance(v, str) else v
        for k, v in variables.items()
    }
    assert make_plan(query) is not None  # the fast path takes this one
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == await strawberry_answer(app, query, variables)
    # The fast path answered: it did not fail over to Strawberry.
    assert answered == [response.content]
    assert not [r for r in caplog.records if r.name == "graphql_api.fast_graphql"]


@pytest.mark.parametrize(
    "query",
    [
        '{ workflow(id: "1") { ...F } } fragment F on Workflow { id }',
        '{ workflow(id: "1") @include(if: true) { id } }',
        '{ workflow(id: "1") { id executions { id } } }',
        '{ workflow(id: "1") { id } workflows { id } }',
        'mutation { deleteWorkflow(id: "1") }',
        '{ workflow(id: "1") { nope } }',
    ],
)
def test_other_documents_go_to_strawberry(query: str) -> None:
    from graphql_api.fast_graphql import NotEligible

    with pytest.raises(NotEligible):
        make_plan(query)


@pytest.mark.parametrize(
    "variables", [{"l": 101}, {"l": -1}, {"l": True}, {"l": "5"}, {}, {"l": None}, {"l": 2**40}]
)
async def test_bad_pages_get_strawberrys_errors(
    client: httpx.AsyncClient, variables: dict[str, Any]
) -> None:
    query = "query($l: Int) { workflows(limit: $l) { id } }"
    assert make_plan(query) is not None
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    body = response.json()
    if variables == {}:
        # A variable left out: the argument's default applies, as Strawberry applies it.
        assert body.get("errors") is None
        assert isinstance(body["data"]["workflows"], list)
    else:
        assert body.get("errors"), (variables, body)


async def test_bad_ids_get_strawberrys_errors(client: httpx.AsyncClient) -> None:
    for value in ["abc", "0", True, None, 1.5]:
        response = await client.post("/graphql", json={"query": FULL, "variables": {"id": value}})
        body = response.json()
        assert body.get("errors"), (value, body)


async def test_rest_fast_path_answers_as_the_route(
    client: httpx.AsyncClient, workflow_id: int
) -> None:
    fast = await client.get(f"/workflows/{workflow_id}")
    routed = await client.put(f"/workflows/{workflow_id}", json={"name": 'fast "path"'})
    # The PUT changed updated_at: compare with what the route now renders, read back fast.
    again = await client.get(f"/workflows/{workflow_id}/")
    assert again.content == routed.content
    assert fast.headers["content-type"] == routed.headers["content-type"]
    missing = await client.get("/workflows/2147483000")
    assert (missing.status_code, missing.content) == (404, b'{"detail":"Workflow not found"}')
