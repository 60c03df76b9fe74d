"""The GraphQL schema: queries and mutations over the data layer, with request limits."""

from __future__ import annotations

import logging

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.types import ExecutionContext

from graphql_api.inputs import parse_id, task_create, workflow_create, workflow_update
from graphql_api.types import Task, TaskInput, Workflow, WorkflowInput
from models import workflows as store
from models.errors import Invalid, WorkflowError
from models.inputs import Page

log = logging.getLogger(__name__)

# Request limits. A legitimate query of this schema nests about 5 deep (workflows, tasks, and in
# time executions, task runs); aliases beyond a few dozen only serve to multiply work.
MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 2_000


def _page(skip: int, limit: int) -> Page:
    try:
        return Page(skip=skip, limit=limit)
    except ValueError:
        raise Invalid("Invalid input: skip must be >= 0 and limit between 0 and 1000") from None


@strawberry.type
class Query:
    @strawberry.field
    async def workflows(self, skip: int = 0, limit: int = 100) -> list[Workflow]:
        page = _page(skip, limit)
        rows = await store.list_workflows(page.skip, page.limit)
        return [Workflow.from_dict(row) for row in rows]

    @strawberry.field
    async def workflow(self, id: strawberry.ID) -> Workflow | None:
        row = await store.find_workflow(parse_id(id))
        return Workflow.from_dict(row) if row is not None else None


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create_workflow(self, input: WorkflowInput) -> Workflow:
        return Workflow.from_dict(await store.create_workflow(workflow_create(input)))

    @strawberry.mutation
    async def update_workflow(self, id: strawberry.ID, input: WorkflowInput) -> Workflow:
        workflow_id = parse_id(id)
        update, tasks = workflow_update(input)
        return Workflow.from_dict(await store.update_workflow(workflow_id, update, tasks))

    @strawberry.mutation
    async def delete_workflow(self, id: strawberry.ID) -> bool:
        await store.delete_workflow(parse_id(id))
        return True

    @strawberry.mutation
    async def add_task(self, workflow_id: strawberry.ID, input: TaskInput) -> Task:
        workflow = parse_id(workflow_id, "workflowId")
        return Task.from_dict(await store.add_task(workflow, task_create(input)))

    @strawberry.mutation
    async def update_task(
        self, workflow_id: strawberry.ID, task_id: strawberry.ID, input: TaskInput
    ) -> Task:
        workflow = parse_id(workflow_id, "workflowId")
        task = parse_id(task_id, "taskId")
        return Task.from_dict(await store.update_task(workflow, task, task_create(input)))

    @strawberry.mutation
    async def delete_task(self, workflow_id: strawberry.ID, task_id: strawberry.ID) -> bool:
        await store.delete_task(parse_id(workflow_id, "workflowId"), parse_id(task_id, "taskId"))
        return True


def should_mask_error(error: GraphQLError) -> bool:
    """Mask what we did not raise on purpose; log it with its stack before it is masked."""
    original = error.original_error
    if original is None or isinstance(original, (WorkflowError, GraphQLError)):
        return False  # our own errors, and parse / validation / limit errors
    log.error("unexpected error in GraphQL %s", error.path, exc_info=original)
    return True


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
    extensions=[
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaskErrors(should_mask_error=should_mask_error),
    ],
)
