"""Tortoise models: workflows and their tasks, executions and their task runs."""

from __future__ import annotations

import json
from typing import Any

from tortoise import fields
from tortoise.models import Model


class JSONTextField(fields.TextField):
    """JSON kept as text, so the object a user stored comes back with its keys in their order.

    PostgreSQL's jsonb (Tortoise's JSONField there) reorders keys, which the REST answers of the
    service we replace did not do.
    """

    def to_db_value(self, value: Any, instance: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def to_python_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        return value


class Workflow(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=255)
    description = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    # At most this many of its executions run at once; the others wait `pending`. Null: no
    # limit.
    max_concurrent_executions = fields.IntField(null=True)

    tasks: fields.ReverseRelation[Task]
    executions: fields.ReverseRelation[Execution]

    class Meta:
        table = "workflows"


class Task(Model):
    id = fields.IntField(primary_key=True)
    workflow: fields.ForeignKeyRelation[Workflow] = fields.ForeignKeyField(
        "models.Workflow", related_name="tasks", on_delete=fields.CASCADE
    )
    workflow_id: int
    name = fields.CharField(max_length=255)
    description = fields.TextField(null=True)
    order = fields.IntField()
    execution_type = fields.CharField(max_length=8, default="sync")
    parameters = JSONTextField(default=dict)
    action = fields.CharField(max_length=100, default="noop")
    max_attempts = fields.IntField(default=1)
    timeout_seconds = fields.FloatField(null=True)
    # `when`: a template expression; the task runs only if it is true when the task would start.
    condition = fields.TextField(null=True)

    class Meta:
        table = "tasks"
        indexes = (("workflow_id", "order"),)


class Execution(Model):
    """One run of a workflow. Filled in by the execution plane."""

    id = fields.IntField(primary_key=True)
    workflow: fields.ForeignKeyRelation[Workflow] = fields.ForeignKeyField(
        "models.Workflow", related_name="executions", on_delete=fields.CASCADE
    )
    workflow_id: int
    status = fields.CharField(max_length=16, default="pending")
    idempotency_key = fields.CharField(max_length=255, null=True)
    error = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    started_at = fields.DatetimeField(null=True)
    completed_at = fields.DatetimeField(null=True)
    # The lease: which process runs this execution, and until when it may without renewing.
    lease_owner = fields.CharField(max_length=64, null=True)
    lease_expires_at = fields.DatetimeField(null=True)
    # Bumped by every state change, in the same transaction; events carry it, so that a watcher
    # can tell an old announcement from a new one.
    version = fields.IntField(default=0)
    # The JSON object the execution was started with (templates read it as `input`).
    input = JSONTextField(null=True)
    # Who started it: an API key's name, `schedule:<id>`, `trigger:<id>`; null: `anonymous`.
    triggered_by = fields.CharField(max_length=300, null=True)
    # The failed or cancelled execution this one retries. A plain id, not a foreign key: the
    # retried execution may be deleted later, and the retry's history keeps the number.
    retry_of = fields.IntField(null=True)

    task_runs: fields.ReverseRelation[TaskRun]

    class Meta:
        table = "executions"
        unique_together = (("workflow_id", "idempotency_key"),)
        # Take-over scans by status and expiry; each owner renews its own leases by owner; the
        # pruner finds ended executions by status and end; limits count by workflow.
        indexes = (
            ("status", "lease_expires_at"),
            ("lease_owner", "status"),
            ("status", "completed_at"),
            # A workflow's running executions, counted against its concurrency limit.
            ("workflow_id", "status"),
        )


class TaskRun(Model):
    """A task as snapshotted when its execution started, and how running it went."""

    id = fields.IntField(primary_key=True)
    execution: fields.ForeignKeyRelation[Execution] = fields.ForeignKeyField(
        "models.Execution", related_name="task_runs", on_delete=fields.CASCADE
    )
    execution_id: int
    task_id = fields.IntField()
    name = fields.CharField(max_length=255)
    order = fields.IntField()
    execution_type = fields.CharField(max_length=8)
    action = fields.CharField(max_length=100)
    parameters = JSONTextField(default=dict)
    max_attempts = fields.IntField(default=1)
    timeout_seconds = fields.FloatField(null=True)
    status = fields.CharField(max_length=16, default="pending")
    attempts = fields.IntField(default=0)
    # Attempts cut short by their process dying (or shutting down): they do not count against
    # max_attempts, up to a limit that stops a task which kills its worker every time.
    interruptions = fields.IntField(default=0)
    started_at = fields.DatetimeField(null=True)
    completed_at = fields.DatetimeField(null=True)
    output = JSONTextField(null=True)
    error = fields.TextField(null=True)
    condition = fields.TextField(null=True)
    # The parameters as the action received them (templates rendered), once the task started
    # with templates; `parameters` keeps them as written, which a retry renders again.
    rendered = JSONTextField(null=True)

    class Meta:
        table = "task_runs"
        unique_together = (("execution_id", "task_id"),)


class ApiKey(Model):
    """A credential: a random secret shown once when made, of which only the SHA-256 is kept.

    The secret has 256 bits of entropy, so a slow password hash would add nothing but latency.
    (No semicolon in the first line: it becomes the table's comment, and Tortoise splits the
    migration's SQL on semicolons.)
    """

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100, unique=True)
    role = fields.CharField(max_length=16)
    key_hash = fields.CharField(max_length=64, unique=True)
    # The secret's first characters, to tell keys apart in a list without showing them.
    prefix = fields.CharField(max_length=16)
    created_at = fields.DatetimeField(auto_now_add=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_keys"


class Trigger(Model):
    """A webhook: `POST /hooks/{id}` signed with its secret starts its workflow.

    The secret is kept as it is (a signature is checked by computing it again), and shown once,
    when the trigger is made.
    """

    id = fields.IntField(primary_key=True)
    workflow: fields.ForeignKeyRelation[Workflow] = fields.ForeignKeyField(
        "models.Workflow", related_name="triggers", on_delete=fields.CASCADE
    )
    workflow_id: int
    name = fields.CharField(max_length=255)
    secret = fields.CharField(max_length=128)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "triggers"


class Schedule(Model):
    """A schedule: its workflow starts at each tick, by cron in a time zone or every N seconds.

    `next_run_at` is the tick the scheduler waits for. An execution service takes a tick by
    moving `next_run_at` on in a conditional update (it still holds the tick it read, and the
    schedule is enabled), in the transaction that makes the tick's execution: however many
    services share the database, one of them takes each tick, and a crash loses none.
    """

    id = fields.IntField(primary_key=True)
    workflow: fields.ForeignKeyRelation[Workflow] = fields.ForeignKeyField(
        "models.Workflow", related_name="schedules", on_delete=fields.CASCADE
    )
    workflow_id: int
    # Exactly one of the two is set.
    cron = fields.CharField(max_length=120, null=True)
    interval_seconds = fields.IntField(null=True)
    timezone = fields.CharField(max_length=64, default="UTC")
    input = JSONTextField(null=True)
    enabled = fields.BooleanField(default=True)
    next_run_at = fields.DatetimeField()
    last_run_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "schedules"
        # The scheduler's look: enabled schedules by their next tick.
        indexes = (("enabled", "next_run_at"),)
