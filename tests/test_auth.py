"""Who may do what (contract section 7), against real server processes: every surface refuses
no key, a wrong key, a revoked key (within 5 s, on another process too) and a role that may
not; the CLI's keys; the refusal to listen open on a public address. On SQLite, and on
PostgreSQL with Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
import websockets
from websockets.typing import Subprotocol

from protos import execution_pb2 as pb
from protos import execution_pb2_grpc as pb_grpc
from tests.live_server import REPO, LiveServer, free_port, live_server, wait_for
from tests.services import server_environment

ADMIN_KEY = "bootstrap-admin-secret-for-tests"
PROTOCOL = Subprotocol("graphql-transport-ws")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgres-redis"])
async def server_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    async with server_environment(
        request.param, tmp_path_factory, {"WORKFLOW_ADMIN_KEY": ADMIN_KEY}
    ) as env:
        yield env


@pytest.fixture(scope="module")
def server(server_env: dict[str, str]) -> Iterator[LiveServer]:
    with live_server(server_env["DATABASE_URL"], server_env) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def graphql(server: LiveServer, query: str, key: str | None, **variables: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/graphql",
        json={"query": query, "variables": variables},
        headers=bearer(key) if key else {},
        timeout=10,
    )


CREATE_KEY = "mutation($n: String!, $r: Role!) { createApiKey(name: $n, role: $r) { id key role } }"


def make_key(server: LiveServer, name: str, role: str) -> tuple[str, str]:
    answer = graphql(server, CREATE_KEY, ADMIN_KEY, n=name, r=role.upper()).json()
    made = answer["data"]["createApiKey"]
    assert made["key"].startswith("wfk_")
    return made["id"], made["key"]


@pytest.fixture(scope="module")
def keys(server: LiveServer) -> dict[str, str]:
    suffix = str(free_port())
    return {role: make_key(server, f"{role}-{suffix}", role)[1] for role in ("viewer", "operator")}


def grpc_call(server: LiveServer, name: str, request: Any, key: str | None) -> Any:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.WorkflowExecutionStub(channel)
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        method = getattr(stub, name)
        if name == "WatchExecution":
            return list(method(request, metadata=metadata, timeout=10))
        return method(request, metadata=metadata, timeout=10)


def grpc_code(server: LiveServer, name: str, request: Any, key: str | None) -> grpc.StatusCode:
    try:
        grpc_call(server, name, request, key)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("key", [None, "wfk_not-a-key", f"{ADMIN_KEY}x"])
def test_every_surface_refuses_no_key_and_a_wrong_key(server: LiveServer, key: str | None) -> None:
    headers = bearer(key) if key else {}
    for method, path in [
        ("GET", "/workflows/"),
        ("POST", "/workflows/"),
        ("GET", "/executions/1"),
        ("POST", "/workflows/1/execute"),
        ("GET", "/metrics"),
        ("POST", "/graphql"),
        ("GET", "/graphql?query=%7B__typename%7D"),
    ]:
        answer = httpx.request(
            method, server.url + path, headers=headers, json={"query": "{ __typename }"}
        )
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json() == {"detail": "Not authenticated"}
        assert answer.headers["www-authenticate"] == "Bearer"
    status = pb.GetWorkflowStatusRequest(execution_id=1)
    assert grpc_code(server, "GetWorkflowStatus", status, key) == grpc.StatusCode.UNAUTHENTICATED
    execute = pb.ExecuteWorkflowRequest(workflow_id=1)
    assert grpc_code(server, "ExecuteWorkflow", execute, key) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(server, "WatchExecution", status, key) == grpc.StatusCode.UNAUTHENTICATED


def test_what_stays_open(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/openapi.json").status_code == 200
    page = httpx.get(f"{server.url}/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()


def test_roles_include_the_ones_before_them(server: LiveServer, keys: dict[str, str]) -> None:
    viewer, operator = keys["viewer"], keys["operator"]
    body = {"name": "guarded", "tasks": [{"name": "t", "order": 1}]}
    # Only an admin changes workflows.
    for key in (viewer, operator):
        refused = httpx.post(f"{server.url}/workflows/", json=body, headers=bearer(key))
        assert (refused.status_code, refused.json()) == (403, {"detail": "Forbidden"})
    made = httpx.post(f"{server.url}/workflows/", json=body, headers=bearer(ADMIN_KEY))
    assert made.status_code == 200, made.text
    workflow_id = made.json()["id"]
    # A viewer reads; only an operator (or admin) runs.
    assert httpx.get(f"{server.url}/workflows/", headers=bearer(viewer)).status_code == 200
    assert httpx.get(f"{server.url}/metrics", headers=bearer(viewer)).status_code == 200
    execute = f"{server.url}/workflows/{workflow_id}/execute"
    assert httpx.post(execute, headers=bearer(viewer)).status_code == 403
    ran = httpx.post(execute, headers=bearer(operator))
    assert ran.status_code == 200, ran.text
    operator_name = ran.json()["triggered_by"]
    assert operator_name.startswith("operator-")
    by_admin = httpx.post(execute, headers=bearer(ADMIN_KEY)).json()
    assert by_admin["triggered_by"] == "admin"
    # GraphQL: FORBIDDEN for a role that may not; gRPC: PERMISSION_DENIED.
    mutation = "mutation($id: ID!) { executeWorkflow(workflowId: $id) { id triggeredBy } }"
    refused_graphql = graphql(server, mutation, viewer, id=str(workflow_id)).json()
    assert refused_graphql["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    allowed = graphql(server, mutation, operator, id=str(workflow_id)).json()
    assert allowed["data"]["executeWorkflow"]["triggeredBy"] == operator_name
    assert (
        graphql(server, "{ apiKeys { id } }", operator).json()["errors"][0]["extensions"]["code"]
        == "FORBIDDEN"
    )
    request = pb.ExecuteWorkflowRequest(workflow_id=workflow_id)
    assert (
        grpc_code(server, "ExecuteWorkflow", request, viewer) == grpc.StatusCode.PERMISSION_DENIED
    )
    answer = grpc_call(server, "ExecuteWorkflow", request, operator)
    status = pb.GetWorkflowStatusRequest(execution_id=answer.execution_id)
    shown = grpc_call(server, "GetWorkflowStatus", status, viewer)
    assert shown.triggered_by == operator_name
    assert grpc_call(server, "WatchExecution", status, viewer)[-1].status == "completed"


async def subscribe(server: LiveServer, payload: dict[str, Any], execution_id: int) -> Any:
    """Subscribe over graphql-transport-ws; the first event, or the close code."""
    url = server.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=[PROTOCOL]) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
        try:
            ack = json.loads(await asyncio.wait_for(socket.recv(), 10))
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        assert ack["type"] == "connection_ack"
        query = "subscription($id: ID!) { executionEvents(executionId: $id) { status } }"
        await socket.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": query, "variables": {"id": str(execution_id)}},
                }
            )
        )
        return json.loads(await asyncio.wait_for(socket.recv(), 10))


async def test_subscriptions_present_the_key_at_connection_init(
    server: LiveServer, keys: dict[str, str]
) -> None:
    body = {"name": "watched", "tasks": [{"name": "t", "order": 1}]}
    async with httpx.AsyncClient(base_url=server.url) as http:
        made = (await http.post("/workflows/", json=body, headers=bearer(ADMIN_KEY))).json()
        execute = f"/workflows/{made['id']}/execute"
        started = (await http.post(execute, headers=bearer(keys["operator"]))).json()
    assert await subscribe(server, {}, started["id"]) == 4401
    assert await subscribe(server, {"Authorization": "Bearer wrong"}, started["id"]) == 4401
    event = await subscribe(server, {"Authorization": f"Bearer {keys['viewer']}"}, started["id"])
    assert event["type"] == "next"
    assert event["payload"]["data"]["executionEvents"]["status"] in {"IN_PROGRESS", "COMPLETED"}


def test_a_revoked_key_stops_working_within_5_seconds_on_every_process(
    server: LiveServer, server_env: dict[str, str]
) -> None:
    key_id, key = make_key(server, f"short-lived-{free_port()}", "viewer")
    with live_server(server_env["DATABASE_URL"], server_env) as other:
        for process in (server, other):
            assert httpx.get(f"{process.url}/workflows/", headers=bearer(key)).status_code == 200
        revoke = "mutation($id: ID!) { revokeApiKey(id: $id) }"
        assert graphql(server, revoke, ADMIN_KEY, id=key_id).json()["data"]["revokeApiKey"]
        revoked_at = time.monotonic()
        # At once where it was revoked; within 5 s on the other process.
        assert httpx.get(f"{server.url}/workflows/", headers=bearer(key)).status_code == 401
        wait_for(
            lambda: httpx.get(f"{other.url}/workflows/", headers=bearer(key)).status_code == 401,
            5.5,
            "the other process to refuse the revoked key",
        )
        assert time.monotonic() - revoked_at < 5.5
        status = pb.GetWorkflowStatusRequest(execution_id=1)
        assert grpc_code(other, "GetWorkflowStatus", status, key) == grpc.StatusCode.UNAUTHENTICATED


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "REDIS_URL": "", **env}
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_makes_keys_and_sends_them(server: LiveServer, server_env: dict[str, str]) -> None:
    env = {k: v for k, v in server_env.items() if k != "WORKFLOW_ADMIN_KEY"}
    name = f"cli-{free_port()}"
    made = run_cli(env, "keys", "create", name, "--role", "operator")
    assert made.returncode == 0, made.stdout + made.stderr
    key = made.stdout.splitlines()[-1]
    assert key.startswith("wfk_")
    listed = json.loads(run_cli(env, "keys", "list").stdout)
    row = next(row for row in listed if row["name"] == name)
    assert row["role"] == "operator"
    assert key not in json.dumps(listed)  # the secret is never shown again
    client = {"REST_API_URL": server.url, "GRPC_API_URL": server.grpc_target}
    refused = run_cli(client, "list")
    assert refused.stdout.strip() == "Error: API Error (401): Not authenticated"
    assert run_cli(client | {"WORKFLOW_API_KEY": key}, "list").returncode == 0
    status = run_cli(client | {"WORKFLOW_API_KEY": key}, "status", "2147483000")
    assert status.stdout.strip() == "Error: API Error (NOT_FOUND): Execution not found"
    revoked = run_cli(env, "keys", "revoke", str(row["id"]))
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    wait_for(
        lambda: run_cli(client | {"WORKFLOW_API_KEY": key}, "list").returncode == 1,
        10,
        "the revoked key to be refused",
    )
    duplicate = run_cli(env, "keys", "create", name, "--role", "viewer")
    assert duplicate.returncode == 2
    assert "exists already" in duplicate.stdout


def test_an_open_service_refuses_a_public_address(tmp_path: Any) -> None:
    env = {"DATABASE_URL": f"sqlite://{tmp_path}/open.sqlite3"}
    for command in (["serve"], ["api"], ["grpc"]):
        refused = run_cli(env, *command, "--host", "0.0.0.0", "--port", str(free_port()))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "workflow keys create" in refused.stderr
        assert "WORKFLOW_AUTH=off" in refused.stderr


async def test_the_public_address_check_passes_with_a_key_or_when_auth_is_off(
    tmp_path: Any,
) -> None:
    from models.settings import Settings
    from models.startup import is_loopback, open_service_on_public_address

    # (Only the answers that need no database: this process's database belongs to other
    # tests. The refusal itself is shown on real processes above.)
    database = f"sqlite://{tmp_path}/check.sqlite3"
    for host in ("127.0.0.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        assert not is_loopback(host)
    off = Settings(database_url=database, auth_enabled=False)
    assert await open_service_on_public_address(off, "0.0.0.0") is None
    admin = Settings(database_url=database, admin_key="x")
    assert await open_service_on_public_address(admin, "0.0.0.0") is None
