"""Validated shapes of what clients send: one definition for REST, GraphQL and the CLI.

Limits are here so that every edge rejects the same inputs with the same message, before any of
them reaches the database (which would answer a NUL byte or an out-of-range integer with an
error of its own).
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from models.errors import Invalid
from models.schedule_times import (
    INTERVAL_MAX_SECONDS,
    INTERVAL_MIN_SECONDS,
    check_cron,
    check_timezone,
)
from models.settings import whole_number
from models.templates import WHEN_MAX, TemplateFailed, check_when, parameter_references

INT32_MAX = 2**31 - 1
NAME_MAX = 255
DESCRIPTION_MAX = 10_000
# A task's parameters travel with every execution of it: keep them small.
PARAMETERS_MAX_BYTES = whole_number("WORKFLOW_MAX_PARAMETERS_BYTES", 64 * 1024)
PARAMETERS_MAX_DEPTH = 32
MAX_TASKS_PER_WORKFLOW = whole_number("WORKFLOW_MAX_TASKS", 1_000)
# An execution's input travels with every announcement of it: bounded like parameters.
INPUT_MAX_BYTES = whole_number("WORKFLOW_MAX_INPUT_BYTES", 256 * 1024)
MAX_ATTEMPTS_LIMIT = whole_number("WORKFLOW_MAX_ATTEMPTS", 100)
TIMEOUT_SECONDS_MAX = float(whole_number("WORKFLOW_MAX_TIMEOUT_SECONDS", 7 * 24 * 3600))
# A task without timeout_seconds gets this (the engine applies it; the task shows null).
DEFAULT_TASK_TIMEOUT_SECONDS = float(whole_number("WORKFLOW_DEFAULT_TASK_TIMEOUT", 3600))
if DEFAULT_TASK_TIMEOUT_SECONDS > TIMEOUT_SECONDS_MAX:
    raise ValueError(
        "WORKFLOW_DEFAULT_TASK_TIMEOUT must be at most WORKFLOW_MAX_TIMEOUT_SECONDS "
        f"({TIMEOUT_SECONDS_MAX:g})"
    )
# The largest per-workflow concurrency limit one may set (more is no limit at all).
MAX_CONCURRENT_LIMIT = 100_000
ACTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,99}$")


def check_text(value: str) -> str:
    """Text every store takes: no NUL, and valid Unicode (a lone surrogate, which JSON's
    `\\ud800` escapes can carry, cannot be written as UTF-8). The CLI checks with it too."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _text_first(value: Any) -> Any:
    """check_text, before pydantic's own check of a string: for a lone surrogate that one
    answers "unable to parse raw data as a unicode string", which names no rule. Anything but
    a string is left to pydantic (`string_type`, as the service we replace answered)."""
    return check_text(value) if isinstance(value, str) else value


def check_json_value(value: Any) -> None:
    """A JSON value as every store takes it: not too deep, finite numbers (JSON has no NaN or
    Infinity; 1e400 reads as infinity), valid text. The CLI checks its JSON options with it."""

    def walk(node: Any, depth: int) -> None:
        if depth > PARAMETERS_MAX_DEPTH:
            raise ValueError(f"must not nest deeper than {PARAMETERS_MAX_DEPTH} levels")
        if isinstance(node, str):
            check_text(node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError("numbers must be finite")
        elif isinstance(node, dict):
            for key, item in node.items():
                check_text(key)
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(value, 0)


def _check_parameters(value: dict[str, Any]) -> dict[str, Any]:
    check_json_value(value)
    if len(json.dumps(value, ensure_ascii=False).encode()) > PARAMETERS_MAX_BYTES:
        raise ValueError(f"must be at most {PARAMETERS_MAX_BYTES} bytes as JSON")
    return value


def _check_action(value: str) -> str:
    if not ACTION_NAME.match(value):
        raise ValueError("must be an action name: a letter, then letters, digits or _ . : -")
    # Imported here: the registry loads entry points, which only task validation needs.
    from exec_service.actions import available

    if value not in available():
        known = ", ".join(sorted(available()))
        raise ValueError(f"unknown action {value!r}; installed actions: {known}")
    return value


IDEMPOTENCY_KEY_MAX = 255
IdempotencyKey = Annotated[str, Field(max_length=IDEMPOTENCY_KEY_MAX), BeforeValidator(_text_first)]


def idempotency_key(value: str | None, argument: str) -> str | None:
    """A client's idempotency key, checked as IdempotencyKey is; "" counts as none."""
    if not value:
        return None
    if len(value) > IDEMPOTENCY_KEY_MAX:
        raise Invalid(f"Invalid input: {argument}: at most {IDEMPOTENCY_KEY_MAX} characters")
    try:
        return check_text(value)
    except ValueError as exc:
        raise Invalid(f"Invalid input: {argument}: {exc}") from None


def _check_templates(value: dict[str, Any]) -> dict[str, Any]:
    try:
        parameter_references(value)
    except TemplateFailed as exc:
        raise ValueError(exc.message) from None
    return value


def _check_when(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("must be an expression, e.g. tasks.check.output.status_code == 200")
    try:
        check_when(value)
    except TemplateFailed as exc:
        raise ValueError(exc.message) from None
    return value


def _check_input(value: dict[str, Any]) -> dict[str, Any]:
    """An execution's input: a JSON object of at most INPUT_MAX_BYTES."""
    check_json_value(value)
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > INPUT_MAX_BYTES:
        raise ValueError(f"must be at most {INPUT_MAX_BYTES} bytes as JSON")
    return value


Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX), BeforeValidator(_text_first)]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX), BeforeValidator(_text_first)]
Parameters = Annotated[
    dict[str, Any], AfterValidator(_check_parameters), AfterValidator(_check_templates)
]
When = Annotated[
    str | None,
    Field(max_length=WHEN_MAX),
    BeforeValidator(_text_first),
    AfterValidator(_check_when),
]
ExecutionInputObject = Annotated[dict[str, Any], AfterValidator(_check_input)]
ActionName = Annotated[str, AfterValidator(_check_action)]


class _Input(BaseModel):
    # Pydantic's lax mode, as in the service we replace: "3" is accepted for an int, 3 is not
    # accepted for a string. Unknown fields are ignored, as they were there.
    model_config = ConfigDict(extra="ignore")


class TaskCreate(_Input):
    name: Name
    description: Description | None = None
    order: int = Field(ge=-INT32_MAX, le=INT32_MAX)
    execution_type: Literal["sync", "async"] = "sync"
    parameters: Parameters = Field(default_factory=dict)
    action: ActionName = "noop"
    max_attempts: int = Field(default=1, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=TIMEOUT_SECONDS_MAX, allow_inf_nan=False
    )
    # A template expression: the task runs only if it holds when the task would start.
    when: When = None

    @model_validator(mode="after")
    def _fits_its_timeout(self) -> TaskCreate:
        """A `noop` that would wait longer than its timeout could never complete, and an
        `http` timeout longer than the task's would never apply: refused now rather than at
        run time (a value with a template is checked when the task runs)."""
        if self.action == "noop" and "duration" in self.parameters:
            self._check_seconds("duration", self.parameters["duration"], zero=True)
        elif self.action == "http" and self.parameters.get("timeout") is not None:
            self._check_seconds("timeout", self.parameters["timeout"], zero=False)
        return self

    def _check_seconds(self, name: str, value: Any, zero: bool) -> None:
        if isinstance(value, str) and "{{" in value:
            return
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < 0 or (value == 0 and not zero):
            raise ValueError(
                f"parameters.{name}: must be a number of seconds {'>=' if zero else '>'} 0"
            )
        timeout = self.timeout_seconds or DEFAULT_TASK_TIMEOUT_SECONDS
        if value > timeout:
            raise ValueError(
                f"parameters.{name}: {value:g} s is longer than the task's timeout "
                f"({timeout:g} s{'' if self.timeout_seconds else ', the default'})"
            )


class WorkflowUpdate(_Input):
    name: Name
    description: Description | None = None
    # At most this many executions of it run at once; the rest wait `pending`.
    max_concurrent_executions: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT_LIMIT)


class WorkflowCreate(WorkflowUpdate):
    tasks: list[TaskCreate] = Field(default_factory=list, max_length=MAX_TASKS_PER_WORKFLOW)


class Page(_Input):
    skip: int = Field(default=0, ge=0, le=INT32_MAX)
    limit: int = Field(default=100, ge=0, le=1000)


class ExecuteRequest(_Input):
    """What starting an execution takes besides the workflow: its input and idempotency key."""

    input: ExecutionInputObject | None = None
    idempotency_key: IdempotencyKey | None = None


def execution_input(value: Any, argument: str) -> dict[str, Any] | None:
    """A client's execution input (a JSON object, or None), checked as ExecuteRequest does."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid(f"Invalid input: {argument}: must be a JSON object")
    try:
        return _check_input(value)
    except ValueError as exc:
        raise Invalid(f"Invalid input: {argument}: {exc}") from None


class ScheduleIn(_Input):
    """A schedule as a client sends it (REST body, GraphQL ScheduleInput, the CLI)."""

    cron: Annotated[str, BeforeValidator(_text_first)] | None = None
    interval_seconds: int | None = None
    timezone: Annotated[str, BeforeValidator(_text_first)] = "UTC"
    input: ExecutionInputObject | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleIn:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron and interval_seconds")
        if self.cron is not None:
            self.cron = check_cron(self.cron)
        elif not INTERVAL_MIN_SECONDS <= (self.interval_seconds or 0) <= INTERVAL_MAX_SECONDS:
            raise ValueError(
                f"interval_seconds: from {INTERVAL_MIN_SECONDS} to {INTERVAL_MAX_SECONDS}"
            )
        check_timezone(self.timezone)
        return self
