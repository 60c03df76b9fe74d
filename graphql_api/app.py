"""The ASGI application factory of the HTTP plane."""

from __future__ import annotations

import gc
import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from cross_web import HTTPException
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from graphql import GraphQLError, OperationType, get_operation_ast, parse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from exec_service.server import ExecutionService, ServerTls
from graphql_api import health, hooks, pages, rest
from graphql_api.auth import AuthenticatedTransportWS, Authentication
from graphql_api.body_limit import BodySizeLimit
from graphql_api.database_unavailable import DatabaseUnavailable
from graphql_api.exec_client import ExecutionClient
from graphql_api.fast_graphql import FastGraphQLReads, answer_json
from graphql_api.fast_reads import FastWorkflowReads
from graphql_api.json_only import JsonOnly
from graphql_api.loaders import executions_loader
from graphql_api.request_metrics import RequestMetrics
from graphql_api.schema import schema
from graphql_api.validation_errors import validation_error
from models import api_keys, paced_json, tracing
from models.access import ANONYMOUS
from models.cache import make_cache, set_cache
from models.db import start_database, stop_database
from models.db_unavailable import RETRY_AFTER_SECONDS
from models.errors import Invalid, TooManyRequests, Unavailable, WorkflowError
from models.settings import Settings
from models.startup import is_loopback

log = logging.getLogger(__name__)


class GraphQLHTTPRouter(GraphQLRouter[Any, Any]):
    """Strawberry's router, answering 400 to requests that never ran (parse or validation errors,
    limits), as GraphQL over HTTP asks, instead of 200; subscriptions authenticate at
    `connection_init`."""

    graphql_transport_ws_handler_class = AuthenticatedTransportWS

    async def render_graphql_ide(self, request: Any) -> HTMLResponse:
        # GraphiQL with its assets served from here, not from a CDN (graphql_api/pages.py).
        return pages.graphiql_page()

    async def execute_single(
        self,
        request: Any,
        request_adapter: Any,
        sub_response: Any,
        context: Any,
        root_value: Any,
        request_data: Any,
    ) -> Any:
        if _is_subscription(request_data.query, request_data.operation_name):
            raise HTTPException(400, SUBSCRIPTION_OVER_HTTP)
        return await super().execute_single(
            request, request_adapter, sub_response, context, root_value, request_data
        )

    def decode_json(self, data: str | bytes) -> object:
        try:
            return json.loads(data)
        except (RecursionError, UnicodeDecodeError):
            # Nested deeper than the parser's stack, or not UTF-8: malformed, not a crash.
            raise json.JSONDecodeError("not parseable JSON", "", 0) from None

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        if _is_request_error(response_data):
            sub_response.status_code = 400
        # As Strawberry's encode_json writes it, in pieces: a large answer (tens of MB) is
        # encoded a slice at a time and streamed, so it never holds the loop in one go.
        parts = paced_json.pieces(response_data, answer_json)
        head, complete = paced_json.first_slice(parts)
        response: Response
        if complete:
            response = Response(head, media_type="application/json")
        else:
            response = StreamingResponse(
                _streamed(head, paced_json.chunks(parts)), media_type="application/json"
            )
        response.status_code = sub_response.status_code or 200
        response.headers.raw.extend(sub_response.headers.raw)
        return response


async def _streamed(head: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield head
    async for chunk in rest:
        yield chunk


SUBSCRIPTION_OVER_HTTP = (
    "Subscriptions are served over WebSocket, with the graphql-transport-ws protocol on "
    "/graphql, not over HTTP requests"
)


def _is_subscription(query: str | None, operation_name: str | None) -> bool:
    """Whether the document's operation is a subscription (parsed only when the text could be
    one: most requests never pay for it)."""
    if not query or "subscription" not in query:
        return False
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except GraphQLError:
        return False  # left to the executor, which answers what is wrong with it
    return operation is not None and operation.operation == OperationType.SUBSCRIPTION


def _is_request_error(data: GraphQLHTTPResponse | list[GraphQLHTTPResponse]) -> bool:
    if not isinstance(data, Mapping) or data.get("data") is not None:
        return False
    errors = cast(list[Mapping[str, Any]], data.get("errors") or [])
    # Errors raised while executing carry the path of their field; request errors have none.
    return bool(errors) and all(not error.get("path") for error in errors)


@dataclass(frozen=True)
class EmbeddedExecution:
    """Run the execution service inside the API process (`workflow serve`)."""

    executor: str = "asyncio"
    host: str = "127.0.0.1"
    port: int = 50051
    # With the saq executor: the concurrency of the SAQ worker run in this process too.
    workers: int = 10
    # gRPC over TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    tls: ServerTls | None = None


# The names a loopback address answers to, as a browser on this machine sends them in `Host`
# (Starlette compares the header's host without its port; an IPv6 address keeps its brackets).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def allowed_hosts(settings: Settings, host: str) -> list[str]:
    """The Host headers the API answers, listening on `host`: WORKFLOW_ALLOWED_HOSTS when set.
    Else, on loopback, loopback's names only: a web page whose own name the attacker points at
    127.0.0.1 (DNS rebinding) reaches the port, but its requests say its name, and get 400.
    Elsewhere, any: whoever bound a public address exposed the service on purpose, under names
    only they know (README: set WORKFLOW_ALLOWED_HOSTS)."""
    if settings.allowed_hosts is not None:
        return list(settings.allowed_hosts)
    return list(LOOPBACK_HOSTS) if is_loopback(host) else ["*"]


def create_app(
    settings: Settings | None = None,
    embedded: EmbeddedExecution | None = None,
    host: str = "127.0.0.1",
) -> FastAPI:
    """The HTTP API; with `embedded`, the execution service too, in the same process. `host`
    is the address the HTTP server listens on (it decides which Host headers are answered)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start_database(settings.database_url)
        cache = make_cache(settings.redis_url, settings.redis_prefix, settings.cache_ttl_seconds)
        set_cache(cache)
        authenticator = api_keys.authenticator(settings.admin_key, settings.auth_enabled)
        app.state.authenticator = authenticator
        if embedded is not None:
            # What this process's webhook route presents to its own execution service.
            authenticator.internal_key = secrets.token_urlsafe(32)
        service: ExecutionService | None = None
        target, tls_ca = settings.grpc_target, settings.grpc_tls_ca
        try:
            if embedded is not None:
                service = ExecutionService(
                    settings,
                    embedded.executor,
                    embedded.host,
                    embedded.port,
                    embedded_workers=embedded.workers if embedded.executor == "saq" else None,
                    tls=embedded.tls,
                    authenticator=authenticator,
                    local_socket=embedded.tls is not None,
                )
                await service.start()
                target, tls_ca = service.local_target or f"127.0.0.1:{service.port}", None
            app.state.exec_client = ExecutionClient(
                target, settings.service_key, tls_ca, authenticator.internal_key
            )
            app.state.exec_service = service
            # Everything made at start-up lives as long as the process: keep it out of the
            # garbage collector's full passes, which otherwise stall requests for ~60 ms.
            gc.collect()
            gc.freeze()
            yield
        finally:
            # Here, not after uvicorn returns: uvicorn re-raises SIGTERM once serve() ends,
            # so code after it never runs.
            if service is not None:
                await service.stop()
            await app.state.exec_client.close()
            await cache.close()
            set_cache(None)
            await stop_database()
            tracing.flush()  # nothing of this process runs after uvicorn returns

    async def graphql_context(connection: HTTPConnection) -> dict[str, Any]:
        # HTTPConnection: the same dependency serves HTTP requests and WebSocket subscriptions
        # (whose principal comes later, with `connection_init`: AuthenticatedTransportWS).
        state = connection.scope.get("state") or {}
        return {
            "executions_loader": executions_loader(),
            "exec_client": connection.app.state.exec_client,
            "authenticator": connection.app.state.authenticator,
            "principal": state.get("principal", ANONYMOUS),
            "authorization": state.get("authorization"),
        }

    app = FastAPI(
        title="Workflow API",
        version="0.1.0",
        lifespan=lifespan,
        # Routes register their trailing-slash twins themselves: answer, never redirect.
        redirect_slashes=False,
        # No OpenTelemetry here; FastAPI's hooks would look for providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # /docs is graphql_api/pages.py's, from files of this package: FastAPI's own pages load
        # theirs from a CDN (ReDoc's bundle, its logo from one too: it stays off).
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(rest.router)
    app.include_router(health.router)
    app.include_router(hooks.router)
    app.include_router(pages.router)
    app.include_router(
        GraphQLHTTPRouter(
            schema,
            graphql_ide="graphiql",
            context_getter=graphql_context,
            # The contract's protocol only: its connection_init carries the key.
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
        ),
        prefix="/graphql",
    )

    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(WorkflowError)
    async def workflow_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, WorkflowError)
        detail: Any = exc.errors if isinstance(exc, Invalid) else exc.message
        # A dependency that did not answer: say when to try again.
        headers = None
        if isinstance(exc, Unavailable):
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        elif isinstance(exc, TooManyRequests):
            headers = {"Retry-After": "1"}
        return JSONResponse({"detail": detail}, status_code=exc.http_status, headers=headers)

    # The last added runs first: the body limit applies to the GraphQL fast path too.
    app.add_middleware(FastGraphQLReads)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(FastWorkflowReads)
    app.add_middleware(JsonOnly)
    # Nothing answers a caller before it is known...
    app.add_middleware(Authentication)
    # A database that does not answer is 503, wherever it was found (the middlewares above
    # read it too).
    app.add_middleware(DatabaseUnavailable)
    # ...nor a request addressed to another name (added after those, so it runs before them).
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings, host))
    # Counts and times every answer, refusals included (outermost but for tracing).
    app.add_middleware(RequestMetrics)
    if tracing.TRACER is not None:
        # A span around each request, whichever layer answers it (models/tracing.py).
        tracing.add_http_middleware(app)
    return app
