"""OpenTelemetry traces (contract section 10), with the `otel` extra: on when
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, off otherwise
and with `OTEL_SDK_DISABLED=true`.

One trace follows a request from the HTTP API (the ASGI instrumentation), through the gRPC
call (client and server interceptors), into the engine (a span for the execution, one for each
task attempt), and to where the attempt runs: a SAQ worker or a Ray actor, whose span is a
child of the attempt's, its context carried in the task's request (`trace_context`, a W3C
`traceparent` as OpenTelemetry's propagators write it). PostgreSQL (asyncpg) and Redis calls
made inside a trace are spans of it too; made outside any trace (lease rounds, the bus, SAQ's
polling), they are not recorded at all, or every command would be a trace of its own.

Off, none of the SDK's tracing, exporters or instrumentations is imported (the API is:
FastAPI imports it; and redis-py 8 imports the SDK's metrics for its own, off unless
configured), and what the hot paths do is one look at `TRACER`, a module-level None.

Every process sets it up as it starts (cli.py: `serve`, `api`, `grpc`, `worker`; a Ray actor
when its first call carries a context, with the OTEL_* variables its executor handed it).
Spans are exported over OTLP as the standard variables say (endpoint, protocol `http/protobuf`
by default or `grpc`, headers, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the sampler).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from models.settings import load_env_file

if TYPE_CHECKING:
    import grpc
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from starlette.applications import Starlette

    from exec_service.types import TaskRequest

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
INSTALL_HINT = "pip install -e '.[otel]' (or 'workflow-engine[otel]')"
# The instrumentation scope of this project's own spans.
SCOPE = "workflow-engine"

# Set while tracing is on in this process: what the hot paths look at, and nothing else.
TRACER: Tracer | None = None
_provider: TracerProvider | None = None
_owned = False  # whether this module made the provider (and shuts it down)


class TracingUnavailable(RuntimeError):
    """Tracing is asked for (the endpoint is set) but the `otel` extra is not installed."""


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (a `.env` file counts, as for every setting)."""
    if environ is None:
        load_env_file()
        environ = os.environ
    if (environ.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return False
    return any((environ.get(name) or "").strip() for name in ENDPOINTS)


def configure(service: str) -> bool:
    """Set up tracing in this process if the environment asks for it (once; later calls do
    nothing). `service` is the default `service.name` (OTEL_SERVICE_NAME wins). True when on.
    Raises TracingUnavailable when asked for without the extra, and ValueError for a protocol
    the exporters do not speak."""
    global _owned
    if TRACER is not None:
        return True
    if not wanted():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise TracingUnavailable(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing needs the otel extra: "
            f"{INSTALL_HINT}; or unset it, or set OTEL_SDK_DISABLED=true ({error})"
        ) from None
    exporter = _exporter()
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    from models.trace_sampling import NoLoneCalls

    provider = TracerProvider(resource=resource)
    # The sampler the environment chose (OTEL_TRACES_SAMPLER), behind the rule on lone calls.
    provider.sampler = NoLoneCalls(provider.sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # Global too: an action of a user's that makes spans of its own joins the same traces.
    trace.set_tracer_provider(provider)
    enable(provider)
    _owned = True
    return True


def _exporter() -> Any:
    """The OTLP span exporter the protocol variables name; each reads the rest of its
    variables (endpoint, headers, timeout, certificates) itself."""
    protocol = next((os.environ[name] for name in PROTOCOLS if os.environ.get(name)), "")
    protocol = protocol.strip().lower() or "http/protobuf"
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, not {protocol!r}")


def enable(provider: TracerProvider) -> None:
    """Trace through `provider` from now on (configure's last step; tests give theirs, with an
    in-memory exporter): this project's spans, and the asyncpg and redis instrumentations."""
    global TRACER, _provider
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().instrument(  # type: ignore[no-untyped-call]
        tracer_provider=provider
    )
    RedisInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    TRACER = provider.get_tracer(SCOPE)


def disable() -> None:
    """Stop tracing in this process (tests: after one that traced)."""
    global TRACER, _provider, _owned
    if TRACER is None:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().uninstrument()
    TRACER, _provider, _owned = None, None, False


def flush() -> None:
    """Export what is buffered now: a process about to end (uvicorn re-raises SIGTERM once it
    has stopped, so no exit handler of the SDK's runs after it)."""
    if _provider is not None and _owned:
        _provider.force_flush()


def add_http_middleware(app: Starlette) -> None:
    """The app's outermost middleware: a server span per HTTP request or WebSocket connection,
    around everything that answers (the fast paths too). Not a span per WebSocket message: a
    subscription sends one per event for as long as it lasts."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(
        OpenTelemetryMiddleware, tracer_provider=_provider, exclude_spans=["receive", "send"]
    )


def grpc_client_interceptors() -> list[grpc.aio.ClientInterceptor] | None:
    """A gRPC channel's interceptors: a client span per call, its context sent in metadata."""
    if TRACER is None:
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_provider
    )
    return interceptors


def grpc_server_interceptors(service: str) -> list[grpc.aio.ServerInterceptor]:
    """A gRPC server's first interceptor: a server span per call of `service` (its full name),
    the caller's its parent. Of that service only: the instrumentation awaits what a handler
    returns, and the standard health and reflection services' handlers are not coroutines."""
    if TRACER is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    only = filters.service_name(service)
    return [aio_server_interceptor(tracer_provider=_provider, filter_=only)]  # type: ignore[no-untyped-call]


# What the engine does. The attributes are this project's: `workflow.*`.


def current_context() -> Context:
    """The context a span started now would have for parent (the caller's request's)."""
    from opentelemetry import context

    return context.get_current()


@contextmanager
def execution_span(execution_id: int, workflow_id: int, parent: Context | None) -> Iterator[Span]:
    """The span of an execution's run in this engine, current while it runs: the child of the
    request that started it (`parent`), or with no parent, the root of a trace of its own."""
    from opentelemetry.context import Context

    assert TRACER is not None
    with TRACER.start_as_current_span(
        "workflow.execution",
        context=parent if parent is not None else Context(),
        attributes={"workflow.execution.id": execution_id, "workflow.id": workflow_id},
    ) as span:
        yield span


def attempt_started(request: TaskRequest) -> Span:
    """The span of one attempt of a task (a child of the current one, the execution's)."""
    assert TRACER is not None
    return TRACER.start_span("workflow.task.attempt", attributes=_task_attributes(request))


@contextmanager
def current(span: Span) -> Iterator[None]:
    """`span` is the current one inside (what an executor carries on, and what asyncpg and
    redis calls made meanwhile are children of); it is not ended here."""
    from opentelemetry.trace import use_span

    with use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def attempt_ended(span: Span, outcome: str, error: BaseException | str | None = None) -> None:
    """End an attempt's span with its outcome; failed and timed out are errors."""
    from opentelemetry.trace import StatusCode

    span.set_attribute("workflow.task.outcome", outcome)
    if isinstance(error, BaseException):
        span.record_exception(error)
    if outcome in ("failed", "timed_out"):
        span.set_status(StatusCode.ERROR, str(error) if error is not None else outcome)
    span.end()


def carry(request: TaskRequest) -> TaskRequest:
    """The request with the current context in `trace_context`, for the process that runs it.
    In the request, not beside it: a worker or actor of an earlier version ignores the key."""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return {**request, "trace_context": carrier}


@contextmanager
def task_run_span(request: TaskRequest, executor: str) -> Iterator[Span]:
    """The span of an attempt where it runs (a SAQ worker, a Ray actor): the child of the
    engine's attempt span, from the context the request carries (a root without one)."""
    from opentelemetry.context import Context
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    assert TRACER is not None
    carrier = request.get("trace_context")
    parent = extract(carrier) if carrier else Context()
    attributes = _task_attributes(request) | {"workflow.executor": executor}
    with TRACER.start_as_current_span(
        "workflow.task.run", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def answered(span: Span, answer: Mapping[str, Any]) -> None:
    """Mark a task run's span with the action's answer (`{"ok": ...}`: a failure is an
    answer, not an exception, where it runs)."""
    from opentelemetry.trace import StatusCode

    ok = bool(answer.get("ok"))
    span.set_attribute("workflow.task.outcome", "completed" if ok else "failed")
    if not ok:
        span.set_status(StatusCode.ERROR, str(answer.get("error") or "failed"))


def _task_attributes(request: TaskRequest) -> dict[str, Any]:
    return {
        "workflow.execution.id": request["execution_id"],
        "workflow.task.id": request["task_id"],
        "workflow.task.run_id": request["run_id"],
        "workflow.task.action": request["action"],
        "workflow.task.attempt": request["attempt"],
    }


def environment() -> dict[str, str]:
    """The OTEL_* variables of this process: what a Ray actor needs to export where it does."""
    return {name: value for name, value in os.environ.items() if name.startswith("OTEL_")}
