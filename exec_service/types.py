"""Typed shapes that cross module (and process) boundaries in the execution plane."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, NotRequired, Protocol, TypedDict


class TaskRequest(TypedDict):
    """What an executor needs to run one attempt of a task, wherever it runs it."""

    execution_id: int
    run_id: int
    task_id: int
    action: str
    parameters: dict[str, Any]
    attempt: int
    timeout_seconds: float | None
    # The engine's attempt span, for the span where it runs (models/tracing.py): the W3C
    # `traceparent` (and `tracestate`), when tracing is on.
    trace_context: NotRequired[dict[str, str]]


class Action(Protocol):
    """A task's `action`: takes the task's parameters, returns a JSON object (its output)."""

    def __call__(self, parameters: dict[str, Any]) -> Awaitable[dict[str, Any]]: ...


class ExecutionEvent(TypedDict):
    """Published after every committed state change of an execution."""

    execution_id: int
    version: int
    # The task run whose change this is, when one task changed (None for execution-wide ones).
    task_id: int | None
    task_status: str | None
    at: str
    # Without `changed`: the whole execution as it is at `version` (a watcher replaces what it
    # had with it). With `changed`: the execution's own fields (no tasks, no input, which never
    # changes), and `changed` the task runs this change touched, as they are now: a watcher
    # that holds `version - 1` applies it; one that missed a version reads the database.
    execution: dict[str, Any]
    changed: NotRequired[list[dict[str, Any]]]
