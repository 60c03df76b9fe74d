"""Interruptions (issue 16): a task whose attempt was cut short for reasons outside it (its
process died, its queue lost it) runs again after a pause that doubles up to a cap, without
spending an attempt, until its pauses would pass WORKFLOW_INTERRUPTION_BUDGET; then it fails.
On the shared app (asyncio executor), with an action that reports interruptions itself."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

from exec_service import actions
from exec_service.engine import EngineConfig, interruption_pause, interruption_wait
from exec_service.executors import TaskInterrupted
from tests.executions import by_name, run

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

CALLS: Counter[str] = Counter()


async def lost_twice(parameters: dict[str, Any]) -> Any:
    """Interrupted the first two times it is called for its key, then done."""
    key = str(parameters["key"])
    CALLS[key] += 1
    if CALLS[key] <= 2:
        raise TaskInterrupted("its worker went away")
    return {"calls": CALLS[key]}


async def always_lost(parameters: dict[str, Any]) -> Any:
    raise TaskInterrupted("its worker went away, again")


@pytest.fixture(autouse=True, scope="module")
def registered() -> None:
    actions.register("lost_twice", lost_twice)
    actions.register("always_lost", always_lost)


def test_pauses_double_to_the_cap_and_the_budget_counts_them() -> None:
    config = EngineConfig()
    assert [interruption_pause(config, n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    # An hour of pauses is some 64 interruptions, not 3.
    assert interruption_wait(config, 64) <= 3600 < interruption_wait(config, 65)
    assert interruption_pause(config, 10_000) == 60  # no overflow far out


async def test_an_interrupted_task_runs_again_after_a_pause_without_spending_attempts(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    key = f"k{time.monotonic_ns()}"
    task = {"name": "flaky", "order": 1, "action": "lost_twice", "parameters": {"key": key}}
    started = time.monotonic()
    final = await run(client, stub, [task])
    assert final.status == "completed", final.error
    assert CALLS[key] == 3
    # Paused 1 s, then 2 s.
    assert time.monotonic() - started >= 3.0
    flaky = by_name(final)["flaky"]
    assert flaky.status == "completed"
    # Three calls, one attempt: the interrupted calls are not counted against max_attempts (1).
    assert flaky.attempts == 1


async def test_a_task_that_keeps_being_interrupted_fails_past_its_budget(
    app: FastAPI, client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    engine = app.state.exec_service.engine
    config = engine.config
    # Pauses of 0.1 s doubling: the fourth would pass a budget of 1 s (0.1 + 0.2 + 0.4 + 0.8).
    engine.config = dataclasses.replace(
        config, interruption_first_seconds=0.1, interruption_budget_seconds=1.0
    )
    try:
        final = await run(client, stub, [{"name": "lost", "order": 1, "action": "always_lost"}])
    finally:
        engine.config = config
    assert final.status == "failed"
    lost = by_name(final)["lost"]
    assert "interrupted 4 times" in lost.error, lost.error
    assert "WORKFLOW_INTERRUPTION_BUDGET" in lost.error
    assert lost.attempts == 0  # no call got an answer
