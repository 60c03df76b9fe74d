"""PostgreSQL stops for ten seconds (`pg_ctl stop -m fast`, then start) while `workflow serve`
runs executions of http tasks against a counting server in this process (issue 16, the second
row).

What must hold: every execution completes; no task's call is made twice (each call's path
names its execution and task, and the counting server sees each path once); no task has more
attempts than it may; the HTTP API answers 503 with Retry-After during the outage, never 500;
a gRPC watch that spans the outage ends with the execution's end, not INTERNAL."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import grpc
import httpx
import pytest

from protos import execution_pb2 as pb
from protos.execution_pb2_grpc import WorkflowExecutionStub
from tests.faults.own_services import CountingServer, own_postgres
from tests.live_server import cli_process, environment, free_port, wait_http_healthy

# Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them: else a
# request sent as the server closes its connection fails with ReadError, a race of the client.
KEEPALIVE = httpx.Limits(keepalive_expiry=2)
LANES = 6
TASKS = 3
OUTAGE_SECONDS = 10


async def lane(
    http: httpx.AsyncClient,
    workflow_id: int,
    stop_at: float,
    codes: collections.Counter[int],
    unexpected: list[tuple[str, str, int, str]],
) -> list[int]:
    started: list[int] = []

    async def call(method: str, path: str, **options: Any) -> httpx.Response | None:
        answer = await http.request(method, path, **options)
        codes[answer.status_code] += 1
        if answer.status_code == 503:
            assert answer.headers.get("retry-after"), answer.headers
            await asyncio.sleep(0.5)  # as Retry-After says, sooner
            return None
        if answer.status_code != 200:
            unexpected.append((method, path, answer.status_code, answer.text[:200]))
            await asyncio.sleep(0.5)
            return None
        return answer

    while time.monotonic() < stop_at:
        made = await call("POST", f"/workflows/{workflow_id}/execute", json={})
        if made is None:
            continue
        execution_id = made.json()["id"]
        started.append(execution_id)
        while True:
            read = await call("GET", f"/executions/{execution_id}")
            if read is not None and read.json()["status"] in {"completed", "failed"}:
                break
            await asyncio.sleep(0.1)  # poll interval
    return started


async def watch_to_the_end(target: str, workflow_id: int) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = WorkflowExecutionStub(channel)
        made = await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id=workflow_id))
        last = ""
        request = pb.GetWorkflowStatusRequest(execution_id=made.execution_id)
        async for update in stub.WatchExecution(request):
            last = update.status
        return last


@pytest.mark.timeout(150)
async def test_executions_ride_out_a_postgres_outage() -> None:
    counting = CountingServer()
    await counting.start()
    with own_postgres() as postgres:
        port, grpc_port = free_port(), free_port()
        env = environment(postgres.url, {})
        arguments = ["serve", "--port", str(port), "--grpc-port", str(grpc_port)]
        with cli_process(arguments, env) as server:
            url = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(wait_http_healthy, server, url)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=KEEPALIVE) as http:
                base = f"http://127.0.0.1:{counting.port}"
                tasks = [
                    {
                        "name": f"t{n}",
                        "order": n,
                        "action": "http",
                        "parameters": {"url": f"{base}/{{{{ execution.id }}}}/t{n}"},
                    }
                    for n in range(TASKS)
                ]
                made = await http.post("/workflows/", json={"name": "calls", "tasks": tasks})
                assert made.status_code == 200, made.text
                workflow_id = made.json()["id"]
                slow = [{"name": "wait", "order": 1, "parameters": {"duration": 14}}]
                slow_made = await http.post("/workflows/", json={"name": "slow", "tasks": slow})
                codes: collections.Counter[int] = collections.Counter()
                unexpected: list[tuple[str, str, int, str]] = []
                stop_at = time.monotonic() + OUTAGE_SECONDS + 5
                watcher = asyncio.create_task(
                    watch_to_the_end(f"127.0.0.1:{grpc_port}", slow_made.json()["id"])
                )
                lanes = asyncio.gather(
                    *(lane(http, workflow_id, stop_at, codes, unexpected) for _ in range(LANES))
                )
                await asyncio.sleep(2)
                await asyncio.to_thread(postgres.stop)
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(postgres.start)
                started = [e for one in await asyncio.wait_for(lanes, 90) for e in one]
                watched = await asyncio.wait_for(watcher, 60)
                rows = [
                    (await http.get(f"/executions/{execution_id}")).json()
                    for execution_id in started
                ]
        log = server.log()
    await counting.close()
    tracebacks = [part[:6000].split("\nINFO")[0] for part in log.split("Traceback")[1:]]
    assert not unexpected, (unexpected, tracebacks[:2])
    not_completed = [
        (row["id"], row["status"], row["error"]) for row in rows if row["status"] != "completed"
    ]
    assert not not_completed, (not_completed, log[-5000:])
    repeated = {path: count for path, count in counting.calls.items() if count > 1}
    assert not repeated, repeated
    over = [
        (row["id"], task["name"], task["attempts"])
        for row in rows
        for task in row["tasks"]
        if task["attempts"] > 1
    ]
    assert not over, over
    assert codes[500] == 0, codes
    assert codes[503] > 0, codes  # the outage was seen
    assert watched == "completed"
    assert not tracebacks, [part[-600:] for part in tracebacks[:4]]
    assert len(started) >= LANES
