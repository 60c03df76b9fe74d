"""Fuzzing the HTTP plane with schemathesis, from its own descriptions (`/openapi.json` and the
GraphQL schema), with a key, against a real server process: no answer is a 5xx, no GraphQL
error lacks one of the codes we mean to send, and no answer shows a stack trace or SQL.
Examples per operation are few (FUZZ_EXAMPLES), so that the suite stays quick; run with more
to search harder."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import graphql
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live_server import LiveServer, live_server

ADMIN_KEY = "fuzz-admin-key"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
EXPECTED_CODES = {"NOT_FOUND", "BAD_USER_INPUT", "FORBIDDEN", "UNAUTHENTICATED", "CONFLICT"}
# What an answer must never show: a Python stack, or the SQL (or driver) behind it.
LEAKS = re.compile(
    r"Traceback \(most recent call last\)|File \"/|\bSELECT\b.+\bFROM\b|\bINSERT INTO\b|"
    r"\bUPDATE\b.+\bSET\b|asyncpg\.|sqlite3\.|tortoise\.|psycopg",
    re.IGNORECASE | re.DOTALL,
)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure here is reproducible
)

pytestmark = pytest.mark.slow


def _json_values() -> st.SearchStrategy[graphql.ValueNode]:
    """Strawberry's JSON scalar as GraphQL literals: any JSON value (parameters, input)."""
    nodes = schemathesis.graphql.nodes
    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
    leaves = st.one_of(
        st.just(nodes.Null),
        st.booleans().map(nodes.Boolean),
        st.integers(-(2**40), 2**40).map(nodes.Int),
        st.text(max_size=20).map(nodes.String),
    )

    def field(pair: tuple[str, graphql.ValueNode]) -> graphql.ObjectFieldNode:
        return graphql.ObjectFieldNode(name=graphql.NameNode(value=pair[0]), value=pair[1])

    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3).map(nodes.List),
            st.lists(st.tuples(names, children), max_size=3, unique_by=lambda p: p[0]).map(
                lambda pairs: nodes.Object([field(pair) for pair in pairs])
            ),
        ),
        max_leaves=6,
    )


schemathesis.graphql.scalar("JSON", _json_values())
schemathesis.graphql.scalar(
    "DateTime", st.just(schemathesis.graphql.nodes.String("2026-01-01T00:00:00Z"))
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("fuzz") / "db.sqlite3"
    env = {"WORKFLOW_ADMIN_KEY": ADMIN_KEY}
    with live_server(f"sqlite://{path}", env) as running:
        # Something to find: a workflow with tasks, and an execution of it.
        body = {"name": "seed", "tasks": [{"name": "a", "order": 1}, {"name": "b", "order": 2}]}
        created = httpx.post(f"{running.url}/workflows/", json=body, headers=HEADERS)
        httpx.post(f"{running.url}/workflows/{created.json()['id']}/execute", headers=HEADERS)
        yield running


@pytest.fixture(scope="module")
def rest_schema(server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.fixture(scope="module")
def graphql_schema(server: LiveServer) -> Any:
    return schemathesis.graphql.from_url(f"{server.url}/graphql", headers=HEADERS)


def operations(schema: Any) -> list[Any]:
    found = [result.ok() for result in schema.get_all_operations()]
    assert found, "the schema has no operations: nothing was fuzzed"
    return found


def no_leak(text: str) -> None:
    leak = LEAKS.search(text)
    assert leak is None, f"the answer shows {leak.group(0)!r}: {text[:500]}"


def test_rest_routes_answer_every_input_without_5xx_or_leaks(
    server: LiveServer, rest_schema: Any
) -> None:
    for operation in operations(rest_schema):

        @FUZZ
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=server.url, headers=HEADERS)
            label = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{label}: {response.text}"
            no_leak(response.text)

        check()


def test_graphql_answers_every_operation_with_expected_codes(
    server: LiveServer, graphql_schema: Any
) -> None:
    for operation in operations(graphql_schema):

        @FUZZ
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=server.url, headers=HEADERS)
            assert response.status_code < 500, response.text
            no_leak(response.text)
            for error in response.json().get("errors") or []:
                if response.status_code == 400:
                    continue  # refused before it ran (parse, validation, limits)
                code = (error.get("extensions") or {}).get("code")
                assert code in EXPECTED_CODES, f"{error} for {case.body}"

        check()


def test_a_subscription_over_http_post_is_told_to_use_the_websocket_protocol(
    server: LiveServer,
) -> None:
    query = 'subscription { executionEvents(executionId: "1") { status } }'
    answer = httpx.post(f"{server.url}/graphql", json={"query": query}, headers=HEADERS)
    assert answer.status_code < 500
    text = answer.text
    assert "graphql-transport-ws" in text, text
    assert "Unexpected error" not in text
    no_leak(text)
