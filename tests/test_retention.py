"""Retention (contract section 9): an ended execution can be deleted, a running one cannot; the
execution service prunes ended executions older than WORKFLOW_RETENTION, never a running one.
Deletion on the shared app; pruning on a server process of its own (it deletes every ended
execution of its database). On SQLite and on PostgreSQL with Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import pytest

from models.retention import parse_duration
from protos import execution_pb2 as pb
from tests.executions import make_workflow, noop, wait_until_done
from tests.live_server import live_server, wait_for
from tests.services import server_environment

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub


async def test_an_ended_execution_is_deleted_and_a_running_one_is_not(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    workflow_id = await make_workflow(client, [noop("t", 1)])
    ended = (await client.post(f"/workflows/{workflow_id}/execute")).json()["id"]
    await wait_until_done(stub, ended)
    slow = await make_workflow(client, [noop("slow", 1, 30)])
    running = (await client.post(f"/workflows/{slow}/execute")).json()["id"]

    refused = await client.delete(f"/executions/{running}")
    assert refused.status_code == 409
    assert "cancel it before deleting it" in refused.json()["detail"]
    mutation = "mutation($id: ID!) { deleteExecution(id: $id) }"
    answer = await client.post(
        "/graphql", json={"query": mutation, "variables": {"id": str(running)}}
    )
    assert answer.json()["errors"][0]["extensions"]["code"] == "CONFLICT"

    deleted = await client.delete(f"/executions/{ended}")
    assert (deleted.status_code, deleted.json()) == (200, {"success": True})
    assert (await client.get(f"/executions/{ended}")).status_code == 404
    again = await client.delete(f"/executions/{ended}")
    assert (again.status_code, again.json()) == (404, {"detail": "Execution not found"})
    await stub.CancelExecution(pb.CancelExecutionRequest(execution_id=running))
    answer = await client.post(
        "/graphql", json={"query": mutation, "variables": {"id": str(running)}}
    )
    assert answer.json()["data"]["deleteExecution"] is True
    assert (await client.get(f"/executions/{running}")).status_code == 404


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "WORKFLOW_RETENTION") == seconds


@pytest.mark.parametrize("text", ["", "30", "1w", "-1d", "0s", "d"])
def test_durations_that_are_not(text: str) -> None:
    with pytest.raises(ValueError, match="WORKFLOW_RETENTION must be a duration"):
        parse_duration(text, "WORKFLOW_RETENTION")


@pytest.fixture(params=["sqlite", "postgres-redis"])
async def server_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    async with server_environment(
        request.param, tmp_path_factory, {"WORKFLOW_RETENTION": "1s", "WORKFLOW_PRUNE_EVERY": "1s"}
    ) as env:
        yield env


@pytest.mark.slow
def test_the_pruner_deletes_ended_executions_and_never_a_running_one(
    server_env: dict[str, str],
) -> None:
    with live_server(server_env["DATABASE_URL"], server_env) as server:
        url = server.url

        def workflow(duration: float) -> int:
            body = {
                "name": "w",
                "tasks": [{"name": "t", "order": 1, "parameters": {"duration": duration}}],
            }
            workflow_id: int = httpx.post(f"{url}/workflows/", json=body).json()["id"]
            return workflow_id

        quick, slow = workflow(0), workflow(30)
        running = httpx.post(f"{url}/workflows/{slow}/execute").json()["id"]
        ended = [httpx.post(f"{url}/workflows/{quick}/execute").json()["id"] for _ in range(3)]
        started = time.monotonic()
        wait_for(
            lambda: all(httpx.get(f"{url}/executions/{e}").status_code == 404 for e in ended),
            15,
            "the ended executions to be pruned",
        )
        assert time.monotonic() - started >= 1  # not before they were a second old
        still = httpx.get(f"{url}/executions/{running}")
        assert (still.status_code, still.json()["status"]) == (200, "in_progress")
        httpx.post(f"{url}/executions/{running}/cancel", json={})
