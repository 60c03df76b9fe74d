"""Authentication on the HTTP plane: one ASGI middleware for every HTTP request, the
graphql-transport-ws `connection_init` for subscriptions, and the checks that REST routes and
GraphQL fields declare beside themselves (`needs(Role.X)`, `Needs(Role.X)`).

Open without a key: `/healthz`, the webhook route (`/hooks/...`, its own secret), the pages
that describe the API rather than its data (`/docs`, `/openapi.json`, the GraphiQL page a
browser loads from `/graphql`) and the files those pages load (`/_assets/...`). Everything
else, GraphQL over HTTP included, needs a key once one exists.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.permission import BasePermission
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from graphql_api.asgi_answers import send_json
from models.access import ANONYMOUS, Authenticator, NotAuthenticated, Principal, Role, require

# Paths any caller may read, key or not.
PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
PUBLIC_PREFIXES = (
    "/hooks/",
    # The pages' JavaScript, CSS and icons (graphql_api/pages.py), role needed: none. Files of
    # public npm packages, the same for every caller: nothing in them is a secret.
    "/_assets/",
)
UNAUTHENTICATED = {"detail": "Not authenticated"}


def _authenticator(scope: Scope) -> Authenticator:
    authenticator: Authenticator = scope["app"].state.authenticator
    return authenticator


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _is_graphiql_page(scope: Scope) -> bool:
    """A browser opening /graphql: the IDE's HTML, which holds no data (its queries are sent
    with the key the user enters in its Headers tab)."""
    if scope["method"] != "GET" or scope["path"].rstrip("/") != "/graphql":
        return False
    accept = _header(scope, b"accept") or ""
    return "text/html" in accept and b"query=" not in scope.get("query_string", b"")


class Authentication:
    """Finds the caller of every HTTP request (401 when it needs a key and has none that is
    valid) and leaves it in `request.state.principal` for the routes' own role checks.
    WebSocket connections pass: they present their key in `connection_init`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # An open service, known to be open: nothing to check, and nothing to record (readers
        # take a missing principal for ANONYMOUS). This layer then costs the read path next
        # to nothing (benchmarks/bench_api.py measured 8% of a cached read without it).
        if scope["type"] != "http" or _authenticator(scope).open_now():
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        state = scope.setdefault("state", {})
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or _is_graphiql_page(scope):
            state["principal"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        try:
            state["principal"] = await _authenticator(scope).principal(authorization)
        except NotAuthenticated:
            await send_json(send, 401, UNAUTHENTICATED, [(b"www-authenticate", b"Bearer")])
            return
        # Passed on to the execution service, which checks it again (it trusts no caller).
        state["authorization"] = authorization
        await self.app(scope, receive, send)


def principal_of(request: Request) -> Principal:
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


def needs(role: Role) -> Any:
    """A REST route's dependency: the caller's role must include `role` (else 403)."""

    async def check(request: Request) -> None:
        require(principal_of(request), role)

    return Depends(check)


class Needs(BasePermission):
    """A GraphQL field's permission: `permission_classes=[Needs.OPERATOR]`."""

    message = "Forbidden"
    error_extensions = {"code": "FORBIDDEN"}
    role = Role.VIEWER

    def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
        principal: Principal = info.context.get("principal", ANONYMOUS)
        return principal.role >= self.role

    VIEWER: type[Needs]
    OPERATOR: type[Needs]
    ADMIN: type[Needs]


Needs.VIEWER = type("NeedsViewer", (Needs,), {"role": Role.VIEWER})
Needs.OPERATOR = type("NeedsOperator", (Needs,), {"role": Role.OPERATOR})
Needs.ADMIN = type("NeedsAdmin", (Needs,), {"role": Role.ADMIN})


class AuthenticatedTransportWS(BaseGraphQLTransportWSHandler[Any, Any]):
    """graphql-transport-ws whose `connection_init` must carry the key (payload
    `{"Authorization": "Bearer <key>"}`) once keys exist: closed with 4401 when it does not."""

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload") or {}
        authorization = None
        if isinstance(payload, dict):
            value = payload.get("Authorization", payload.get("authorization"))
            authorization = value if isinstance(value, str) else None
        try:
            principal = await self.context["authenticator"].principal(authorization)
        except NotAuthenticated:
            await self.websocket.close(code=4401, reason="Unauthorized")
            return
        self.context["principal"] = principal
        self.context["authorization"] = authorization
        await super().handle_connection_init(message)
