"""Inputs that used to answer 500 (issue 16's probe): a lone surrogate anywhere text goes,
NaN, Infinity and 1e400 anywhere a number goes, and a large invalid body echoed back whole.
Each is now a 422 naming the field (REST) or BAD_USER_INPUT (GraphQL), with echoed values cut
short. On SQLite and on PostgreSQL with Redis."""

from __future__ import annotations

import json

import httpx
import pytest

from models.errors import ECHO_MAX
from tests.executions import make_workflow

TASK = '{"name": "t", "order": 1, %s}'
SURROGATE_RULE = "must be valid Unicode text (no lone surrogates)"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"name": "\\ud800"}', "name"),
        ('{"name": "ok", "description": "a \\udfff b"}', "description"),
        ('{"name": "x", "tasks": [' + TASK % '"parameters": {"k": "\\ud800"}' + "]}", "parameters"),
        ('{"name": "x", "tasks": [' + TASK % '"parameters": {"\\ud800": 1}' + "]}", "parameters"),
        ('{"name": "x", "tasks": [' + TASK % '"parameters": {"x": NaN}' + "]}", "parameters"),
        ('{"name": "x", "tasks": [' + TASK % '"parameters": {"x": -Infinity}' + "]}", "parameters"),
        ('{"name": "x", "tasks": [' + TASK % '"parameters": {"x": 1e400}' + "]}", "parameters"),
        (
            '{"name": "x", "tasks": [' + TASK % '"timeout_seconds": Infinity' + "]}",
            "timeout_seconds",
        ),
        ('{"name": "x", "tasks": [' + TASK % '"timeout_seconds": NaN' + "]}", "timeout_seconds"),
    ],
)
async def test_hostile_text_and_numbers_are_a_422_naming_the_field(
    client: httpx.AsyncClient, body: str, field: str
) -> None:
    answer = await client.post(
        "/workflows/", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert any(field in error["loc"] for error in detail), detail


@pytest.mark.parametrize(
    "body",
    [
        '{"idempotency_key": "\\ud800"}',
        '{"input": {"a": NaN}}',
        '{"input": {"a": [1, Infinity]}}',
        '{"input": {"\\ud800": 1}}',
        '{"input": {"a": "\\udc00"}}',
    ],
)
async def test_hostile_execute_bodies_are_a_422(client: httpx.AsyncClient, body: str) -> None:
    workflow_id = await make_workflow(client, [])
    answer = await client.post(
        f"/workflows/{workflow_id}/execute",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert (await client.get(f"/workflows/{workflow_id}/executions")).json() == []


async def test_a_large_invalid_body_is_not_echoed_whole(client: httpx.AsyncClient) -> None:
    body = {"name": "x", "tasks": [{"name": "t", "order": "not a number " + "y" * 337_000}]}
    answer = await client.post("/workflows/", json=body)
    assert answer.status_code == 422
    assert len(answer.content) < 2 * ECHO_MAX + 500
    error = answer.json()["detail"][0]
    assert error["loc"] == ["body", "tasks", 0, "order"]
    assert error["input"].endswith("…(truncated)")


async def test_an_ordinary_invalid_body_is_answered_as_fastapi_did(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post("/workflows/", json={"name": 12345})
    assert answer.json() == {
        "detail": [
            {
                "type": "string_type",
                "loc": ["body", "name"],
                "msg": "Input should be a valid string",
                "input": 12345,
            }
        ]
    }


@pytest.mark.parametrize(
    ("variables", "text"),
    [
        ({"input": {"name": "\ud800"}}, "input.name: Value error, " + SURROGATE_RULE),
        ({"input": {"name": "x", "description": "\udfff"}}, "input.description: Value error, "),
        (
            {
                "input": {
                    "name": "x",
                    "tasks": [{"name": "t", "order": 1, "parameters": {"k": "\ud800"}}],
                }
            },
            "lone surrogates",
        ),
    ],
)
async def test_graphql_refuses_hostile_text_as_bad_user_input(
    client: httpx.AsyncClient, variables: dict[str, object], text: str
) -> None:
    mutation = "mutation($input: WorkflowInput!) { createWorkflow(input: $input) { id } }"
    # Sent as the escapes JSON allows for a lone surrogate.
    content = json.dumps({"query": mutation, "variables": variables})
    answer = await client.post(
        "/graphql", content=content, headers={"content-type": "application/json"}
    )
    assert answer.status_code < 500, answer.text
    error = answer.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert text in error["message"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
async def test_state_changing_requests_carry_json_or_nothing(
    client: httpx.AsyncClient, content_type: str
) -> None:
    """What a web page can send without a preflight is refused: no run started from a page."""
    workflow_id = await make_workflow(client, [])
    headers = {"content-type": content_type} if content_type else {}
    for path in (f"/workflows/{workflow_id}/execute", "/workflows/", "/graphql"):
        refused = await client.post(path, content=b'{"name": "x"}', headers=headers)
        assert refused.status_code == 415, (path, refused.text)
        assert refused.json() == {"detail": "Content-Type must be application/json"}
    assert (await client.get(f"/workflows/{workflow_id}/executions")).json() == []


async def test_json_with_parameters_and_an_empty_post_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = await make_workflow(client, [])
    empty = await client.post(f"/workflows/{workflow_id}/execute")
    assert empty.status_code == 200, empty.text
    typed = await client.post(
        f"/workflows/{workflow_id}/execute",
        content=b'{"idempotency_key": "k"}',
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert typed.status_code == 200, typed.text


async def test_a_lone_surrogate_is_refused_naming_the_field_and_the_rule(
    client: httpx.AsyncClient,
) -> None:
    """Every text field, on every route that takes one: the rule, not pydantic's "unable to
    parse raw data as a unicode string"."""
    workflow_id = await make_workflow(client, [])
    cases = [
        ("POST", "/workflows/", '{"name": "\\ud800"}', "name"),
        (
            "PUT",
            f"/workflows/{workflow_id}",
            '{"name": "x", "description": "\\udbff"}',
            "description",
        ),
        ("POST", f"/workflows/{workflow_id}/tasks/", '{"name": "a\\udc00b", "order": 1}', "name"),
        ("POST", f"/workflows/{workflow_id}/tasks/", TASK % '"when": "\\ud800"', "when"),
        (
            "POST",
            f"/workflows/{workflow_id}/execute",
            '{"idempotency_key": "\\ud800"}',
            "idempotency_key",
        ),
    ]
    for method, path, body, field in cases:
        answer = await client.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 422, (path, answer.text)
        [error] = answer.json()["detail"]
        assert error["loc"][-1] == field, error
        assert error["msg"] == "Value error, " + SURROGATE_RULE, error
        assert error["type"] == "value_error"
    assert (await client.get(f"/workflows/{workflow_id}/executions")).json() == []


async def test_names_quoted_in_messages_are_cut_short(client: httpx.AsyncClient) -> None:
    """A template naming a 60,000-character task, or a parameter key that long: the message
    says which rule, with the name cut to ECHO_MAX characters (the whole was sent back)."""
    long = "x" * 60_000
    for parameters in (
        {"a": "{{ tasks." + long + ".output }}"},  # no such task: our message
        {"a": "{{ " + long + " }}"},  # an unknown name: Jinja's message
        {long: "{{ nope }}"},  # the place of the template
    ):
        task = {"name": "t", "order": 1, "parameters": parameters}
        answer = await client.post("/workflows/", json={"name": "w", "tasks": [task]})
        assert answer.status_code == 422, answer.text[:500]
        assert len(answer.content) < 4 * ECHO_MAX + 500, answer.text[:500]
        assert "…(truncated)" in answer.text
        mutation = "mutation($input: WorkflowInput!) { createWorkflow(input: $input) { id } }"
        graphql = await client.post(
            "/graphql",
            json={"query": mutation, "variables": {"input": {"name": "w", "tasks": [task]}}},
        )
        error = graphql.json()["errors"][0]
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert len(error["message"]) < 3 * ECHO_MAX, error["message"][:500]
