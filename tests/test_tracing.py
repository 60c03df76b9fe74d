"""Contract section 10, tracing (models/tracing.py): one trace from the HTTP request through the
gRPC call into the engine and to the SAQ worker that ran the task, seen by the SDK's in-memory
exporter with every piece in this process; a real `workflow serve` exporting over OTLP when
OTEL_EXPORTER_OTLP_ENDPOINT is set, and none of the SDK loaded when it is not; a Ray actor
continuing the engine's trace."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from exec_service.types import TaskRequest
from graphql_api.app import EmbeddedExecution, create_app
from models import executions as store
from models import tracing
from models.settings import Settings
from models.trace_sampling import NoLoneCalls
from tests.conftest import CLIENT_HOST, FAST, REPO
from tests.live_server import environment, free_port, live_server, wait_for
from tests.otlp_receiver import Receiver, otlp_receiver
from tests.services import fresh_postgres_database, redis_namespace

EXECUTE = "/execution.WorkflowExecution/ExecuteWorkflow"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into memory, until the test ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=NoLoneCalls(ParentBased(ALWAYS_ON)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture
async def saq_app(spans: InMemorySpanExporter) -> AsyncIterator[FastAPI]:
    """`workflow serve --executor saq` in this process: the API, its execution service (reached
    over gRPC on a port of its own) and a SAQ worker, made after tracing was turned on."""
    async with fresh_postgres_database() as database_url, redis_namespace() as (url, prefix):
        settings = Settings(
            database_url=database_url,
            redis_url=url,
            redis_prefix=prefix,
            allowed_hosts=(CLIENT_HOST,),
            **FAST,
        )
        app = create_app(settings, EmbeddedExecution(executor="saq", port=free_port(), workers=2))
        async with LifespanManager(app):
            yield app


async def finished(app: FastAPI, http: httpx.AsyncClient, execution_id: int) -> dict[str, Any]:
    """The execution once it has ended and its runner is gone (its span ended with it)."""
    engine = app.state.exec_service.engine
    async with asyncio.timeout(30):
        while True:
            execution: dict[str, Any] = (await http.get(f"/executions/{execution_id}")).json()
            if execution["status"] in ("completed", "failed") and execution_id not in (
                engine.runners
            ):
                return execution
            await asyncio.sleep(0.02)  # poll interval


def one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def is_parent(parent: ReadableSpan, child: ReadableSpan) -> bool:
    assert parent.context is not None
    assert child.context is not None
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    found = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        found.append(span)
    return found


async def test_one_trace_from_the_http_request_through_grpc_and_the_engine_to_a_saq_worker(
    saq_app: FastAPI, spans: InMemorySpanExporter
) -> None:
    transport = httpx.ASGITransport(app=saq_app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{CLIENT_HOST}") as http:
        task = {"name": "one", "order": 0, "action": "noop", "parameters": {}}
        created = await http.post("/workflows/", json={"name": "traced", "tasks": [task]})
        workflow_id = created.json()["id"]
        spans.clear()
        answer = await http.post(f"/workflows/{workflow_id}/execute")
        assert answer.status_code == 200, answer.text
        execution_id = answer.json()["id"]
        assert (await finished(saq_app, http, execution_id))["status"] == "completed"

    # The standard services beside it still answer (their handlers are not coroutines).
    target = f"127.0.0.1:{saq_app.state.exec_service.port}"
    async with grpc.aio.insecure_channel(target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    found = list(spans.get_finished_spans())
    request = one(found, f"POST /workflows/{workflow_id}/execute", SpanKind.SERVER)
    client = one(found, EXECUTE, SpanKind.CLIENT)
    server = one(found, EXECUTE, SpanKind.SERVER)
    execution = one(found, "workflow.execution")
    attempt = one(found, "workflow.task.attempt")
    worker = one(found, "workflow.task.run")
    # Each the child of the one before it, in one trace.
    assert request in ancestors(client, found)  # (the REST route's own spans may lie between)
    assert is_parent(client, server)
    assert is_parent(server, execution)
    assert is_parent(execution, attempt)
    assert is_parent(attempt, worker)
    assert request.parent is None
    assert worker.kind == SpanKind.CONSUMER
    assert execution.attributes is not None
    assert attempt.attributes is not None
    assert execution.attributes["workflow.execution.id"] == execution_id
    assert execution.attributes["workflow.execution.status"] == "completed"
    assert attempt.attributes["workflow.task.action"] == "noop"
    assert attempt.attributes["workflow.task.attempt"] == 1
    assert attempt.attributes["workflow.task.outcome"] == "completed"
    assert worker.attributes is not None
    assert worker.attributes["workflow.executor"] == "saq"
    # The enqueue's Redis commands are spans of the attempt too; the engine's and the worker's
    # background calls (lease rounds, polling) made outside any trace are not recorded at all.
    redis_calls = [s for s in found if s.kind == SpanKind.CLIENT and s.name != EXECUTE]
    assert any(attempt in ancestors(call, found) for call in redis_calls)
    assert all(call.parent is not None for call in redis_calls)


async def test_each_attempt_is_a_span_and_failures_are_errors(
    saq_app: FastAPI, spans: InMemorySpanExporter
) -> None:
    transport = httpx.ASGITransport(app=saq_app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{CLIENT_HOST}") as http:
        url = f"http://127.0.0.1:{free_port()}/"  # nothing listens: refused, every time
        task = {
            "name": "bad",
            "order": 0,
            "action": "http",
            "parameters": {"url": url},
            "max_attempts": 2,
        }
        created = await http.post("/workflows/", json={"name": "failing", "tasks": [task]})
        answer = await http.post(f"/workflows/{created.json()['id']}/execute")
        assert (await finished(saq_app, http, answer.json()["id"]))["status"] == "failed"

    found = list(spans.get_finished_spans())
    attempts = sorted(
        (s for s in found if s.name == "workflow.task.attempt"), key=lambda s: s.start_time or 0
    )
    assert [s.attributes and s.attributes["workflow.task.attempt"] for s in attempts] == [1, 2]
    for attempt in attempts:
        assert attempt.status.status_code == StatusCode.ERROR
        assert attempt.attributes is not None
        assert attempt.attributes["workflow.task.outcome"] == "failed"
    runs = [s for s in found if s.name == "workflow.task.run"]
    assert len(runs) == 2
    assert all(run.status.status_code == StatusCode.ERROR for run in runs)
    assert {run.parent.span_id for run in runs if run.parent} == {
        a.context.span_id for a in attempts if a.context
    }


async def test_an_execution_started_without_a_request_is_a_trace_of_its_own(
    saq_app: FastAPI, spans: InMemorySpanExporter
) -> None:
    """Claimed from the pending queue with no request of this process behind it (made by
    another engine, a schedule, or taken over): a new root trace, whatever span is current."""
    transport = httpx.ASGITransport(app=saq_app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{CLIENT_HOST}") as http:
        task = {"name": "one", "order": 0, "action": "noop", "parameters": {}}
        created = await http.post("/workflows/", json={"name": "queued", "tasks": [task]})
        engine = saq_app.state.exec_service.engine
        new = await store.create_execution(
            created.json()["id"], None, engine.owner, 5.0, pending=True
        )
        assert tracing.TRACER is not None
        with tracing.TRACER.start_as_current_span("unrelated"):
            engine.start_pending()
        await finished(saq_app, http, new.id)

    execution = one(list(spans.get_finished_spans()), "workflow.execution")
    assert execution.parent is None


def test_tracing_asked_for_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cli

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    # As if not installed: every module of the SDK's fails to import.
    for name in [name for name in sys.modules if name.startswith("opentelemetry.sdk")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(cli.UsageError, match=r"pip install -e '\.\[otel\]'"):
        cli._tracing("workflow-test")
    assert tracing.TRACER is None


def test_the_switch_is_the_endpoint_and_the_sdk_can_veto_it() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}
    )


@pytest.mark.slow
async def test_serve_exports_an_executions_spans_over_otlp_when_the_endpoint_is_set() -> None:
    async with fresh_postgres_database() as database_url:
        with otlp_receiver() as receiver:
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_SERVICE_NAME": "traced-serve",
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: export soon, not in 5 s
            }
            with live_server(database_url, env) as server:
                trace_id = await asyncio.to_thread(run_one_execution, server.url, receiver)
            attempts = [s for s in receiver.named("workflow.task.attempt")]
            assert [s.trace_id for s in attempts] == [trace_id]
            assert {s.service for s in receiver.spans} == {"traced-serve"}


def run_one_execution(url: str, receiver: Receiver) -> str:
    """Run a one-task workflow over REST; the trace id of the execute request's HTTP span,
    once the execution's spans have arrived too."""
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        task = {"name": "one", "order": 0, "action": "noop", "parameters": {}}
        workflow_id = http.post("/workflows/", json={"name": "w", "tasks": [task]}).json()["id"]
        http.post(f"/workflows/{workflow_id}/execute").raise_for_status()
    path = f"POST /workflows/{workflow_id}/execute"
    wait_for(lambda: bool(receiver.named(path)), 30, "the request's span")
    wait_for(lambda: bool(receiver.named("workflow.execution")), 30, "the execution's span")
    (request,) = receiver.named(path)
    (execution,) = receiver.named("workflow.execution")
    assert execution.trace_id == request.trace_id
    return request.trace_id


@pytest.mark.slow
async def test_without_the_endpoint_nothing_is_exported_and_no_sdk_is_loaded() -> None:
    async with fresh_postgres_database() as database_url:
        with otlp_receiver() as receiver:
            # The endpoint set, and vetoed: nothing may reach it, even at the flush on stop.
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SDK_DISABLED": "true"}
            returncode = await asyncio.to_thread(run_untraced_serve, database_url, env)
            assert returncode is not None  # stopped: its last flush would have happened
            assert receiver.requests == 0
        loaded = await asyncio.to_thread(modules_loaded_untraced, database_url)
        assert loaded == "[]"


def run_untraced_serve(database_url: str, env: dict[str, str]) -> int | None:
    """Run one execution on a `workflow serve` with this environment, and stop it."""
    with (
        live_server(database_url, env) as server,
        httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http,
    ):
        task = {"name": "one", "order": 0, "action": "noop", "parameters": {}}
        created = http.post("/workflows/", json={"name": "w", "tasks": [task]})
        execution = http.post(f"/workflows/{created.json()['id']}/execute").json()
        wait_for(
            lambda: http.get(f"/executions/{execution['id']}").json()["status"] == "completed",
            30,
            "the execution",
        )
    return server.process.returncode


def modules_loaded_untraced(database_url: str) -> str:
    """What a server process loads with tracing off, of the SDK's tracing, the exporters and
    the instrumentations. (Not of the SDK at all: redis-py 8 imports the SDK's metrics, when
    installed, for metrics of its own that stay off unless configured.)"""
    probe = (
        "import sys, cli\n"
        "from models import tracing\n"
        "from graphql_api.app import create_app, EmbeddedExecution\n"
        "import exec_service.worker, exec_service.executors.saq_executor\n"
        "assert not tracing.configure('probe')\n"
        "create_app(None, EmbeddedExecution())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace',"
        " 'opentelemetry.instrumentation', 'opentelemetry.exporter'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        env=environment(database_url, {}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    return loaded.stdout.strip()


async def test_a_ray_actor_continues_the_engines_trace(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor runs in another process: it exports over OTLP, where its executor's process
    would (the OTEL_* variables it hands its actors), to a receiver here."""
    from exec_service.executors.ray_executor import RayExecutor
    from tests.ray_cluster import ensure_ray

    ensure_ray()
    with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "traced-actor")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds
        executor = RayExecutor(num_cpus=1)
        await executor.start()
        try:
            request: TaskRequest = {
                "execution_id": 7,
                "run_id": 70,
                "task_id": 700,
                "action": "noop",
                "parameters": {},
                "attempt": 1,
                "timeout_seconds": 10,
            }
            assert tracing.TRACER is not None
            with tracing.TRACER.start_as_current_span("engine attempt") as attempt:
                assert await executor.run(request) == {}
            await asyncio.to_thread(
                wait_for, lambda: bool(receiver.named("workflow.task.run")), 60, "the actor's span"
            )
        finally:
            await executor.close()
    (run,) = receiver.named("workflow.task.run")
    context = attempt.get_span_context()
    assert run.trace_id == format(context.trace_id, "032x")
    assert run.parent_id == format(context.span_id, "016x")
    assert run.service == "traced-actor"
    assert run.attributes["workflow.executor"] == "ray"
    assert run.attributes["workflow.task.outcome"] == "completed"
