"""Announcements carry what changed (issue 16): a sequential execution's announcement bytes
grow with its number of tasks, not with its square; and a watcher that misses one (Redis
dropped it) still ends with the execution as the database has it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

from exec_service.bus import execution_channel
from exec_service.watch import _applied
from tests.executions import noop, run

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub


@pytest.fixture
def published(app: FastAPI) -> Iterator[dict[str, int]]:
    """Bytes announced per channel while the test runs."""
    bus = app.state.exec_service.engine.bus
    sizes: dict[str, int] = {}
    original = bus.publish

    async def counting(channel: str, payload: bytes, announcement: Any = None) -> None:
        sizes[channel] = sizes.get(channel, 0) + len(payload)
        await original(channel, payload, announcement)

    bus.publish = counting
    try:
        yield sizes
    finally:
        bus.publish = original


async def test_announcement_bytes_grow_linearly_with_tasks(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub, published: dict[str, int]
) -> None:
    per_task = {}
    for count in (10, 100):
        final = await run(client, stub, [noop(f"t{n}", n) for n in range(count)])
        assert final.status == "completed"
        per_task[count] = published[execution_channel(final.execution_id)] / count
    # Whole snapshots made the 100-task run's bytes per task some 10 times the 10-task run's.
    assert per_task[100] < 1.5 * per_task[10], per_task


def test_a_change_applies_only_to_the_version_before_it() -> None:
    current: dict[str, Any] = {
        "id": 1,
        "status": "in_progress",
        "version": 3,
        "input": {"n": 1},
        "tasks": [{"task_id": 1, "status": "completed"}, {"task_id": 2, "status": "pending"}],
    }
    change = {
        "version": 4,
        "execution": {"id": 1, "status": "in_progress", "version": 4},
        "changed": [{"task_id": 2, "status": "running"}],
    }
    applied = _applied(current, change)
    assert applied is not None
    assert applied["version"] == 4
    assert applied["input"] == {"n": 1}  # kept: never announced again
    assert [task["status"] for task in applied["tasks"]] == ["completed", "running"]
    assert current["tasks"][1]["status"] == "pending"  # the watcher's old state is not changed
    assert _applied(current, change | {"version": 5}) is None  # one was missed: read again
    whole = {"version": 9, "execution": {"id": 1, "version": 9, "tasks": []}}
    assert _applied(current, whole) == whole["execution"]
