"""The gRPC servicer of `execution.WorkflowExecution`: validates, then asks the engine.

Errors map in one place: a WorkflowError's `grpc_code`; anything else is INTERNAL, logged
with its stack and shown masked.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc

from exec_service.authz import ON_BEHALF_OF, caller, needs
from exec_service.bus import EventBus
from exec_service.engine import Engine
from exec_service.rate_limit import StartRate
from exec_service.watch import watch
from models import executions as store
from models.access import Authenticator, Principal, Role
from models.db_unavailable import UNAVAILABLE_MESSAGE, database_unavailable
from models.errors import Invalid, WorkflowError
from models.inputs import execution_input, idempotency_key
from protos import execution_pb2 as pb
from protos import execution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
ON_BEHALF = re.compile(r"^(trigger|schedule):\d{1,10}$")

T = TypeVar("T")


def task_status(run: Mapping[str, Any]) -> pb.TaskStatus:
    return pb.TaskStatus(
        task_id=run["task_id"],
        name=run["name"],
        order=run["order"],
        status=run["status"],
        attempts=run["attempts"],
        started_at=run["started_at"] or "",
        completed_at=run["completed_at"] or "",
        error=run["error"] or "",
        output_json=json.dumps(run["output"]) if run["output"] is not None else "",
        parameters_json=json.dumps(run["parameters"]),
    )


class TaskStatuses:
    """Builds the task entries of one watched execution's messages, each again only when its
    task changed: every message carries every task, and a change touches one or a few."""

    def __init__(self) -> None:
        self._built: dict[int, tuple[Mapping[str, Any], pb.TaskStatus]] = {}

    def __call__(self, run: Mapping[str, Any]) -> pb.TaskStatus:
        built = self._built.get(run["task_id"])
        if built is not None and (built[0] is run or built[0] == run):
            return built[1]
        entry = task_status(run)
        self._built[run["task_id"]] = (run, entry)
        return entry


def status_response(
    snapshot: Mapping[str, Any],
    build: Callable[[Mapping[str, Any]], pb.TaskStatus] = task_status,
) -> pb.WorkflowStatusResponse:
    return pb.WorkflowStatusResponse(
        execution_id=snapshot["id"],
        workflow_id=snapshot["workflow_id"],
        status=snapshot["status"],
        started_at=snapshot["started_at"] or "",
        completed_at=snapshot["completed_at"] or "",
        error=snapshot["error"] or "",
        tasks=[build(run) for run in snapshot["tasks"]],
        output_json=json.dumps(store.execution_output(snapshot["tasks"])),
        input_json=json.dumps(snapshot["input"]) if snapshot["input"] is not None else "",
        triggered_by=snapshot["triggered_by"],
        retry_of=snapshot["retry_of"] or 0,
    )


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise Invalid(f"{name} must be a positive integer, got {value}")
    return value


def _on_behalf_of(context: grpc.aio.ServicerContext[Any, Any], who: Principal) -> str | None:
    """`trigger:<id>` or `schedule:<id>` from an admin caller (the HTTP plane relaying a
    webhook): what the execution records as started by. Anyone else's is ignored."""
    for key, value in context.invocation_metadata() or ():
        if key == ON_BEHALF_OF and who.role == Role.ADMIN and ON_BEHALF.match(str(value)):
            return str(value)
    return None


def _input(text: str) -> dict[str, Any] | None:
    """`input_json`: "" for none, else JSON text of an object (checked as every edge does)."""
    if not text:
        return None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise Invalid("Invalid input: input_json: must be JSON text of an object") from None
    return execution_input(value, "input_json")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _answer(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    try:
        return await call
    except WorkflowError as exc:
        await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
    except Exception as exc:
        await _abort_unexpected(context, exc, "a gRPC call")
    raise AssertionError("abort() raises")  # pragma: no cover


async def _abort_unexpected(
    context: grpc.aio.ServicerContext[Any, Any], error: Exception, where: str
) -> None:
    """End the call for an error we did not raise on purpose: UNAVAILABLE when the database
    does not answer (clients retry it, grpc's own retry policies too), else INTERNAL, logged."""
    if database_unavailable(error):
        await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
    log.exception("unexpected error in %s", where)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class WorkflowExecutionServicer(pb_grpc.WorkflowExecutionServicer):
    """Each RPC declares the role it needs (`@needs`); AuthInterceptor enforces it."""

    def __init__(
        self,
        engine: Engine,
        bus: EventBus,
        authenticator: Authenticator,
        start_rate: StartRate | None = None,
    ) -> None:
        self.engine = engine
        self.bus = bus
        self.authenticator = authenticator
        self.start_rate = start_rate or StartRate(0)

    @needs(Role.OPERATOR)
    async def ExecuteWorkflow(
        self,
        request: pb.ExecuteWorkflowRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ExecuteWorkflowResponse:
        async def execute() -> pb.ExecuteWorkflowResponse:
            workflow_id = _positive(request.workflow_id, "workflow_id")
            key = idempotency_key(request.idempotency_key, "idempotency_key")
            input = _input(request.input_json)
            who = await caller(self.authenticator, context)
            triggered_by = _on_behalf_of(context, who) or who.name
            self.start_rate.take(triggered_by)
            execution_id, created = await self.engine.execute(workflow_id, key, input, triggered_by)
            status = "in_progress"
            if not created:  # a repeated key: the first execution, as it is now
                status = (await store.get_execution(execution_id))["status"]
            return pb.ExecuteWorkflowResponse(execution_id=execution_id, status=status)

        return await _answer(context, execute())

    @needs(Role.VIEWER)
    async def GetWorkflowStatus(
        self,
        request: pb.GetWorkflowStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.WorkflowStatusResponse:
        async def status() -> pb.WorkflowStatusResponse:
            execution_id = _positive(request.execution_id, "execution_id")
            return status_response(await store.get_execution(execution_id))

        return await _answer(context, status())

    @needs(Role.OPERATOR)
    async def CancelExecution(
        self,
        request: pb.CancelExecutionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.WorkflowStatusResponse:
        async def cancel() -> pb.WorkflowStatusResponse:
            execution_id = _positive(request.execution_id, "execution_id")
            return status_response(await self.engine.cancel(execution_id))

        return await _answer(context, cancel())

    @needs(Role.OPERATOR)
    async def RetryExecution(
        self,
        request: pb.GetWorkflowStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ExecuteWorkflowResponse:
        async def retry() -> pb.ExecuteWorkflowResponse:
            execution_id = _positive(request.execution_id, "execution_id")
            who = await caller(self.authenticator, context)
            self.start_rate.take(who.name)
            new_id = await self.engine.retry(execution_id, who.name)
            return pb.ExecuteWorkflowResponse(execution_id=new_id, status="in_progress")

        return await _answer(context, retry())

    @needs(Role.VIEWER)
    async def WatchExecution(
        self,
        request: pb.GetWorkflowStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.WorkflowStatusResponse]:
        try:
            execution_id = _positive(request.execution_id, "execution_id")
            entries = TaskStatuses()
            async for update in watch(self.bus, execution_id, local=self.engine.current):
                yield status_response(update.execution, entries)
        except WorkflowError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
        except Exception as exc:
            # (The database away before the first read: UNAVAILABLE, and the client watches
            # again; later reads wait for it, see exec_service.watch.)
            await _abort_unexpected(context, exc, "WatchExecution")
