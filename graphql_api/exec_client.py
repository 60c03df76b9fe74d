"""The HTTP plane's client of the execution service (gRPC at `GRPC_TARGET`).

gRPC errors come back as the same WorkflowError family the rest of the plane maps, so a
missing execution is a 404 / NOT_FOUND here as it is there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from exec_service.authz import ON_BEHALF_OF
from models import tracing
from models.access import Forbidden, NotAuthenticated
from models.db_unavailable import UNAVAILABLE_MESSAGE
from models.errors import (
    Conflict,
    Invalid,
    NotFound,
    TooManyRequests,
    Unavailable,
    WorkflowError,
)
from protos import execution_pb2 as pb
from protos import execution_pb2_grpc as pb_grpc

# Seconds a unary call may take; the execution service answers them at once.
CALL_TIMEOUT_SECONDS = 10.0


def _translate(error: grpc.aio.AioRpcError) -> WorkflowError:
    code, detail = error.code(), error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return Invalid(detail)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return Conflict(detail)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return NotAuthenticated()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return Forbidden()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return TooManyRequests(detail)
    if code == grpc.StatusCode.UNAVAILABLE and detail == UNAVAILABLE_MESSAGE:
        return Unavailable(detail)  # the service answered: its database did not
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable("The execution service is not reachable")
    return WorkflowError(f"The execution service failed: {code.name}")


def parse_status(response: pb.WorkflowStatusResponse) -> dict[str, Any]:
    """A WorkflowStatusResponse as the REST `Execution` shape."""
    return {
        "id": response.execution_id,
        "workflow_id": response.workflow_id,
        "status": response.status,
        "started_at": response.started_at or None,
        "completed_at": response.completed_at or None,
        "error": response.error or None,
        "input": json.loads(response.input_json) if response.input_json else None,
        "triggered_by": response.triggered_by,
        "retry_of": response.retry_of or None,
        "tasks": [
            {
                "task_id": task.task_id,
                "name": task.name,
                "order": task.order,
                "status": task.status,
                "attempts": task.attempts,
                "started_at": task.started_at or None,
                "completed_at": task.completed_at or None,
                "output": json.loads(task.output_json) if task.output_json else None,
                "error": task.error or None,
                "parameters": json.loads(task.parameters_json) if task.parameters_json else {},
            }
            for task in response.tasks
        ],
    }


def channel(target: str, tls_ca: str | None = None) -> grpc.aio.Channel:
    """A channel to the execution service: TLS, verified against `tls_ca` (a PEM file), when
    given; plaintext otherwise (loopback, a unix socket, or a network you trust)."""
    # With tracing on: a client span per call, its context sent along (models/tracing.py).
    interceptors = tracing.grpc_client_interceptors()
    if tls_ca is None:
        return grpc.aio.insecure_channel(target, interceptors=interceptors)
    with open(tls_ca, "rb") as pem:
        credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
    return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)


class ExecutionClient:
    """Calls the execution service on behalf of a caller: each call carries the caller's
    `Authorization` value (the execution service checks it again and records its name), or
    the service key when the caller presented none."""

    def __init__(
        self,
        target: str,
        service_key: str | None = None,
        tls_ca: str | None = None,
        internal_key: str | None = None,
    ) -> None:
        self.target = target
        self._service_authorization = f"Bearer {service_key}" if service_key else None
        # What a trigger's delivery presents (it has no key of its caller's).
        self.trigger_authorization = (
            f"Bearer {internal_key}" if internal_key else self._service_authorization
        )
        self._channel = channel(target, tls_ca)
        self._stub = pb_grpc.WorkflowExecutionStub(self._channel)

    def _metadata(self, authorization: str | None) -> tuple[tuple[str, str], ...]:
        value = authorization or self._service_authorization
        return (("authorization", value),) if value else ()

    async def execute(
        self,
        workflow_id: int,
        idempotency_key: str | None,
        input: dict[str, Any] | None = None,
        authorization: str | None = None,
        on_behalf_of: str | None = None,
    ) -> int:
        request = pb.ExecuteWorkflowRequest(
            workflow_id=workflow_id,
            idempotency_key=idempotency_key or "",
            input_json=json.dumps(input, ensure_ascii=False) if input is not None else "",
        )
        try:
            metadata = self._metadata(authorization)
            if on_behalf_of is not None:
                metadata = (*metadata, (ON_BEHALF_OF, on_behalf_of))
            response = await self._stub.ExecuteWorkflow(
                request, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return int(response.execution_id)

    async def retry(self, execution_id: int, authorization: str | None = None) -> int:
        """Start a new execution of a failed or cancelled one. Raises NotFound or Conflict."""
        request = pb.GetWorkflowStatusRequest(execution_id=execution_id)
        try:
            response = await self._stub.RetryExecution(
                request, timeout=CALL_TIMEOUT_SECONDS, metadata=self._metadata(authorization)
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return int(response.execution_id)

    async def cancel(self, execution_id: int, authorization: str | None = None) -> dict[str, Any]:
        request = pb.CancelExecutionRequest(execution_id=execution_id)
        try:
            response = await self._stub.CancelExecution(
                request, timeout=CALL_TIMEOUT_SECONDS, metadata=self._metadata(authorization)
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        return parse_status(response)

    async def watch(
        self, execution_id: int, authorization: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        call = self._stub.WatchExecution(
            pb.GetWorkflowStatusRequest(execution_id=execution_id),
            metadata=self._metadata(authorization),
        )
        try:
            async for response in call:
                yield parse_status(response)
        except grpc.aio.AioRpcError as error:
            raise _translate(error) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()
