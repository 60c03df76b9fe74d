"""GraphQL's query cost limit and page caps (issue #16): what a document's answer can hold is
bounded before it runs, whatever aliases, fragments or variables it uses; the fast path refuses
what Strawberry refuses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from graphql import get_introspection_query, parse

from graphql_api import fast_graphql, query_cost
from graphql_api import schema as schema_module
from graphql_api.query_cost import QUERY_TOO_COSTLY, CostLimits, cost_rule, document_cost
from graphql_api.schema import COST_LIMITS, MAX_QUERY_COST, schema
from models import pacing as paced_module


# Issue #16, as sent: thirty aliases of a thousand workflows' tasks' parameters.
def thirty(selection: str) -> str:
    """`selection` thirty times, aliased a0 to a29."""
    return " ".join(f"a{n}: {selection}" for n in range(30))


ISSUE = "{ " + thirty("workflows(limit: 1000) { tasks { parameters } }") + " }"
ISSUE_COST = 30 * (1 + 100 * (1 + 1000))  # limit counted at the cap: 3,003,030
PAGE_OF_NAMES = "{ workflows(limit: 100) { id name tasks { name } } }"
FULL_PAGE = """{ workflows { id name description createdAt updatedAt tasks { id workflowId name
  description order executionType action parameters maxAttempts timeoutSeconds when } } }"""


async def post(client: httpx.AsyncClient, query: str, **variables: Any) -> httpx.Response:
    return await client.post("/graphql", json={"query": query, "variables": variables})


def cost(query: str) -> int:
    return document_cost(schema._schema, COST_LIMITS, parse(query))


def assert_too_costly(response: httpx.Response, expected_cost: int) -> None:
    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert error["extensions"] == {
        "code": QUERY_TOO_COSTLY,
        "cost": expected_cost,
        "maximum": MAX_QUERY_COST,
    }
    assert f"{expected_cost:,}" in error["message"]
    assert f"{MAX_QUERY_COST:,}" in error["message"]
    assert response.json()["data"] is None  # refused before anything ran


async def test_the_issues_thirty_aliases_are_refused(client: httpx.AsyncClient) -> None:
    assert_too_costly(await post(client, ISSUE), ISSUE_COST)


@pytest.mark.parametrize(
    "query",
    [
        "{ workflows(limit: 101) { id } }",
        "{ executions(limit: 101) { id } }",
        "query($n: Int!) { workflows(limit: $n) { id } }",
        '{ workflow(id: "%s") { executions(limit: 101) { id } } }',
    ],
)
async def test_a_page_above_100_is_refused(client: httpx.AsyncClient, query: str) -> None:
    created = await client.post("/workflows/", json={"name": "page cap"})
    if "%s" in query:
        query %= created.json()["id"]
    response = await post(client, query, n=101)
    assert response.status_code == 200
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["message"] == "Invalid input: limit must be between 0 and 100"


async def test_a_page_of_100_workflows_with_their_tasks_names_passes(
    client: httpx.AsyncClient,
) -> None:
    tasks = [{"name": f"t{n}", "order": n} for n in range(3)]
    for n in range(3):
        await client.post("/workflows/", json={"name": f"names {n}", "tasks": tasks})
    assert cost(PAGE_OF_NAMES) == 100_301
    response = await post(client, PAGE_OF_NAMES)
    assert response.status_code == 200
    body = response.json()
    assert "errors" not in body
    assert 3 <= len(body["data"]["workflows"]) <= 100
    # A page with every field of workflows and tasks, as REST's page has them, passes too.
    assert cost(FULL_PAGE) == 1_100_601 <= MAX_QUERY_COST
    assert "errors" not in (await post(client, FULL_PAGE)).json()


FRAGMENTS = (
    "fragment T on Workflow { tasks { parameters } } { "
    + thirty("workflows(limit: 100) { ...T }")
    + " }"
)
NESTED_FRAGMENTS = (
    "fragment Q on Query { "
    + thirty("workflows { ...W }")
    + " } fragment W on Workflow { ... on Workflow { ...T } }"
    + " fragment T on Workflow { tasks { parameters } } { ...Q }"
)
VARIABLES = "query($n: Int!) { " + thirty("workflows(limit: $n) { tasks { parameters } }") + " }"
INLINE = (
    "{ ... on Query { " + thirty("workflows { ... on Workflow { tasks { parameters } } }") + " } }"
)


@pytest.mark.parametrize("query", [FRAGMENTS, NESTED_FRAGMENTS, VARIABLES, INLINE])
async def test_fragments_and_variables_do_not_hide_a_cost(
    client: httpx.AsyncClient, query: str
) -> None:
    # A variable's value is not known when the document is validated (once per document
    # text): it counts as the largest page, even when the value sent is 1.
    assert_too_costly(await post(client, query, n=1), ISSUE_COST)


def test_how_documents_are_scored() -> None:
    # Every field 1; a list multiplies what it selects by its limit (literal, else its default).
    assert cost("{ workflows(limit: 10) { id name } }") == 1 + 10 * 2
    assert cost("{ workflows { id } }") == 1 + 100
    assert cost("{ workflows(limit: 0) { id } }") == 1
    assert cost('{ workflow(id: "1") { executions { id } } }') == 1 + 1 + 20
    # A workflow's tasks and an execution's task runs count as the most there can be.
    assert cost('{ workflow(id: "1") { tasks { name } } }') == 1 + 1 + 1000
    assert cost('{ execution(id: "1") { taskRuns { name status } } }') == 1 + 1 + 2000
    # Fields with one response key are one field, as the executor merges them; aliases count.
    assert cost("{ workflows { id id } workflows { id } }") == cost("{ workflows { id } }")
    assert cost("{ a: workflows { id } b: workflows { id } }") == 2 * cost("{ workflows { id } }")
    twice = "fragment F on Workflow { id } { workflows { ...F ...F id } }"
    assert cost(twice) == cost("{ workflows { id } }")
    # A document is as costly as its costliest operation (a request runs one).
    assert cost("query A { workflows { id } } query B { __typename }") == 101
    # A fragment cycle (refused by another rule) does not loop.
    assert cost("fragment A on Query { ...B } fragment B on Query { ...A } { ...A }") == 0
    # Introspection lists count as the longest of this schema's: GraphiQL's query passes.
    introspection = cost(get_introspection_query(descriptions=True))
    assert 0 < introspection < MAX_QUERY_COST // 10


async def test_graphiql_introspection_is_not_refused(client: httpx.AsyncClient) -> None:
    response = await post(client, get_introspection_query(descriptions=True))
    assert response.status_code == 200
    assert response.json()["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_the_rule_runs_once_per_document(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation is cached per document text: the cost is not computed again."""
    scored: list[str] = []
    operation = query_cost._Scorer.operation

    def counted(self: Any, node: Any) -> int:
        scored.append(node.loc.source.body)
        return operation(self, node)

    monkeypatch.setattr(query_cost._Scorer, "operation", counted)
    query = "{ workflows(limit: 3) { id name } __typename }  # once"
    assert "errors" not in (await post(client, query)).json()
    # Scored when the fast path first looked at it (and found it not its kind), and by
    # Strawberry the first time it validated it (its cache is the process's: once per run).
    first = len(scored)
    assert 1 <= first <= 2
    for _ in range(3):
        assert "errors" not in (await post(client, query)).json()
    assert len(scored) == first


async def test_the_fast_path_refuses_what_strawberry_refuses(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `workflow(id)` document can cost more than the maximum (30 aliases of at most
    1,000 tasks of 12 fields): a lower maximum shows that the fast path applies the rule."""
    created = await client.post(
        "/workflows/", json={"name": "fast", "tasks": [{"name": "t", "order": 1}]}
    )
    workflow_id = created.json()["id"]
    query = f'{{ workflow(id: "{workflow_id}") {{ id tasks {{ name }} }} }}'
    assert cost(query) == 1_003
    fast_graphql.make_plan(query)  # eligible, with the limits in force

    strict = cost_rule(CostLimits(1_000, 100, COST_LIMITS.list_sizes, 100))
    rules = [*schema_module.LIMIT_RULES[:-1], strict]
    monkeypatch.setattr(fast_graphql, "LIMIT_RULES", rules)
    monkeypatch.setattr(schema_module, "LIMIT_RULES", rules)
    with pytest.raises(fast_graphql.NotEligible):
        fast_graphql.make_plan(query)
    unseen = query + " # not in the fast path's plan cache"
    response = await post(client, unseen)
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["extensions"] == {"code": QUERY_TOO_COSTLY, "cost": 1_003, "maximum": 1_000}


async def test_a_short_list_never_waits() -> None:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = ticks
    items = [item async for item in paced_module.paced(range(10), str)]
    done = True
    await running
    assert items == [str(n) for n in range(10)]
    assert ticks == started  # not one turn given away


async def test_paced_lists_share_one_slice_per_turn_of_the_loop() -> None:
    """Ten lists completed at once (as graphql-core completes a page's nested lists) hold the
    loop one slice between two turns, not ten: each item costs 2 ms, the lists 1 s together."""

    def costly(number: int) -> int:
        until = time.perf_counter() + 0.002
        while time.perf_counter() < until:
            pass
        return number

    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            moment = time.perf_counter()
            gaps.append(moment - last)
            last = moment

    async def drain() -> list[int]:
        return [item async for item in paced_module.paced(range(50), costly)]

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    lists = await asyncio.gather(*(drain() for _ in range(10)))
    done = True
    await running
    assert lists == [list(range(50))] * 10
    # One slice (20 ms) and an item; a slice per list would be 200 ms.
    assert max(gaps) < 0.1, sorted(gaps)[-5:]
