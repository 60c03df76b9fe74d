"""The status strings of executions and task runs (contract section 4), shared by every plane."""

from __future__ import annotations

from typing import Final, Literal

ExecutionStatus = Literal["pending", "in_progress", "completed", "failed", "cancelled"]
TaskRunStatus = Literal["pending", "running", "completed", "failed", "cancelled", "skipped"]

PENDING: Final = "pending"
IN_PROGRESS: Final = "in_progress"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
SKIPPED: Final = "skipped"

EXECUTION_TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})
TASK_TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED, SKIPPED})
