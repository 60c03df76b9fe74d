"""Authentication on the gRPC plane: a server interceptor, and the `needs` decorator with which
each RPC of the servicer declares the role it needs.

The execution service trusts no caller for being on the network: every call presents a key in
its `authorization` metadata (`Bearer <key>`), `workflow api` included (it passes its caller's
key on, or its own WORKFLOW_SERVICE_KEY). The health service answers anyone, as `/healthz`
does; reflection needs a viewer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc

from exec_service.request_checks import checked
from models.access import Authenticator, Forbidden, NotAuthenticated, Principal, Role, require

F = TypeVar("F", bound=Callable[..., Any])
REQUIRED_ROLE = "_required_role"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# gRPC metadata naming what an admin caller starts an execution for (`trigger:<id>`): the
# execution records it as its triggered_by.
ON_BEHALF_OF = "x-workflow-on-behalf-of"


def needs(role: Role) -> Callable[[F], F]:
    """Declare the role an RPC method needs (read by `method_roles`)."""

    def mark(method: F) -> F:
        setattr(method, REQUIRED_ROLE, role)
        return method

    return mark


def method_roles(service_name: str, servicer: object) -> dict[str, Role]:
    """Full method name -> role, for each method of the servicer that declares one."""
    roles = {}
    for name in dir(type(servicer)):
        role = getattr(getattr(type(servicer), name, None), REQUIRED_ROLE, None)
        if isinstance(role, Role):
            roles[f"/{service_name}/{name}"] = role
    return roles


def authorization_of(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return str(value)
    return None


async def caller(
    authenticator: Authenticator, context: grpc.aio.ServicerContext[Any, Any]
) -> Principal:
    """The caller of a call the interceptor let through (its check again: a cache hit)."""
    return await authenticator.principal(authorization_of(context.invocation_metadata()))


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, detail: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` that answers `code` at once."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, detail)

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(code, detail)
        yield  # pragma: no cover (abort raises)

    kinds = {"request_deserializer": handler.request_deserializer}
    kinds["response_serializer"] = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream, **kinds)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kinds)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, **kinds)
    return grpc.unary_unary_rpc_method_handler(unary, **kinds)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call without a valid key (UNAUTHENTICATED) or whose key's role may not make
    it (PERMISSION_DENIED), before it reaches the servicer. Methods that declare no role need
    a viewer; the health service needs nothing."""

    def __init__(self, authenticator: Authenticator, roles: Mapping[str, Role]) -> None:
        self.authenticator = authenticator
        self.roles = dict(roles)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        try:
            principal = await self.authenticator.principal(
                authorization_of(handler_call_details.invocation_metadata)
            )
            require(principal, self.roles.get(method, Role.VIEWER))
        except NotAuthenticated as exc:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, exc.message)
        except Forbidden as exc:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, exc.message)
        if method in self.roles:  # our own service's methods (not reflection's)
            return checked(handler)
        return handler
