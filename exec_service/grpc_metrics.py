"""gRPC calls by method and status code, with their latency: a server interceptor, first of
the server's, so that it sees the calls the authentication refuses too.

It wraps each call's behaviour in one of the same kind (a coroutine, an async generator, or a
plain function or generator: the health service's are plain, and grpc.aio runs those on a
thread), since grpc.aio decides how to run a behaviour by what kind it is. A method no service
has is counted as `other` (its name is the caller's to choose).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter, Histogram

from models.metrics import GRPC_DURATION, GRPC_REQUESTS, OTHER

if TYPE_CHECKING:
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]


def _code(context: Any, error: BaseException | None) -> str:
    """The call's status: what the behaviour set (abort sets it too), else OK, CANCELLED or
    UNKNOWN (what grpc answers for an exception nobody turned into a status)."""
    code = context.code()
    if code is not None:
        return str(getattr(code, "name", code))
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


class _Method:
    """The label children of one method (looked up once, not on every call)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.duration: Histogram = GRPC_DURATION.labels(method)
        self._counters: dict[str, Counter] = {}

    def record(self, context: Any, error: BaseException | None, started: float) -> None:
        self.duration.observe(time.perf_counter() - started)
        code = _code(context, error)
        counter = self._counters.get(code)
        if counter is None:
            counter = self._counters[code] = GRPC_REQUESTS.labels(self.method, code)
        counter.inc()


def _wrap(behavior: Callable[..., Any], method: _Method) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            started, error = time.perf_counter(), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                method.record(context, error, started)

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: Any) -> Any:
            started, error = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                method.record(context, error, started)

        return unary
    if inspect.isgeneratorfunction(behavior):

        def sync_stream(request: Any, context: Any) -> Iterator[Any]:
            started, error, seen = time.perf_counter(), None, _SyncContext(context)
            try:
                yield from behavior(request, seen)
            except BaseException as exc:
                error = exc
                raise
            finally:
                method.record(seen, error, started)

        return sync_stream

    def sync_unary(request: Any, context: Any) -> Any:
        started, error, seen = time.perf_counter(), None, _SyncContext(context)
        try:
            return behavior(request, seen)
        except BaseException as exc:
            error = exc
            raise
        finally:
            method.record(seen, error, started)

    return sync_unary


class _SyncContext:
    """The context of a plain (thread-run) behaviour, which cannot tell the status it was
    given: this one remembers it on the way through."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._context.abort(code, details)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


_FACTORIES = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


class GrpcMetrics(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}
        self._unknown = GRPC_REQUESTS.labels(OTHER, "UNIMPLEMENTED")

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            self._unknown.inc()  # grpc answers UNIMPLEMENTED
            return None
        name = handler_call_details.method
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = _Method(name)
        for kind, factory in _FACTORIES:
            behavior = getattr(handler, kind)
            if behavior is not None:
                make: Any = factory
                return make(  # type: ignore[no-any-return]
                    _wrap(behavior, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
