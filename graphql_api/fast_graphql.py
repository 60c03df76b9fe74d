"""The hottest GraphQL reads, `{ workflow(id: ...) { ...fields, tasks { ... } } }` and
`{ workflows(skip: ..., limit: ...) { ... } }`, answered without running the GraphQL executor.

Executing a document field by field costs about a millisecond for one workflow with a few
tasks, some 30 times what reading the cached workflow costs (benchmarks/bench_api.py shows it);
a page of 100 workflows of 1,000 tasks costs seconds and a million objects
(benchmarks/bench_loop_block.py). This ASGI middleware recognises documents that only select
plain fields of workflows and their tasks (aliases and __typename allowed; no fragments,
directives or other root fields), checks each once against the real schema and limits,
remembers a plan per document text, and projects the cached workflows through the plan: the
same data-layer read, and byte for byte the answer Strawberry gives (tests compare the two). A
page is decoded, projected and encoded a slice at a time (models/pacing.py). Every other
request goes on to Strawberry unchanged, as does any request the plan cannot answer (a bad id
or page, a variable of the wrong type).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import (
    FieldNode,
    GraphQLError,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    VariableNode,
    parse,
    specified_rules,
    validate,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphql_api.inputs import parse_id
from graphql_api.request_metrics import ROUTE
from graphql_api.schema import LIMIT_RULES, MAX_TOKENS, schema
from graphql_api.types import checked_page
from models import paced_json
from models import workflows as store
from models.db_unavailable import database_unavailable
from models.errors import NotFound, WorkflowError

log = logging.getLogger(__name__)

PLAN_CACHE_SIZE = 512
# Field name -> how to render it from the data layer's dict.
Render = Callable[[dict[str, Any]], Any]


def _utc(text: str | None) -> str | None:
    # Strawberry renders datetimes with isoformat(): "+00:00" where the data layer says "Z".
    return None if text is None else text.removesuffix("Z") + "+00:00"


TASK_FIELDS: dict[str, Render] = {
    "id": lambda row: str(row["id"]),
    "workflowId": lambda row: str(row["workflow_id"]),
    "name": lambda row: row["name"],
    "description": lambda row: row["description"],
    "order": lambda row: row["order"],
    "executionType": lambda row: row["execution_type"].upper(),
    "action": lambda row: row["action"],
    "parameters": lambda row: row["parameters"],
    "maxAttempts": lambda row: row["max_attempts"],
    "timeoutSeconds": lambda row: row["timeout_seconds"],
    "when": lambda row: row.get("when"),
    "__typename": lambda row: "Task",
}
WORKFLOW_FIELDS: dict[str, Render] = {
    "id": lambda row: str(row["id"]),
    "name": lambda row: row["name"],
    "description": lambda row: row["description"],
    "createdAt": lambda row: _utc(row["created_at"]),
    "updatedAt": lambda row: _utc(row["updated_at"]),
    "maxConcurrentExecutions": lambda row: row.get("max_concurrent_executions"),
    "__typename": lambda row: "Workflow",
}


class NotEligible(Exception):
    pass


Selection = list[tuple[str, Render | list[tuple[str, Render]]]]
# workflows(skip, limit) when not given, as the schema's defaults say.
PAGE_DEFAULTS = {"skip": 0, "limit": 100}


@dataclass(frozen=True)
class Plan:
    """How to answer one document: which workflows, and what to pick from each row."""

    key: str  # the response key of the root field (its alias, or its name)
    workflow: Selection
    # workflow(id): the id, as a literal or a variable's name.
    id_literal: str | None = None
    id_variable: str | None = None
    # workflows(skip, limit): None for workflow(id); else each argument as a literal int or
    # a variable's name.
    page: dict[str, int | str] | None = None


def _project(selection: Selection, row: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, render in selection:
        if isinstance(render, list):
            result[key] = [{k: r(task) for k, r in render} for task in row["tasks"]]
        else:
            result[key] = render(row)
    return result


def _simple(field: FieldNode) -> None:
    if field.directives or field.arguments:
        raise NotEligible


def _fields(selections: Any, allowed: dict[str, Render]) -> list[tuple[str, Render]]:
    picked = []
    for selection in selections:
        if not isinstance(selection, FieldNode) or selection.name.value not in allowed:
            raise NotEligible
        _simple(selection)
        if selection.selection_set is not None:
            raise NotEligible
        key = selection.alias.value if selection.alias else selection.name.value
        picked.append((key, allowed[selection.name.value]))
    return picked


def make_plan(query: str) -> Plan:
    """A plan for `query`, or NotEligible (then Strawberry answers it, errors included)."""
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError:
        raise NotEligible from None
    if validate(schema._schema, document, [*specified_rules, *LIMIT_RULES]):
        raise NotEligible
    if len(document.definitions) != 1:
        raise NotEligible
    operation = document.definitions[0]
    if not isinstance(operation, OperationDefinitionNode):
        raise NotEligible
    if operation.operation != OperationType.QUERY or operation.directives:
        raise NotEligible
    roots = operation.selection_set.selections
    if len(roots) != 1 or not isinstance(roots[0], FieldNode):
        raise NotEligible
    root = roots[0]
    if root.name.value not in ("workflow", "workflows"):
        raise NotEligible
    if root.directives or root.selection_set is None:
        raise NotEligible
    literal, variable, page = None, None, None
    if root.name.value == "workflow":
        (argument,) = root.arguments or ()  # validation made sure of exactly one: id
        if isinstance(argument.value, VariableNode):
            variable = argument.value.name.value
        elif isinstance(argument.value, StringValueNode | IntValueNode):
            literal = argument.value.value
        else:
            raise NotEligible
    else:
        page = _page_arguments(root, operation)
    workflow: Selection = []
    for selection in root.selection_set.selections:
        if not isinstance(selection, FieldNode):
            raise NotEligible
        key = selection.alias.value if selection.alias else selection.name.value
        if selection.name.value == "tasks":
            _simple(selection)
            assert selection.selection_set is not None  # validation: an object needs fields
            workflow.append((key, _fields(selection.selection_set.selections, TASK_FIELDS)))
        else:
            workflow.extend(_fields([selection], WORKFLOW_FIELDS))
    key = root.alias.value if root.alias else root.name.value
    return Plan(key, workflow, id_literal=literal, id_variable=variable, page=page)


def _page_arguments(root: FieldNode, operation: OperationDefinitionNode) -> dict[str, int | str]:
    """skip and limit of workflows(...): literal ints, or variables without defaults (a
    variable's default is Strawberry's to apply)."""
    page: dict[str, int | str] = dict(PAGE_DEFAULTS)
    with_defaults = {
        definition.variable.name.value
        for definition in operation.variable_definitions or ()
        if definition.default_value is not None
    }
    for argument in root.arguments or ():
        value = argument.value
        if isinstance(value, IntValueNode):
            page[argument.name.value] = int(value.value)
        elif isinstance(value, VariableNode) and value.name.value not in with_defaults:
            page[argument.name.value] = value.name.value
        else:
            raise NotEligible
    return page


class FastGraphQLReads:
    def __init__(self, app: ASGIApp, path: str = "/graphql") -> None:
        self.app = app
        self.path = path
        self._plans: OrderedDict[str, Plan | None] = OrderedDict()
        self._answers: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()

    def _plan(self, query: str) -> Plan | None:
        if query in self._plans:
            self._plans.move_to_end(query)
            return self._plans[query]
        try:
            plan: Plan | None = make_plan(query)
        except NotEligible:
            plan = None
        self._plans[query] = plan
        if len(self._plans) > PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    async def _answer_with(self, query: str, plan: Plan, variables: dict[str, Any]) -> bytes:
        if plan.page is not None:
            return await self._page(plan, variables)
        raw = plan.id_literal if plan.id_variable is None else variables.get(plan.id_variable)
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise NotEligible
        try:
            workflow_id = parse_id(str(raw))
        except WorkflowError:
            raise NotEligible from None
        try:
            cached = await store.get_workflow_json(workflow_id)
        except NotFound:
            cached = b"null"
        # The same document over the same cached bytes gives the same answer: keep it.
        key = (query, cached)
        answer = self._answers.get(key)
        if answer is None:
            row = orjson.loads(cached)
            data = {plan.key: None if row is None else _project(plan.workflow, row)}
            answer = answer_json({"data": data}).encode()
            self._answers[key] = answer
            if len(self._answers) > PLAN_CACHE_SIZE:
                self._answers.popitem(last=False)
        return answer

    async def _page(self, plan: Plan, variables: dict[str, Any]) -> bytes:
        assert plan.page is not None
        arguments = {}
        for name, given in plan.page.items():
            value = variables.get(given) if isinstance(given, str) else given
            if isinstance(value, bool) or not isinstance(value, int):
                raise NotEligible  # missing or mistyped: Strawberry says what is wrong
            arguments[name] = value
        try:
            page = checked_page(arguments["skip"], arguments["limit"])
        except WorkflowError:
            raise NotEligible from None
        cached = await store.list_workflows_json(page.skip, page.limit)
        # One workflow decoded, projected and written at a time (paced_json.items takes turns
        # with the loop), and dropped before the next: a page of 100,000 tasks alive at once
        # would cost garbage-collector pauses of a tenth of a second.
        texts = [
            answer_json(_project(plan.workflow, row)) async for row in paced_json.items(cached)
        ]
        # What json.dumps writes for {"data": {key: [...]}}, compact.
        return ('{"data":{' + answer_json(plan.key) + ":[" + ",".join(texts) + "]}}").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["path"].rstrip("/") == self.path
            and scope["method"] == "POST"
            and _header(scope, b"content-type").startswith(b"application/json")
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        if not complete:
            return  # the client left, or the body limit outside us has answered 413
        answer = await self._answer(body)
        if answer is not None:
            scope[ROUTE] = self.path  # for the request metrics: the route answered here
            await _send(send, answer)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _answer(self, body: bytes) -> bytes | None:
        try:
            request = orjson.loads(body)
            if not isinstance(request, dict) or set(request) - {"query", "variables"}:
                return None
            query, variables = request.get("query"), request.get("variables") or {}
            if not isinstance(query, str) or not isinstance(variables, dict):
                return None
            plan = self._plan(query)
            if plan is None:
                return None
            return await self._answer_with(query, plan, variables)
        except NotEligible:
            return None
        except orjson.JSONDecodeError:
            return None
        except Exception as exc:
            # Strawberry answers it instead, masking and logging as it does (a database that
            # does not answer is its to report, once per outage).
            if not database_unavailable(exc):
                log.exception("the GraphQL fast path failed; handing the request to Strawberry")
            return None


def answer_json(value: Any) -> str:
    """A GraphQL answer's JSON, as Strawberry's HTTP view encodes it (the HTTP view, app.py,
    writes its own answers with this too)."""
    return json.dumps(value, separators=(",", ":"))


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body (BodySizeLimit, outside, bounds it), and whether it arrived whole."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read here, then what the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
