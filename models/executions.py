"""Executions and their task runs: snapshots at execute time, fenced state changes, leases.

Every state change bumps `executions.version` in the same transaction as the change. Changes
made by an execution's owner are fenced: they only apply while that owner still holds the
lease and the execution is still in progress, so a process that lost its lease (or an
execution cancelled from elsewhere) can never overwrite newer state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from models.batched_changes import batcher
from models.db import BATCHED_CONNECTION, placeholders
from models.errors import WORKFLOW_NOT_FOUND, Conflict, NotFound
from models.inputs import INT32_MAX
from models.metrics import TASK_INTERRUPTIONS
from models.pacing import due, next_turn
from models.statuses import (
    CANCELLED,
    COMPLETED,
    EXECUTION_TERMINAL,
    FAILED,
    IN_PROGRESS,
    PENDING,
    RUNNING,
)
from models.storable import storable_text
from models.tables import Execution, Task, TaskRun, Workflow
from models.workflows import iso

EXECUTION_NOT_FOUND = "Execution not found"
# Who started an execution on an open service (no API keys), and of rows from before it was kept.
ANONYMOUS = "anonymous"


def now() -> datetime:
    return datetime.now(UTC)


def run_dict(run: TaskRun) -> dict[str, Any]:
    return _run_shape(
        run.task_id,
        run.name,
        run.order,
        run.status,
        run.attempts,
        iso(run.started_at),
        iso(run.completed_at),
        run.output,
        run.error,
        # As the action received them once the task started; before, as written.
        run.rendered if run.rendered is not None else run.parameters,
    )


def _run_shape(
    task_id: int,
    name: str,
    order: int,
    status: str,
    attempts: int,
    started_at: str | None,
    completed_at: str | None,
    output: Any,
    error: str | None,
    parameters: Any,
) -> dict[str, Any]:
    """A task run as the API shows it, from a model (run_dict) or a row read by hand
    (get_execution, list_executions): one shape for all three."""
    return {
        "task_id": task_id,
        "name": name,
        "order": order,
        "status": status,
        "attempts": attempts,
        "started_at": started_at,
        "completed_at": completed_at,
        "output": output,
        "error": error,
        "parameters": parameters,
    }


def execution_dict(execution: Execution, runs: Sequence[TaskRun]) -> dict[str, Any]:
    """The REST `Execution` shape, plus `version` (which REST leaves out)."""
    return {
        "id": execution.id,
        "workflow_id": execution.workflow_id,
        "status": execution.status,
        "started_at": iso(execution.started_at),
        "completed_at": iso(execution.completed_at),
        "error": execution.error,
        "tasks": [run_dict(run) for run in runs],
        "input": execution.input,
        "triggered_by": execution.triggered_by or ANONYMOUS,
        "retry_of": execution.retry_of,
        "version": execution.version,
    }


def execution_output(tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An execution's output: {task name: output} of its completed tasks, in running order."""
    return {run["name"]: run["output"] for run in tasks if run["status"] == COMPLETED}


def public(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A snapshot as REST shows it: without `version`, with `output` (computed here, at the
    edge, so that announcements do not carry every output twice)."""
    shown = {key: snapshot[key] for key in _REST_KEYS}
    shown["output"] = execution_output(snapshot["tasks"])
    shown["triggered_by"] = snapshot["triggered_by"]
    shown["retry_of"] = snapshot["retry_of"]
    return shown


# The REST `Execution` keys before `output`: the first seven as they were before inputs.
_REST_KEYS = (
    "id",
    "workflow_id",
    "status",
    "started_at",
    "completed_at",
    "error",
    "tasks",
    "input",
)


def valid_id(value: int) -> bool:
    return 1 <= value <= INT32_MAX


def ordered_runs(execution_id: int) -> Any:
    return TaskRun.filter(execution_id=execution_id).order_by("order", "task_id")


# The execution and its runs in ONE statement: one snapshot of the database, so the runs are
# exactly those of the version read (two queries could straddle a change, and a watcher would
# then take that change's announcement for news, or miss it).
_SNAPSHOT = (
    "SELECT e.workflow_id, e.status, e.started_at, e.completed_at, e.error, e.version, "
    "e.input, e.triggered_by, e.retry_of, "
    'r.task_id, r.name, r."order", r.status AS run_status, r.attempts, '
    "r.started_at AS run_started_at, r.completed_at AS run_completed_at, r.output, "
    "r.error AS run_error, COALESCE(r.rendered, r.parameters) AS run_parameters "
    "FROM executions AS e LEFT JOIN task_runs AS r ON r.execution_id = e.id "
    'WHERE e.id = {mark} ORDER BY r."order", r.task_id'
)


def _moment(value: Any) -> str | None:
    """A timestamp column as the API shows it, from either driver (SQLite gives text)."""
    field = Execution._meta.fields_map["started_at"]
    return iso(field.to_python_value(value)) if value is not None else None


async def get_execution(execution_id: int) -> dict[str, Any]:
    """The execution with its task runs. Raises NotFound."""
    if not valid_id(execution_id):
        raise NotFound(EXECUTION_NOT_FOUND)
    connection = Execution._meta.db
    sql = _SNAPSHOT.format(mark=placeholders(connection, 1)[0])
    rows = await connection.execute_query_dict(sql, [execution_id])
    if not rows:
        raise NotFound(EXECUTION_NOT_FOUND)
    first = rows[0]
    tasks = [
        _run_shape(
            row["task_id"],
            row["name"],
            row["order"],
            row["run_status"],
            row["attempts"],
            _moment(row["run_started_at"]),
            _moment(row["run_completed_at"]),
            _json(row["output"]),
            row["run_error"],
            _json(row["run_parameters"]),
        )
        for row in rows
        if row["task_id"] is not None
    ]
    return {
        "id": execution_id,
        "workflow_id": first["workflow_id"],
        "status": first["status"],
        "started_at": _moment(first["started_at"]),
        "completed_at": _moment(first["completed_at"]),
        "error": first["error"],
        "tasks": tasks,
        "input": _json(first["input"]),
        "triggered_by": first["triggered_by"] or ANONYMOUS,
        "retry_of": first["retry_of"],
        "version": first["version"],
    }


def _json(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


async def find_execution(execution_id: int) -> dict[str, Any] | None:
    try:
        return await get_execution(execution_id)
    except NotFound:
        return None


async def list_executions(workflow_id: int | None, skip: int, limit: int) -> list[dict[str, Any]]:
    """Executions newest first (of one workflow, or all), with their runs, in two queries."""
    query = Execution.all()
    if workflow_id is not None:
        query = query.filter(workflow_id=workflow_id)
    executions = await query.order_by("-id").offset(skip).limit(limit)
    runs: dict[int, list[dict[str, Any]]] = {execution.id: [] for execution in executions}
    if executions:
        connection = TaskRun._meta.db
        marks = ", ".join(placeholders(connection, len(runs)))
        _, rows = await connection.execute_query(_RUNS_OF.format(marks=marks), list(runs))
        # Rows as the driver gave them, made into dicts a slice at a time: a page of
        # executions of 1,000 tasks is 100,000 rows (models/pacing.py).
        for row in rows:
            runs[row[0]].append(_run_row_dict(row))
            if due():
                await next_turn()
    return [
        execution_dict(execution, ()) | {"tasks": runs[execution.id]} for execution in executions
    ]


# The runs of several executions, the columns as _run_row_dict reads them.
_RUNS_OF = (
    'SELECT execution_id, task_id, name, "order", status, attempts, started_at, completed_at, '
    "output, error, COALESCE(rendered, parameters) FROM task_runs "
    'WHERE execution_id IN ({marks}) ORDER BY "order", task_id'
)


def _run_row_dict(row: Any) -> dict[str, Any]:
    return _run_shape(
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        _moment(row[6]),
        _moment(row[7]),
        _json(row[8]),
        row[9],
        _json(row[10]),
    )


@dataclass
class NewExecution:
    """What create_execution made: the execution and its runs as stored, ready to run (or,
    for an idempotency key seen before, the first execution's id alone)."""

    id: int
    created: bool
    execution: Execution | None = None
    runs: list[TaskRun] = field(default_factory=list)
    # Made `pending` because its workflow has a concurrency limit: an engine starts it once
    # the limit allows (claim_pending), not the caller.
    waiting: bool = False


async def create_execution(
    workflow_id: int,
    idempotency_key: str | None,
    owner: str,
    lease_seconds: float,
    input: dict[str, Any] | None = None,
    triggered_by: str | None = None,
    pending: bool = False,
) -> NewExecution:
    """Snapshot the workflow's tasks into a new execution owned by `owner`; with `pending`,
    one that waits, owned by nobody, until an engine has room (claim_pending).

    With an idempotency key seen before for this workflow, answers the first execution's id
    with `created` False. Raises NotFound.
    """
    if not valid_id(workflow_id):
        raise NotFound(WORKFLOW_NOT_FOUND)
    if idempotency_key:
        existing = await _by_key(workflow_id, idempotency_key)
        if existing is not None:
            return NewExecution(existing, False)
    started = now()
    values = {
        "workflow_id": workflow_id,
        "idempotency_key": idempotency_key or None,
        "status": PENDING if pending else IN_PROGRESS,
        "created_at": started,
        "started_at": None if pending else started,
        "lease_owner": None if pending else owner,
        "lease_expires_at": None if pending else started + timedelta(seconds=lease_seconds),
        "version": 1,
        "input": input,
        "triggered_by": triggered_by,
        "retry_of": None,
    }
    try:
        if Execution._meta.db.capabilities.dialect == "postgres":
            return await _create_in_one_statement(values)
        return await _create_in_transaction(values)
    except IntegrityError:
        # Two requests with one key raced; the unique constraint let one through.
        if idempotency_key:
            existing = await _by_key(workflow_id, idempotency_key)
            if existing is not None:
                return NewExecution(existing, False)
        # Or the workflow was deleted while its execution was being made.
        if not await Workflow.filter(id=workflow_id).exists():
            raise NotFound(WORKFLOW_NOT_FOUND) from None
        raise


async def _create_in_transaction(values: dict[str, Any]) -> NewExecution:
    async with in_transaction("default"):
        workflow_id = values["workflow_id"]
        workflow = await Workflow.filter(id=workflow_id).first()
        if workflow is None:
            raise NotFound(WORKFLOW_NOT_FOUND)
        waiting = workflow.max_concurrent_executions is not None and values["status"] != PENDING
        if waiting:
            values = values | _WAITING
        tasks = await Task.filter(workflow_id=workflow_id).order_by("order", "id")
        execution = await Execution.create(**values)
        await TaskRun.bulk_create(
            [
                TaskRun(
                    execution_id=execution.id,
                    task_id=task.id,
                    name=task.name,
                    order=task.order,
                    execution_type=task.execution_type,
                    action=task.action,
                    parameters=task.parameters,
                    max_attempts=task.max_attempts,
                    timeout_seconds=task.timeout_seconds,
                    condition=task.condition,
                    status=PENDING,
                )
                for task in tasks
            ]
        )
        runs = list(await ordered_runs(execution.id))
    return NewExecution(execution.id, True, execution, runs, waiting)


# What an execution of a workflow with a concurrency limit is made with: pending, owned by
# nobody, whatever its caller asked.
_WAITING: dict[str, Any] = {
    "status": PENDING,
    "started_at": None,
    "lease_owner": None,
    "lease_expires_at": None,
}


# The execution and its runs inserted by one statement (atomic without a transaction, one
# round trip instead of six), answering the runs as stored: one row per run, or a single row
# of NULL run columns for a workflow without tasks; no row at all when the workflow is gone.
_CREATE = f"""
WITH workflow AS (
    SELECT id, max_concurrent_executions IS NOT NULL AS limited FROM workflows WHERE id = $1
),
execution AS (
    INSERT INTO executions (workflow_id, idempotency_key, status, created_at, started_at,
                            lease_owner, lease_expires_at, version, input, triggered_by,
                            retry_of)
    SELECT id, $2, CASE WHEN limited THEN '{PENDING}' ELSE $3::varchar END, $4,
           CASE WHEN limited THEN NULL ELSE $5::timestamptz END,
           CASE WHEN limited THEN NULL ELSE $6::varchar END,
           CASE WHEN limited THEN NULL ELSE $7::timestamptz END, $8, $9, $10, $11
    FROM workflow
    RETURNING id, status
),
runs AS (
    INSERT INTO task_runs (execution_id, task_id, name, "order", execution_type, action,
                           parameters, max_attempts, timeout_seconds, condition, status,
                           attempts, interruptions)
    SELECT execution.id, t.id, t.name, t."order", t.execution_type, t.action,
           t.parameters, t.max_attempts, t.timeout_seconds, t.condition, '{PENDING}', 0, 0
    FROM tasks t CROSS JOIN execution
    WHERE t.workflow_id = $1
    RETURNING *
)
SELECT execution.id AS new_execution_id, execution.status AS new_execution_status, runs.*
FROM execution LEFT JOIN runs ON true
"""


async def _create_in_one_statement(values: dict[str, Any]) -> NewExecution:
    # (`input` as JSON text, as the column keeps it.)
    arguments = [_db_value(column, value) for column, value in values.items()]
    rows = await Execution._meta.db.execute_query_dict(_CREATE, arguments)
    if not rows:
        raise NotFound(WORKFLOW_NOT_FOUND)
    execution_id = rows[0].pop("new_execution_id")
    waiting = rows[0]["new_execution_status"] != values["status"]
    if waiting:
        values = values | _WAITING
    execution = Execution._init_from_db(id=execution_id, completed_at=None, error=None, **values)
    runs = []
    for row in rows:
        row.pop("new_execution_id", None)
        row.pop("new_execution_status", None)
        if row["id"] is not None:
            runs.append(TaskRun._init_from_db(**row))
    runs.sort(key=lambda run: (run.order, run.task_id))
    return NewExecution(execution_id, True, execution, runs, waiting)


async def retry_execution(
    execution_id: int,
    owner: str,
    lease_seconds: float,
    triggered_by: str | None = None,
    pending: bool = False,
) -> NewExecution:
    """A new execution of a failed or cancelled one, on its snapshot and input, owned by
    `owner`: the tasks that completed there are completed here (same outputs, no attempts),
    every other task is pending again. With `pending`, or when its workflow has a
    concurrency limit, it waits for an engine instead (claim_pending). Raises NotFound, or
    Conflict for any other status."""
    if not valid_id(execution_id):
        raise NotFound(EXECUTION_NOT_FOUND)
    started = now()
    async with in_transaction("default") as connection:
        old = await Execution.filter(id=execution_id).using_db(connection).first()
        if old is None:
            raise NotFound(EXECUTION_NOT_FOUND)
        if old.status not in (FAILED, CANCELLED):
            raise Conflict(
                f"Execution {execution_id} is {old.status}: only failed or cancelled "
                "executions can be retried"
            )
        workflow = await Workflow.filter(id=old.workflow_id).using_db(connection).first()
        limited = workflow is not None and workflow.max_concurrent_executions is not None
        values: dict[str, Any] = {
            "status": IN_PROGRESS,
            "started_at": started,
            "lease_owner": owner,
            "lease_expires_at": started + timedelta(seconds=lease_seconds),
        }
        if pending or limited:
            values = dict(_WAITING)
        execution = await Execution.create(
            using_db=connection,
            workflow_id=old.workflow_id,
            created_at=started,
            version=1,
            input=old.input,
            triggered_by=triggered_by,
            retry_of=old.id,
            **values,
        )
        old_runs = await ordered_runs(execution_id).using_db(connection)
        await TaskRun.bulk_create(
            [_carried_over(run, execution.id, started) for run in old_runs], using_db=connection
        )
        runs = list(await ordered_runs(execution.id).using_db(connection))
    return NewExecution(execution.id, True, execution, runs, waiting=pending or limited)


def _carried_over(run: TaskRun, execution_id: int, moment: datetime) -> TaskRun:
    """A run of the retried execution as the retry starts it: done if it completed there."""
    done = run.status == COMPLETED
    return TaskRun(
        execution_id=execution_id,
        task_id=run.task_id,
        name=run.name,
        order=run.order,
        execution_type=run.execution_type,
        action=run.action,
        parameters=run.parameters,
        max_attempts=run.max_attempts,
        timeout_seconds=run.timeout_seconds,
        condition=run.condition,
        status=COMPLETED if done else PENDING,
        attempts=0,
        started_at=moment if done else None,
        completed_at=moment if done else None,
        output=run.output if done else None,
        rendered=run.rendered if done else None,
    )


async def _by_key(workflow_id: int, key: str) -> int | None:
    row = await Execution.filter(workflow_id=workflow_id, idempotency_key=key).first()
    return row.id if row is not None else None


@dataclass
class RunChange:
    """New values for one task run, applied only if its status is one of `expected`."""

    run_id: int
    expected: tuple[str, ...]
    values: dict[str, Any] = field(default_factory=dict)


class _Stale(Exception):
    """A run was not in the expected status: roll the whole change back."""


async def _bump_version(
    connection: BaseDBAsyncClient, execution_id: int, owner: str | None, statuses: Sequence[str]
) -> int | None:
    """version + 1 if the execution is in one of `statuses` (and, with `owner`, leased by it)."""
    values: list[Any] = [execution_id, *statuses]
    marks = placeholders(connection, len(values) + 1)
    in_list = ", ".join(marks[1 : 1 + len(statuses)])
    sql = (
        "UPDATE executions SET version = version + 1 "
        f"WHERE id = {marks[0]} AND status IN ({in_list})"
    )
    if owner is not None:
        sql += f" AND lease_owner = {marks[len(values)]}"
        values.append(owner)
    rows = await connection.execute_query_dict(sql + " RETURNING version", values)
    return int(rows[0]["version"]) if rows else None


async def apply_change(
    execution_id: int,
    owner: str,
    runs: Sequence[RunChange] = (),
    execution: Mapping[str, Any] | None = None,
) -> int | None:
    """Apply a state change as the execution's owner, atomically. Returns the new version, or
    None when the fence refused it (lease lost, execution no longer in progress, or a run no
    longer in its expected status); then nothing was written."""
    connection = Execution._meta.db
    if connection.capabilities.dialect == "postgres" and len(runs) <= 1:
        run = runs[0] if runs else None
        return await batcher(connections.get(BATCHED_CONNECTION)).apply(
            execution_id,
            owner,
            run.run_id if run is not None else None,
            run.expected if run is not None else (),
            {name: _db_value(name, value) for name, value in run.values.items()} if run else {},
            execution or {},
        )
    try:
        async with in_transaction("default") as connection:
            version = await _bump_version(connection, execution_id, owner, (IN_PROGRESS,))
            if version is None:
                return None
            for change in runs:
                updated = (
                    await TaskRun.filter(id=change.run_id, status__in=change.expected)
                    .using_db(connection)
                    .update(**change.values)
                )
                if updated != 1:
                    raise _Stale
            if execution:
                await Execution.filter(id=execution_id).using_db(connection).update(**execution)
    except _Stale:
        return None
    return version


def _db_value(column: str, value: Any) -> Any:
    if column in ("output", "rendered", "input") and value is not None:
        return storable_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    if column == "error" and value is not None:
        return storable_text(value)
    return value


async def cancel(execution_id: int) -> bool:
    """Mark the execution and its unfinished runs cancelled, whoever owns it. Returns False when
    it had already ended. Raises NotFound."""
    if not valid_id(execution_id) or not await Execution.filter(id=execution_id).exists():
        raise NotFound(EXECUTION_NOT_FOUND)
    moment = now()
    async with in_transaction("default") as connection:
        version = await _bump_version(connection, execution_id, None, (PENDING, IN_PROGRESS))
        if version is None:
            return False
        await (
            Execution.filter(id=execution_id)
            .using_db(connection)
            .update(status=CANCELLED, completed_at=moment)
        )
        await (
            TaskRun.filter(execution_id=execution_id, status__in=(PENDING, RUNNING))
            .using_db(connection)
            .update(status=CANCELLED, completed_at=moment)
        )
    return True


async def load_for_run(execution_id: int) -> tuple[Execution, list[TaskRun]] | None:
    execution = await Execution.get_or_none(id=execution_id)
    if execution is None:
        return None
    return execution, list(await ordered_runs(execution_id))


async def renew_leases(owner: str, lease_seconds: float) -> set[int]:
    """Extend every lease `owner` holds; return the ids of the executions it still owns."""
    await Execution.filter(lease_owner=owner, status=IN_PROGRESS).update(
        lease_expires_at=now() + timedelta(seconds=lease_seconds)
    )
    rows = await Execution.filter(lease_owner=owner, status=IN_PROGRESS).values("id")
    return {int(row["id"]) for row in rows}


async def claim_expired(owner: str, lease_seconds: float, limit: int) -> list[int]:
    """Take over executions whose owner stopped renewing. Runs that were running when it died
    go back to pending with one more interruption. Returns the ids claimed."""
    moment = now()
    candidates = (
        await Execution.filter(status=IN_PROGRESS, lease_expires_at__lt=moment)
        .order_by("lease_expires_at")
        .limit(limit)
        .values("id", "lease_owner")
    )
    claimed = []
    for candidate in candidates:
        async with in_transaction("default") as connection:
            # Compare-and-set: of several processes claiming at once, one wins.
            won = (
                await Execution.filter(
                    id=candidate["id"],
                    lease_owner=candidate["lease_owner"],
                    status=IN_PROGRESS,
                    lease_expires_at__lt=moment,
                )
                .using_db(connection)
                .update(
                    lease_owner=owner,
                    lease_expires_at=moment + timedelta(seconds=lease_seconds),
                )
            )
            if not won:
                continue
            await _bump_version(connection, candidate["id"], owner, (IN_PROGRESS,))
            interrupted = await (
                TaskRun.filter(execution_id=candidate["id"], status=RUNNING)
                .using_db(connection)
                # The cut-short call is not an attempt: `attempts` counts calls that got an
                # answer, so it never passes max_attempts however often a process dies.
                .update(
                    status=PENDING,
                    interruptions=F("interruptions") + 1,
                    attempts=F("attempts") - 1,
                )
            )
        claimed.append(int(candidate["id"]))
        if interrupted:
            TASK_INTERRUPTIONS.labels("takeover").inc(interrupted)
    return claimed


async def count_pending() -> int:
    """How many executions wait `pending` (for the metrics)."""
    return await Execution.filter(status=PENDING).count()


# The look for pending executions that may start: oldest first, leaving out those whose
# workflow runs as many as its limit allows (they would block the ones behind them).
_PENDING_LOOK = f"""
SELECT e.id, w.max_concurrent_executions AS cap, e.workflow_id FROM executions e
JOIN workflows w ON w.id = e.workflow_id
WHERE e.status = '{PENDING}' AND (
    w.max_concurrent_executions IS NULL
    OR (SELECT count(*) FROM executions r
        WHERE r.workflow_id = e.workflow_id AND r.status = '{IN_PROGRESS}')
       < w.max_concurrent_executions
)
ORDER BY e.id LIMIT {{limit}}
"""


async def claim_pending(owner: str, lease_seconds: float, limit: int) -> list[tuple[int, bool]]:
    """Start up to `limit` pending executions, oldest first, as `owner`'s, each within its
    workflow's concurrency limit. Returns their ids, each with whether its workflow has a
    limit (when it ends, another of them may start)."""
    connection = Execution._meta.db
    rows = await connection.execute_query_dict(_PENDING_LOOK.format(limit=int(limit)))
    claimed = []
    full: set[int] = set()  # workflows found at their limit: none of theirs starts this round
    for row in rows:
        execution_id = int(row["id"])
        if row["workflow_id"] in full:
            continue  # oldest first: a later one must not take the room an earlier one waits for
        moment = now()
        async with in_transaction("default") as connection:
            if row["cap"] is not None and not await _below_limit(connection, execution_id):
                full.add(row["workflow_id"])
                continue
            # Compare-and-set: of several engines claiming at once, one wins; a cancelled one
            # is no longer pending.
            won = (
                await Execution.filter(id=execution_id, status=PENDING)
                .using_db(connection)
                .update(
                    status=IN_PROGRESS,
                    started_at=moment,
                    lease_owner=owner,
                    lease_expires_at=moment + timedelta(seconds=lease_seconds),
                    version=F("version") + 1,
                )
            )
        if won:
            claimed.append((execution_id, row["cap"] is not None))
    return claimed


async def _below_limit(connection: BaseDBAsyncClient, execution_id: int) -> bool:
    """Whether the pending execution's workflow runs fewer than its limit, counted with the
    workflow's row locked (PostgreSQL; SQLite has one writer): of several engines starting
    its executions at once, each counts after the one before it committed."""
    execution = await Execution.filter(id=execution_id).using_db(connection).first()
    if execution is None:
        return False
    query = Workflow.filter(id=execution.workflow_id).using_db(connection)
    if connection.capabilities.dialect == "postgres":
        query = query.select_for_update()
    workflow = await query.first()
    if workflow is None or workflow.max_concurrent_executions is None:
        return workflow is not None
    running = (
        await Execution.filter(workflow_id=workflow.id, status=IN_PROGRESS)
        .using_db(connection)
        .count()
    )
    return running < workflow.max_concurrent_executions


async def release_leases(owner: str) -> None:
    """Let others take over at once what `owner` runs (it is shutting down)."""
    await Execution.filter(lease_owner=owner, status=IN_PROGRESS).update(
        lease_expires_at=now() - timedelta(seconds=1)
    )


def is_terminal(status: str) -> bool:
    return status in EXECUTION_TERMINAL


def dumps_snapshot(snapshot: Mapping[str, Any]) -> bytes:
    return json.dumps(snapshot, separators=(",", ":")).encode()


async def executions_of_workflows(
    workflow_ids: Sequence[int], skip: int, limit: int
) -> dict[int, list[dict[str, Any]]]:
    """A page of executions (newest first) for each workflow, in three queries for them all."""
    result: dict[int, list[dict[str, Any]]] = {workflow_id: [] for workflow_id in workflow_ids}
    ids = [workflow_id for workflow_id in result if valid_id(workflow_id)]
    if not ids or limit <= 0:
        return result
    connection = Execution._meta.db
    marks = placeholders(connection, len(ids) + 2)
    in_list = ", ".join(marks[: len(ids)])
    # A window per workflow: one query whatever the number of workflows (no N+1).
    sql = (
        "SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
        "(PARTITION BY workflow_id ORDER BY id DESC) AS position "
        f"FROM executions WHERE workflow_id IN ({in_list})) AS ranked "
        f"WHERE position > {marks[len(ids)]} AND position <= {marks[len(ids) + 1]}"
    )
    rows = await connection.execute_query_dict(sql, [*ids, skip, skip + limit])
    page = [int(row["id"]) for row in rows]
    if not page:
        return result
    executions = await Execution.filter(id__in=page).order_by("-id")
    runs: dict[int, list[TaskRun]] = {execution.id: [] for execution in executions}
    for run in await TaskRun.filter(execution_id__in=page).order_by("order", "task_id"):
        runs[run.execution_id].append(run)
    for execution in executions:
        result[execution.workflow_id].append(execution_dict(execution, runs[execution.id]))
    return result
