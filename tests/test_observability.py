"""Contract section 10, seeing inside: Prometheus metrics from every process (the HTTP API's
`/metrics`, `workflow grpc --metrics-port`, `workflow worker --metrics-port`) and JSON logs
(`WORKFLOW_LOG_FORMAT=json`), against the real commands; and the pieces on their own."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from graphql_api.request_metrics import REQUESTS
from models.logs import EXECUTION_ID, TASK_ID, JsonFormatter
from models.metrics import GRPC_REQUESTS
from tests.executions import TERMINAL, execute, make_workflow, noop, wait_until_done
from tests.live_server import (
    cli_process,
    environment,
    free_port,
    live_server,
    wait_for,
    wait_grpc_serving,
    wait_http_healthy,
)
from tests.services import fresh_postgres_database, redis_namespace

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

EXECUTE_METHOD = "/execution.WorkflowExecution/ExecuteWorkflow"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, by (name, labels); parsing it checks it too."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


def test_one_execution_in_the_metrics_and_in_json_logs(tmp_path: Any) -> None:
    """`workflow serve` with WORKFLOW_LOG_FORMAT=json: one execution (a noop task that
    completes, then an http task that fails) shows in /metrics, and every line the process
    wrote is a JSON object, some of them with the execution's id."""
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens: the http task fails
    tasks = [
        noop("first", 1),
        {"name": "call", "order": 2, "action": "http", "parameters": {"url": closed}},
    ]
    env = {"WORKFLOW_LOG_FORMAT": "json"}
    with live_server(f"sqlite://{tmp_path / 'json.sqlite3'}", env) as server:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:
            workflow = http.post("/workflows/", json={"name": "seen", "tasks": tasks}).json()
            execution_id = http.post(f"/workflows/{workflow['id']}/execute").json()["id"]

            def ended() -> bool:
                status: str = http.get(f"/executions/{execution_id}").json()["status"]
                return status == "failed"

            wait_for(ended, 30, "the execution to fail")
            found = scrape(f"{server.url}/metrics")
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=10)
        output = server.log()

    assert value(found, "workflow_executions_started_total", source="api") == 1
    assert value(found, "workflow_executions_ended_total", status="failed") == 1
    assert value(found, "workflow_task_attempts_total", action="noop", outcome="completed") == 1
    assert value(found, "workflow_task_attempts_total", action="http", outcome="failed") == 1
    assert value(found, "workflow_task_duration_seconds_count", action="noop") == 1
    assert value(found, "workflow_task_duration_seconds_bucket", action="http", le="+Inf") == 1
    assert value(found, "workflow_executions_running") == 0
    # Routes by template, never by id; the API reached the embedded service over gRPC.
    execute_route = "/workflows/{workflow_id}/execute"
    assert (
        value(found, "workflow_http_requests_total", route=execute_route, method="POST", code="200")
        == 1
    )
    assert (
        value(
            found,
            "workflow_http_request_duration_seconds_bucket",
            route="/executions/{execution_id}",
            method="GET",
            le="+Inf",
        )
        >= 1
    )
    assert value(found, "workflow_grpc_requests_total", method=EXECUTE_METHOD, code="OK") == 1
    assert value(found, "workflow_grpc_request_duration_seconds_count", method=EXECUTE_METHOD) == 1
    labels = {value for _, pairs in found for _, value in pairs}
    assert not [
        label for label in labels if label.startswith("/") and any(c.isdigit() for c in label)
    ]

    lines = output.splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]  # every line, or this raises
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert any(entry.get("execution_id") == execution_id for entry in entries), output
    assert any(entry["logger"] == "uvicorn.access" for entry in entries)  # uvicorn's, as JSON
    # Nothing misleading at start or stop.
    assert not [entry for entry in entries if "Tortoise-ORM shutdown" in entry["message"]]
    assert not [entry for entry in entries if entry["level"] in ("WARNING", "ERROR")], output


@pytest.fixture
async def shared_env() -> AsyncIterator[dict[str, str]]:
    async with fresh_postgres_database() as database_url, redis_namespace() as (url, prefix):
        yield environment(database_url, {"REDIS_URL": url, "WORKFLOW_REDIS_PREFIX": prefix})


@pytest.mark.slow
async def test_grpc_and_worker_serve_their_own_metrics(shared_env: dict[str, str]) -> None:
    """The split deployment: the execution service counts the calls and the attempts as the
    engine saw them, the worker the attempts it ran; each on its own --metrics-port."""
    grpc_port, api_port, grpc_metrics, worker_metrics = (free_port() for _ in range(4))
    api_url = f"http://127.0.0.1:{api_port}"
    grpc_command = ["grpc", "--port", str(grpc_port), "--use-saq"]
    with ExitStack() as stack:
        service = stack.enter_context(
            cli_process([*grpc_command, "--metrics-port", str(grpc_metrics)], shared_env)
        )
        worker = stack.enter_context(
            cli_process(["worker", "--metrics-port", str(worker_metrics)], shared_env)
        )
        wait_grpc_serving(service, f"127.0.0.1:{grpc_port}")
        api_env = {**shared_env, "GRPC_TARGET": f"127.0.0.1:{grpc_port}"}
        api = stack.enter_context(cli_process(["api", "--port", str(api_port)], api_env))
        wait_http_healthy(api, api_url)
        async with httpx.AsyncClient(base_url=api_url, timeout=30, trust_env=False) as http:
            workflow_id = await make_workflow(http, [noop("t", 1)])
            execution_id = (await http.post(f"/workflows/{workflow_id}/execute")).json()["id"]

            async def ended() -> str:
                while True:
                    status: str = (await http.get(f"/executions/{execution_id}")).json()["status"]
                    if status in TERMINAL:
                        return status
                    await asyncio.sleep(0.05)  # poll interval

            assert await asyncio.wait_for(ended(), 60) == "completed"
        on_service = await asyncio.to_thread(scrape, f"http://127.0.0.1:{grpc_metrics}/metrics")
        on_worker = await asyncio.to_thread(scrape, f"http://127.0.0.1:{worker_metrics}/metrics")
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(timeout=10)
        worker_log = worker.log()

    assert value(on_service, "workflow_grpc_requests_total", method=EXECUTE_METHOD, code="OK") == 1
    assert (
        value(on_service, "workflow_task_attempts_total", action="noop", outcome="completed") == 1
    )
    assert value(on_service, "workflow_executions_ended_total", status="completed") == 1
    assert ("workflow_executions_pending", frozenset()) in on_service
    assert not [name for name, _ in on_service if name.startswith("workflow_worker_")]

    assert value(on_worker, "workflow_worker_tasks_total", action="noop", outcome="completed") == 1
    assert value(on_worker, "workflow_worker_task_duration_seconds_count", action="noop") == 1
    assert not [name for name, _ in on_worker if name.startswith("workflow_grpc_")]
    # An idle worker's normal stop says nothing alarming.
    assert "did not finish" not in worker_log, worker_log


def _count(name: str, **labels: str) -> float:
    """A sample of the request families, read from them alone (the whole registry's collection
    would start a count of pending executions, a query other tests' counters could catch)."""
    for family in (REQUESTS, GRPC_REQUESTS):
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
    return 0.0


def _requests(route: str, method: str, code: str) -> float:
    return _count("workflow_http_requests_total", route=route, method=method, code=code)


async def test_requests_are_counted_by_route_template(client: httpx.AsyncClient) -> None:
    missing = "/workflows/{workflow_id}"
    labels = [
        (missing, "GET", "404"),  # the fast path's answer, under the route it stands for
        ("other", "GET", "404"),  # no such route: never the raw path
        ("/workflows", "other", "405"),  # a method nobody has, in a bounded label
    ]
    before = [
        _count("workflow_http_requests_total", route=r, method=m, code=c) for r, m, c in labels
    ]
    assert (await client.get("/workflows/2147483000")).status_code == 404
    assert (await client.get("/workflows/2147483000/")).status_code == 404
    assert (await client.get("/no/such/path/12345")).status_code == 404
    assert (await client.request("BREW", "/workflows/")).status_code == 405
    after = [
        _count("workflow_http_requests_total", route=r, method=m, code=c) for r, m, c in labels
    ]
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 1, 1]
    seconds = _count("workflow_http_request_duration_seconds_count", route=missing, method="GET")
    assert seconds >= 2


async def test_grpc_calls_are_counted_with_their_code(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    import grpc

    from protos import execution_pb2 as pb

    method = "/execution.WorkflowExecution/GetWorkflowStatus"
    not_found = _count("workflow_grpc_requests_total", method=method, code="NOT_FOUND")
    ok = _count("workflow_grpc_requests_total", method=method, code="OK")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(execution_id=2147483000))
    execution_id = await execute(stub, await make_workflow(client, [noop("t", 1)]))
    await wait_until_done(stub, execution_id)
    await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(execution_id=execution_id))
    assert _count("workflow_grpc_requests_total", method=method, code="NOT_FOUND") == not_found + 1
    assert _count("workflow_grpc_requests_total", method=method, code="OK") == ok + 1


def test_json_lines_carry_the_execution_and_task() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "two\nlines, %s", ("\udcff",), None)
    execution, task = EXECUTION_ID.set(7), TASK_ID.set(3)
    try:
        line = formatter.format(record)
        record.execution_id = 9  # as `extra=` puts it: the record's own wins
        overridden = json.loads(formatter.format(record))
    finally:
        TASK_ID.reset(task)
        EXECUTION_ID.reset(execution)
    assert "\n" not in line
    assert line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "two\nlines, \udcff"
    assert (entry["level"], entry["logger"], entry["execution_id"], entry["task_id"]) == (
        "INFO",
        "x",
        7,
        3,
    )
    assert "workflow_id" not in entry
    assert entry["time"].endswith("Z")
    assert overridden["execution_id"] == 9
    assert "execution_id" not in json.loads(formatter.format(logging.makeLogRecord({})))

    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "it failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]
