"""The GraphQL schema: queries, mutations and subscriptions, with request limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any

import strawberry
from graphql import ASTValidationRule, GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxTokensLimiter,
    ParserCache,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.scalars import JSON
from strawberry.types import ExecutionContext

from graphql_api.auth import Needs
from graphql_api.exec_client import ExecutionClient
from graphql_api.inputs import parse_id, task_create, workflow_create, workflow_update
from graphql_api.query_cost import CostLimits, cost_rule
from graphql_api.schedule_fields import ScheduleMutation, ScheduleQuery
from graphql_api.types import (
    MAX_PAGE,
    ApiKey,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    NewApiKey,
    NewTrigger,
    RoleEnum,
    Task,
    TaskInput,
    TaskRunStatus,
    Trigger,
    Workflow,
    WorkflowInput,
    checked_page,
)
from models import api_keys, retention, triggers
from models import executions as execution_store
from models import workflows as store
from models.access import Role
from models.db_unavailable import UNAVAILABLE_MESSAGE, database_unavailable
from models.errors import Unavailable, WorkflowError
from models.inputs import MAX_TASKS_PER_WORKFLOW, execution_input
from models.inputs import idempotency_key as idempotency_key_of
from models.outages import Outage
from models.pacing import paced
from models.schedules import MAX_SCHEDULES_PER_WORKFLOW

log = logging.getLogger(__name__)

# Request limits. A legitimate query of this schema nests about 5 deep (workflows, executions,
# task runs); aliases beyond a few dozen only serve to multiply work.
MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 2_000
DOCUMENT_CACHE_SIZE = 512
# The query cost limit: the most fields an answer can hold (graphql_api/query_cost.py). A page
# of 100 workflows with their tasks' names scores 100,301 (each of up to 1,000 tasks); a page
# with every field of workflows and tasks, as REST's page has them, 1,100,601; issue #16's
# thirty aliases of `workflows { tasks { parameters } }` 3,003,030. README lists more.
MAX_QUERY_COST = 1_200_000
# Lists without a `limit` argument: each counts as the most items it can hold.
LIST_SIZES = {
    ("Workflow", "tasks"): MAX_TASKS_PER_WORKFLOW,
    ("Execution", "taskRuns"): MAX_TASKS_PER_WORKFLOW,  # one run per task of its snapshot
    ("Query", "schedules"): MAX_SCHEDULES_PER_WORKFLOW,  # of one workflow; see below
}
# Triggers, API keys and every workflow's schedules have no bound of their own: they are made
# by admins, a few per workflow or per client, and hold no list to multiply. Counted as a page.
UNBOUNDED_LIST_SIZE = MAX_PAGE
COST_LIMITS = CostLimits(
    maximum=MAX_QUERY_COST,
    page_cap=MAX_PAGE,
    list_sizes=LIST_SIZES,
    default_list_size=UNBOUNDED_LIST_SIZE,
)
LIMIT_RULES: list[type[ASTValidationRule]] = [
    depth_rule(MAX_DEPTH, None, None),
    aliases_rule(MAX_ALIASES),
    cost_rule(COST_LIMITS),
]


def _authorization(info: strawberry.Info) -> str | None:
    """The caller's key, passed on to the execution service (which checks it again)."""
    value: str | None = info.context.get("authorization")
    return value


def _client(info: strawberry.Info) -> ExecutionClient:
    client: ExecutionClient = info.context["exec_client"]
    return client


@strawberry.type
class KeyQuery:
    @strawberry.field(
        description="Every API key (never its secret), revoked ones too.",
        permission_classes=[Needs.ADMIN],
    )
    async def api_keys(self) -> list[ApiKey]:
        return [ApiKey.from_dict(row) for row in await api_keys.list_keys()]


@strawberry.type
class TriggerQuery:
    @strawberry.field(
        description="Webhook triggers, of one workflow when given.",
        permission_classes=[Needs.ADMIN],
    )
    async def triggers(self, workflow_id: strawberry.ID | None = None) -> list[Trigger]:
        workflow = parse_id(workflow_id, "workflowId") if workflow_id is not None else None
        return [Trigger.from_dict(row) for row in await triggers.list_triggers(workflow)]


@strawberry.type
class TriggerMutation:
    @strawberry.mutation(
        description="A webhook trigger; its secret is in this answer only.",
        permission_classes=[Needs.ADMIN],
    )
    async def create_trigger(self, workflow_id: strawberry.ID, name: str) -> NewTrigger:
        row, secret = await triggers.create_trigger(parse_id(workflow_id, "workflowId"), name)
        return NewTrigger(
            id=strawberry.ID(str(row["id"])), name=row["name"], path=row["path"], secret=secret
        )

    @strawberry.mutation(
        description="Delete a trigger: its deliveries are refused.",
        permission_classes=[Needs.ADMIN],
    )
    async def delete_trigger(self, id: strawberry.ID) -> bool:
        await triggers.delete_trigger(parse_id(id))
        return True


@strawberry.type
class KeyMutation:
    @strawberry.mutation(
        description="A new API key; its secret is in this answer only.",
        permission_classes=[Needs.ADMIN],
    )
    async def create_api_key(self, info: strawberry.Info, name: str, role: RoleEnum) -> NewApiKey:
        row, secret = await api_keys.create_key(name, Role.parse(role.value))
        info.context["authenticator"].forget()
        return NewApiKey.from_dict(row, secret)

    @strawberry.mutation(
        description="Revoke a key: every process refuses it within 5 s.",
        permission_classes=[Needs.ADMIN],
    )
    async def revoke_api_key(self, info: strawberry.Info, id: strawberry.ID) -> bool:
        await api_keys.revoke_key(parse_id(id))
        info.context["authenticator"].forget()
        return True


@strawberry.type
class Query(KeyQuery, TriggerQuery, ScheduleQuery):
    @strawberry.field(
        description="A page of workflows, ordered by id.",
        permission_classes=[Needs.VIEWER],
        graphql_type=list[Workflow],
    )
    async def workflows(self, skip: int = 0, limit: int = 100) -> AsyncIterator[Workflow]:
        page = checked_page(skip, limit)
        rows = await store.list_workflows(page.skip, page.limit)
        return paced(rows, Workflow.from_dict)

    @strawberry.field(
        description="One workflow, or null when there is none with this id.",
        permission_classes=[Needs.VIEWER],
    )
    async def workflow(self, id: strawberry.ID) -> Workflow | None:
        row = await store.find_workflow(parse_id(id))
        return Workflow.from_dict(row) if row is not None else None

    @strawberry.field(
        description="One execution, or null when there is none with this id.",
        permission_classes=[Needs.VIEWER],
    )
    async def execution(self, id: strawberry.ID) -> Execution | None:
        row = await execution_store.find_execution(parse_id(id))
        return Execution.from_dict(row) if row is not None else None

    @strawberry.field(
        description="Executions, newest first; of one workflow when given.",
        permission_classes=[Needs.VIEWER],
        graphql_type=list[Execution],
    )
    async def executions(
        self, workflow_id: strawberry.ID | None = None, skip: int = 0, limit: int = 100
    ) -> AsyncIterator[Execution]:
        page = checked_page(skip, limit)
        workflow = parse_id(workflow_id, "workflowId") if workflow_id is not None else None
        rows = await execution_store.list_executions(workflow, page.skip, page.limit)
        return paced(rows, Execution.from_dict)


@strawberry.type
class Mutation(KeyMutation, TriggerMutation, ScheduleMutation):
    @strawberry.mutation(permission_classes=[Needs.ADMIN])
    async def create_workflow(self, input: WorkflowInput) -> Workflow:
        return Workflow.from_dict(await store.create_workflow(workflow_create(input)))

    @strawberry.mutation(permission_classes=[Needs.ADMIN])
    async def update_workflow(self, id: strawberry.ID, input: WorkflowInput) -> Workflow:
        workflow_id = parse_id(id)
        update, tasks = workflow_update(input)
        return Workflow.from_dict(await store.update_workflow(workflow_id, update, tasks))

    @strawberry.mutation(permission_classes=[Needs.ADMIN])
    async def delete_workflow(self, id: strawberry.ID) -> bool:
        await store.delete_workflow(parse_id(id))
        return True

    @strawberry.mutation(permission_classes=[Needs.ADMIN])
    async def add_task(self, workflow_id: strawberry.ID, input: TaskInput) -> Task:
        workflow = parse_id(workflow_id, "workflowId")
        return Task.from_dict(await store.add_task(workflow, task_create(input)))

    @strawberry.mutation(permission_classes=[Needs.ADMIN])
    async def update_task(
        self, workflow_id: strawberry.ID, task_id: strawberry.ID, input: TaskInput
    ) -> Task:
        workflow = parse_id(workflow_id, "workflowId")
        task = parse_id(task_id, "taskId")
        return Task.from_dict(await store.update_task(workflow, task, task_create(input)))

    @strawberry.mutation(permission_classes=[Needs.ADMIN])
    async def delete_task(self, workflow_id: strawberry.ID, task_id: strawberry.ID) -> bool:
        await store.delete_task(parse_id(workflow_id, "workflowId"), parse_id(task_id, "taskId"))
        return True

    @strawberry.mutation(
        description="Start an execution (or return the one with this key).",
        permission_classes=[Needs.OPERATOR],
    )
    async def execute_workflow(
        self,
        info: strawberry.Info,
        workflow_id: strawberry.ID,
        idempotency_key: str | None = None,
        input: JSON | None = None,
    ) -> Execution:
        workflow = parse_id(workflow_id, "workflowId")
        key = idempotency_key_of(idempotency_key, "idempotencyKey")
        data = execution_input(input, "input")
        execution_id = await _client(info).execute(workflow, key, data, _authorization(info))
        return Execution.from_dict(await execution_store.get_execution(execution_id))

    @strawberry.mutation(
        description="Run a failed or cancelled execution again as a new one, on the same "
        "snapshot and input: its completed tasks keep their outputs and are not run again.",
        permission_classes=[Needs.OPERATOR],
    )
    async def retry_execution(self, info: strawberry.Info, id: strawberry.ID) -> Execution:
        execution_id = await _client(info).retry(parse_id(id), _authorization(info))
        return Execution.from_dict(await execution_store.get_execution(execution_id))

    @strawberry.mutation(
        description="Delete an ended execution with its task runs (CONFLICT while it runs).",
        permission_classes=[Needs.OPERATOR],
    )
    async def delete_execution(self, id: strawberry.ID) -> bool:
        await retention.delete_execution(parse_id(id))
        return True

    @strawberry.mutation(
        description="Stop the execution's running tasks and mark it cancelled.",
        permission_classes=[Needs.OPERATOR],
    )
    async def cancel_execution(self, info: strawberry.Info, id: strawberry.ID) -> Execution:
        answer = await _client(info).cancel(parse_id(id), _authorization(info))
        return Execution.from_dict(answer)


def _changed_task(
    before: dict[str, Any] | None, after: dict[str, Any]
) -> tuple[str | None, str | None]:
    """The first task run whose status or attempts differ between two snapshots."""
    if before is None:
        return None, None
    previous = {run["task_id"]: run for run in before["tasks"]}
    for run in after["tasks"]:
        old = previous.get(run["task_id"])
        if old is None or (old["status"], old["attempts"]) != (run["status"], run["attempts"]):
            return str(run["task_id"]), run["status"]
    return None, None


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The execution's current state, then every change; completes after the "
        "terminal event.",
        permission_classes=[Needs.VIEWER],
    )
    async def execution_events(
        self, info: strawberry.Info, execution_id: strawberry.ID
    ) -> AsyncGenerator[ExecutionEvent, None]:
        identifier = parse_id(execution_id, "executionId")
        previous: dict[str, Any] | None = None
        async for snapshot in _client(info).watch(identifier, _authorization(info)):
            task_id, task_status = _changed_task(previous, snapshot)
            previous = snapshot
            yield ExecutionEvent(
                execution_id=strawberry.ID(str(identifier)),
                status=ExecutionStatus(snapshot["status"]),
                task_id=strawberry.ID(task_id) if task_id is not None else None,
                task_status=TaskRunStatus(task_status) if task_status is not None else None,
                at=datetime.now(UTC),
                execution=Execution.from_dict(snapshot),
            )


_DATABASE_OUTAGE = Outage(log, "the database (GraphQL)")


def should_mask_error(error: GraphQLError) -> bool:
    """Mask what we did not raise on purpose; log it with its stack before it is masked (a
    database that does not answer is an outage, warned of once)."""
    original = error.original_error
    if original is None or isinstance(original, (WorkflowError, GraphQLError)):
        return False  # our own errors, and parse / validation / limit errors
    if database_unavailable(original):
        _DATABASE_OUTAGE.failed(original, "fields are answered SERVICE_UNAVAILABLE")
    else:
        log.error("unexpected error in GraphQL %s", error.path, exc_info=original)
    return True


class MaskUnexpectedErrors(MaskErrors):
    """Strawberry's masking, except that a database that does not answer is said so (code
    SERVICE_UNAVAILABLE: the client may try again), not "Unexpected error."."""

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        if error.original_error is not None and database_unavailable(error.original_error):
            return GraphQLError(
                message=UNAVAILABLE_MESSAGE,
                nodes=error.nodes,
                source=error.source,
                positions=error.positions,
                path=error.path,
                original_error=None,
                extensions={"code": Unavailable.graphql_code},
            )
        return super().anonymise_error(error)


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Strawberry logs every error with its stack. Ours and the client's are answers, not
        # incidents; unexpected ones are logged by should_mask_error.
        return None


schema = Schema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    extensions=[
        # The same rule classes for every request (the limiters' own constructors make new
        # ones each time), so that ValidationCache, keyed by the rules too, can hit.
        lambda: AddValidationRules(LIMIT_RULES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaskUnexpectedErrors(should_mask_error=should_mask_error),
        # Parsing and validating a document cost more than running it: clients send the same
        # few documents again and again, so both are cached by document text.
        lambda: ParserCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
    ],
)
