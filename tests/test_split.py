"""Split deployment, as compose.yaml runs it: `workflow api`, `workflow grpc --use-saq` and SAQ
workers as separate processes sharing PostgreSQL and Redis. And several `workflow grpc`
replicas on one database: each execution runs exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.live_server import (
    cli_process,
    environment,
    free_port,
    wait_for,
    wait_grpc_serving,
    wait_http_healthy,
)
from tests.recorder import Recorder, recorder
from tests.services import fresh_postgres_database, redis_namespace

pytestmark = pytest.mark.slow
TASK_SECONDS = 1.5


@pytest.fixture
async def shared_env() -> AsyncIterator[dict[str, str]]:
    async with fresh_postgres_database() as database_url, redis_namespace() as (url, prefix):
        yield environment(
            database_url,
            {"REDIS_URL": url, "WORKFLOW_REDIS_PREFIX": prefix, "WORKFLOW_LEASE_SECONDS": "5"},
        )


@pytest.fixture
def endpoint() -> Iterator[Recorder]:
    with recorder() as running:
        yield running


def http_task(endpoint: Recorder, label: str, order: int, delay: float) -> dict[str, Any]:
    return {
        "name": label,
        "order": order,
        "action": "http",
        "parameters": {"url": endpoint.url(label, delay)},
    }


async def follow_subscription(url: str, execution_id: int) -> list[dict[str, Any]]:
    query = """subscription($id: ID!) { executionEvents(executionId: $id) {
      status execution { taskRuns { name status attempts } } } }"""
    events: list[dict[str, Any]] = []
    ws_url = url.replace("http://", "ws://") + "/graphql"
    async with connect(ws_url, subprotocols=["graphql-transport-ws"]) as socket:  # type: ignore[list-item]
        await socket.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        payload = {"query": query, "variables": {"id": str(execution_id)}}
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), 60))
            if message["type"] == "complete":
                return events
            assert message["type"] == "next", message
            events.append(message["payload"]["data"]["executionEvents"])


async def test_api_grpc_and_two_workers_as_separate_processes(
    shared_env: dict[str, str], endpoint: Recorder
) -> None:
    grpc_port, api_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    with ExitStack() as stack:
        grpc_server = stack.enter_context(
            cli_process(["grpc", "--port", str(grpc_port), "--use-saq"], shared_env)
        )
        wait_grpc_serving(grpc_server, f"127.0.0.1:{grpc_port}")
        api_env = {**shared_env, "GRPC_TARGET": f"127.0.0.1:{grpc_port}"}
        api = stack.enter_context(cli_process(["api", "--port", str(api_port)], api_env))
        wait_http_healthy(api, api_url)
        first_worker = stack.enter_context(
            cli_process(["worker", "--concurrency", "2", "--verbose"], shared_env)
        )

        tasks = [http_task(endpoint, f"step{n}", n, TASK_SECONDS) for n in range(3)]
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
            workflow = await http.post("/workflows/", json={"name": "split", "tasks": tasks})
            execution = (await http.post(f"/workflows/{workflow.json()['id']}/execute")).json()
            watcher = asyncio.create_task(follow_subscription(api_url, execution["id"]))

            # The first task is in flight on the only worker: start a second, kill the first.
            await asyncio.to_thread(
                wait_for, lambda: endpoint.count("step0") == 1, 30, "step0 to start"
            )
            second_worker = stack.enter_context(
                cli_process(["worker", "--concurrency", "2", "--verbose"], shared_env)
            )
            first_worker.process.kill()
            first_worker.process.wait(timeout=10)

            try:
                events = await asyncio.wait_for(watcher, 90)
            except TimeoutError:
                # Seen once in six CI runs: keep what the processes said, for the next look.
                logs = "\n".join(
                    f"--- {name} ---\n{process.log()[-4000:]}"
                    for name, process in [("grpc", grpc_server), ("worker 2", second_worker)]
                )
                state = (await http.get(f"/executions/{execution['id']}")).text
                raise AssertionError(f"no end to the run: {state}\n{logs}") from None
            final = (await http.get(f"/executions/{execution['id']}")).json()
        assert second_worker.process.poll() is None, second_worker.log()

    assert final["status"] == "completed", final
    assert [task["status"] for task in final["tasks"]] == ["completed"] * 3
    # step0 was cut short by the kill and ran again on the other worker; nothing else twice.
    assert endpoint.count("step0") == 2
    assert endpoint.count("step1") == 1
    assert endpoint.count("step2") == 1
    # The subscription on the API process saw what the workers did, to the end.
    assert events[-1]["status"] == "COMPLETED"
    seen = {
        (run["name"], run["status"]) for event in events for run in event["execution"]["taskRuns"]
    }
    assert {("step1", "RUNNING"), ("step2", "RUNNING"), ("step2", "COMPLETED")} <= seen


async def test_two_grpc_replicas_run_each_execution_exactly_once(
    shared_env: dict[str, str], endpoint: Recorder
) -> None:
    import grpc

    from protos import execution_pb2 as pb
    from protos.execution_pb2_grpc import WorkflowExecutionStub

    http_port = free_port()
    with ExitStack() as stack:
        # One `serve` for set-up over REST, two more replicas of the execution service.
        serve = stack.enter_context(
            cli_process(
                ["serve", "--port", str(http_port), "--grpc-port", str(free_port())], shared_env
            )
        )
        wait_http_healthy(serve, f"http://127.0.0.1:{http_port}")
        targets = []
        for _ in range(2):
            port = free_port()
            replica = stack.enter_context(cli_process(["grpc", "--port", str(port)], shared_env))
            wait_grpc_serving(replica, f"127.0.0.1:{port}")
            targets.append(f"127.0.0.1:{port}")

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            workflow_ids = []
            for index in range(100):
                tasks = [http_task(endpoint, f"r{index}-{n}", n, 0.05) for n in range(2)]
                created = await http.post("/workflows/", json={"name": "r", "tasks": tasks})
                workflow_ids.append(created.json()["id"])

        channels = [grpc.aio.insecure_channel(target) for target in targets]
        stubs = [WorkflowExecutionStub(channel) for channel in channels]
        executions = await asyncio.gather(
            *(
                stubs[index % 2].ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id=workflow_id))
                for index, workflow_id in enumerate(workflow_ids)
            )
        )

        async def final_status(index: int, execution_id: int) -> str:
            request = pb.GetWorkflowStatusRequest(execution_id=execution_id)
            status = ""
            async for update in stubs[(index + 1) % 2].WatchExecution(request):
                status = update.status
            return status

        statuses = await asyncio.wait_for(
            asyncio.gather(*(final_status(i, e.execution_id) for i, e in enumerate(executions))),
            120,
        )
        for channel in channels:
            await channel.close()
    assert statuses == ["completed"] * 100
    for index in range(100):
        for n in range(2):
            assert endpoint.count(f"r{index}-{n}") == 1, f"r{index}-{n}"
