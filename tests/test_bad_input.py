"""Bad input gets a 4xx with a clear message at the edge: never a 500, a stack trace or SQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from graphql_api.app import LOOPBACK_HOSTS, allowed_hosts
from graphql_api.schema import MAX_ALIASES
from models import workflows as store
from models.settings import Settings, host_patterns
from models.tables import Task, Workflow

TWO_MB = "x" * (2 * 1024 * 1024)
SECRETS = ("Traceback", "SELECT", "INSERT", "asyncpg", "sqlite", 'File "')


def assert_clean(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    for secret in SECRETS:
        assert secret not in response.text, response.text


async def workflow_id(client: httpx.AsyncClient) -> int:
    response = await client.post("/workflows/", json={"name": "target"})
    identifier: int = response.json()["id"]
    return identifier


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 123}, "name"),
        ({"name": None}, "name"),
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "n" * 256}, "name"),
        ({"name": "nul\x00byte"}, "name"),
        ({"name": "ok", "description": "nul\x00"}, "description"),
        ({"name": "ok", "description": ["list"]}, "description"),
        ({"name": "ok", "tasks": "nope"}, "tasks"),
        ({"name": "ok", "tasks": [{"name": "t"}]}, "order"),
        ({"name": "ok", "tasks": [{"name": "t", "order": "first"}]}, "order"),
        ({"name": "ok", "tasks": [{"name": "t", "order": 2**31}]}, "order"),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "execution_type": "x"}]},
            "execution_type",
        ),
        ({"name": "ok", "tasks": [{"name": "t", "order": 1, "parameters": [1]}]}, "parameters"),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "parameters": {"k": "\x00"}}]},
            "parameters",
        ),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "parameters": {"\x00": 1}}]},
            "parameters",
        ),
        ({"name": "ok", "tasks": [{"name": "t", "order": 1, "max_attempts": 0}]}, "max_attempts"),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "timeout_seconds": -1}]},
            "timeout_seconds",
        ),
        ({"name": "ok", "tasks": [{"name": "t", "order": 1, "action": "rm -rf /"}]}, "action"),
        ({"name": "ok", "tasks": [{"name": "t", "order": 1, "action": "nosuch"}]}, "action"),
    ],
)
async def test_rest_rejects_bad_fields_with_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    before = await Workflow.all().count()
    response = await client.post("/workflows/", json=body)
    assert response.status_code == 422, response.text
    assert_clean(response)
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(field in location for location in locations), locations
    assert await Workflow.all().count() == before  # nothing half-written


async def test_rest_task_routes_validate_too(client: httpx.AsyncClient) -> None:
    target = await workflow_id(client)
    response = await client.post(f"/workflows/{target}/tasks/", json={"name": "t", "order": "x"})
    assert response.status_code == 422
    response = await client.put(f"/workflows/{target}", json={"name": 5})
    assert response.status_code == 422


@pytest.mark.parametrize(
    "raw", [b'{"name": ', b"\xff\xfe", b"[1, 2", b"null", b'"name"', b"{'name': 'x'}"]
)
async def test_rest_malformed_json(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/workflows/", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert_clean(response)


async def test_rest_json_nested_past_the_parser_is_a_4xx(client: httpx.AsyncClient) -> None:
    depth = 100_000
    raw = '{"name":"x","parameters":' + "[" * depth + "]" * depth + "}"
    response = await client.post(
        "/workflows/", content=raw, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert_clean(response)


async def test_parameters_nested_too_deep(client: httpx.AsyncClient) -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"k": deep}
    target = await workflow_id(client)
    response = await client.post(
        f"/workflows/{target}/tasks/", json={"name": "t", "order": 1, "parameters": deep}
    )
    assert response.status_code == 422
    assert "nest" in response.text


async def test_two_megabyte_strings_are_refused_before_parsing(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/workflows/", json={"name": TWO_MB})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]
    graphql = await client.post(
        "/graphql",
        json={
            "query": "mutation($n: String!) { createWorkflow(input: {name: $n}) { id } }",
            "variables": {"n": TWO_MB},
        },
    )
    assert graphql.status_code == 413


async def test_a_lying_content_length_does_not_get_past_the_limit(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> Any:
        for _ in range(3):
            yield b"x" * (512 * 1024)

    response = await client.post(
        "/workflows/", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def gql(client: httpx.AsyncClient, query: str, **variables: Any) -> httpx.Response:
    return await client.post("/graphql", json={"query": query, "variables": variables})


CREATE = "mutation($input: WorkflowInput!) { createWorkflow(input: $input) { id } }"


@pytest.mark.parametrize(
    ("workflow_input", "mentions"),
    [
        ({"name": ""}, "input.name"),
        ({"name": "n" * 256}, "input.name"),
        ({"name": "a\x00b"}, "input.name"),
        ({"name": "ok", "description": "\x00"}, "input.description"),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "maxAttempts": 0}]},
            "input.tasks.0.maxAttempts",
        ),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "parameters": {"a": "\x00"}}]},
            "input.tasks.0.parameters",
        ),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "parameters": [1]}]},
            "input.tasks.0.parameters",
        ),
        (
            {"name": "ok", "tasks": [{"name": "t", "order": 1, "timeoutSeconds": 0}]},
            "input.tasks.0.timeoutSeconds",
        ),
    ],
)
async def test_graphql_bad_user_input(
    client: httpx.AsyncClient, workflow_input: dict[str, Any], mentions: str
) -> None:
    before = await Workflow.all().count()
    response = await gql(client, CREATE, input=workflow_input)
    assert_clean(response)
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert mentions in error["message"]
    assert await Workflow.all().count() == before


@pytest.mark.parametrize(
    "variables",
    [
        {"input": {"name": 5}},
        {"input": {"name": "ok", "tasks": [{"name": "t", "order": "one"}]}},
        {"input": {"name": "ok", "tasks": [{"name": "t", "order": 2**31}]}},
        {"input": {"name": "ok", "tasks": [{"name": "t", "order": 1, "executionType": "x"}]}},
        {},
    ],
)
async def test_graphql_wrong_types_are_request_errors(
    client: httpx.AsyncClient, variables: dict[str, Any]
) -> None:
    response = await gql(client, CREATE, **variables)
    assert response.status_code == 400, response.text
    assert_clean(response)
    assert response.json()["errors"][0]["message"]


async def test_graphql_malformed_body(client: httpx.AsyncClient) -> None:
    for raw in [b'{"query": ', b"\xff", b'{"query": "{ workflows { id }"}']:
        response = await client.post(
            "/graphql", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (raw, response.text)
        assert_clean(response)


async def test_graphql_variables_nested_past_the_parser(client: httpx.AsyncClient) -> None:
    raw = '{"query":"{ workflows { id } }","variables":{"a":' + "[" * 100_000 + "]" * 100_000
    response = await client.post(
        "/graphql", content=raw + "}}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert_clean(response)


async def test_graphql_alias_limit(client: httpx.AsyncClient) -> None:
    too_many = " ".join(f"a{i}: workflows(limit: 1) {{ id }}" for i in range(MAX_ALIASES + 1))
    response = await gql(client, "{ " + too_many + " }")
    assert response.status_code == 400
    assert "aliases" in response.json()["errors"][0]["message"]

    five_hundred = " ".join(f"a{i}: __typename" for i in range(500))
    response = await gql(client, "{ " + five_hundred + " }")
    assert response.status_code == 400
    assert_clean(response)


async def test_graphql_depth_limit(client: httpx.AsyncClient) -> None:
    nested = "{ __schema { types { " + "fields { type { " * 10 + "name" + " } }" * 10 + " } } }"
    response = await gql(client, nested)
    assert response.status_code == 400
    # Too costly as well (each `fields` multiplies): the depth error is among the errors.
    assert any("depth" in error["message"] for error in response.json()["errors"])
    braces = await gql(client, "{ " * 5_000)
    assert braces.status_code == 400
    assert_clean(braces)


async def test_graphql_unexpected_errors_are_masked(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(skip: int, limit: int) -> bytes:
        raise RuntimeError('SELECT "secret" FROM workflows failed at /srv/app.py')

    # Under both the fast path (which hands the request to Strawberry) and Strawberry itself.
    monkeypatch.setattr(store, "list_workflows_json", broken)
    response = await gql(client, "{ workflows { id } }")
    assert response.status_code == 200
    assert response.json()["errors"][0]["message"] == "Unexpected error."
    assert "secret" not in response.text
    assert_clean(response)
    assert any("secret" in str(record.exc_info) for record in caplog.records)


async def test_rest_unexpected_errors_are_masked(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(workflow_id: int) -> bytes:
        raise RuntimeError('SELECT "secret" FROM workflows')

    monkeypatch.setattr(store, "get_workflow_json", broken)
    response = await client.get("/workflows/1")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert "Traceback" not in response.text


async def test_a_failure_inside_a_write_leaves_nothing_behind(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating a workflow with tasks is one transaction: a failing task insert undoes it all."""
    before = await Workflow.all().count()
    real_create = Task.create
    calls = 0

    async def failing_create(**fields: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("disk full")
        return await real_create(**fields)

    monkeypatch.setattr(Task, "create", failing_create)
    tasks = [{"name": f"t{n}", "order": n} for n in range(3)]
    response = await client.post("/workflows/", json={"name": "partial", "tasks": tasks})
    assert response.status_code == 500
    assert await Workflow.all().count() == before
    assert not await Workflow.filter(name="partial").exists()


@pytest.mark.parametrize("path", ["/healthz", "/workflows/", "/graphql?query=%7B__typename%7D"])
async def test_a_request_for_another_host_name_is_refused(
    client: httpx.AsyncClient, path: str
) -> None:
    """The app answers the names it is configured with (the client's `test` here), no other:
    what a DNS-rebinding page sends is its own name."""
    assert (await client.get(path)).status_code == 200
    for host in ("attacker.example", "test.attacker.example", "attacker.example:8000"):
        refused = await client.get(path, headers={"host": host})
        assert refused.status_code == 400, (host, refused.text)
        assert refused.text == "Invalid host header"


@pytest.mark.parametrize(
    ("listening", "configured", "answered"),
    [
        ("127.0.0.1", None, list(LOOPBACK_HOSTS)),
        ("::1", None, list(LOOPBACK_HOSTS)),
        ("localhost", None, list(LOOPBACK_HOSTS)),
        ("0.0.0.0", None, ["*"]),
        ("10.1.2.3", None, ["*"]),
        ("127.0.0.1", ("api.example.com", "*.example.org"), ["api.example.com", "*.example.org"]),
        ("0.0.0.0", ("api.example.com",), ["api.example.com"]),
    ],
)
def test_allowed_hosts_follow_the_listening_address_unless_configured(
    listening: str, configured: tuple[str, ...] | None, answered: list[str]
) -> None:
    assert allowed_hosts(Settings(allowed_hosts=configured), listening) == answered


def test_allowed_hosts_from_the_environment() -> None:
    assert host_patterns("") is None
    assert host_patterns(" , ") is None
    assert host_patterns("API.example.com, *.example.org,,*") == (
        "api.example.com",
        "*.example.org",
        "*",
    )
    for mistake in ("api.*.com", "*example.com", "**"):
        with pytest.raises(ValueError, match="WORKFLOW_ALLOWED_HOSTS"):
            host_patterns(mistake)
