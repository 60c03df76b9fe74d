"""Group commit on PostgreSQL (models/batched_changes.py): changes asked for together go as one
statement, yet each is fenced, versioned and answered on its own, all or nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from models import executions as store
from models.batched_changes import MAX_IN_FLIGHT, ChangeBatcher
from models.executions import RunChange, now
from models.statuses import COMPLETED, IN_PROGRESS, PENDING, RUNNING
from models.tables import Execution, TaskRun

pytestmark = pytest.mark.parametrize("backend", ["postgres-redis"], indirect=True)

# Not the app's engine: these executions are ours alone, and their leases outlast the test.
OWNER = "batch-test-owner"


async def make_executions(client: httpx.AsyncClient, count: int) -> list[tuple[int, int]]:
    """`count` executions of a one-task workflow, owned by OWNER: (execution id, run id)."""
    body = {"name": "batched", "tasks": [{"name": "only", "order": 1}]}
    workflow = (await client.post("/workflows/", json=body)).json()
    made = []
    for _ in range(count):
        new = await store.create_execution(workflow["id"], None, OWNER, 600)
        made.append((new.id, new.runs[0].id))
    return made


async def state(execution_id: int) -> tuple[Execution, TaskRun]:
    return await Execution.get(id=execution_id), await TaskRun.get(execution_id=execution_id)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every statement the batcher sends."""
    sizes: list[int] = []
    send = ChangeBatcher._send

    async def counting(self: ChangeBatcher, batch: list[Any]) -> None:
        sizes.append(len(batch))
        await send(self, batch)

    monkeypatch.setattr(ChangeBatcher, "_send", counting)
    return sizes


async def test_changes_asked_together_share_a_statement_but_are_fenced_each(
    app: FastAPI, client: httpx.AsyncClient, statements: list[int]
) -> None:
    (a, a_run), (b, b_run), (c, c_run), (d, _) = await make_executions(client, 4)
    start = {"status": RUNNING, "attempts": 1, "started_at": now()}
    finish = {"status": COMPLETED, "completed_at": now(), "output": {"k": "v"}, "error": None}
    answers = await asyncio.gather(
        # Applies: version 1 -> 2.
        store.apply_change(a, OWNER, [RunChange(a_run, (PENDING,), start)]),
        # Another owner: refused.
        store.apply_change(b, "someone-else", [RunChange(b_run, (PENDING,), start)]),
        # The run is pending, not running: refused, the execution's own change with it.
        store.apply_change(c, OWNER, [RunChange(c_run, (RUNNING,), finish)], {"status": COMPLETED}),
        # An execution-wide change alone: applies.
        store.apply_change(d, OWNER, [], {"status": COMPLETED, "completed_at": now()}),
        # A second change of `a` in the same turn: applies after the first, version 3.
        store.apply_change(a, OWNER, [RunChange(a_run, (RUNNING,), finish)]),
    )
    assert list(answers) == [2, None, None, 2, 3]
    # OWNER's three executions in one statement; the other owner's (the fence compares with
    # one owner) and a's second change each in a later one.
    assert statements == [3, 1, 1]

    execution, run = await state(a)
    assert (execution.version, run.status, run.attempts) == (3, COMPLETED, 1)
    assert run.output == {"k": "v"}  # type: ignore[comparison-overlap]  # a JSON field
    execution, run = await state(b)
    assert (execution.version, run.status, run.attempts) == (1, PENDING, 0)
    execution, run = await state(c)
    assert (execution.version, execution.status, run.status) == (1, IN_PROGRESS, PENDING)
    execution, _ = await state(d)
    assert (execution.version, execution.status) == (2, COMPLETED)
    assert execution.completed_at is not None


async def test_changes_asked_while_sends_are_under_way_wait_and_go_together(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await make_executions(client, MAX_IN_FLIGHT + 3)
    sizes: list[int] = []
    gate, entered = asyncio.Event(), asyncio.Event()
    send = ChangeBatcher._send

    async def held(self: ChangeBatcher, batch: list[Any]) -> None:
        sizes.append(len(batch))
        entered.set()
        if len(sizes) <= MAX_IN_FLIGHT:
            await gate.wait()  # the first sends stay under way until the test lets them go
        await send(self, batch)

    monkeypatch.setattr(ChangeBatcher, "_send", held)
    start = {"status": RUNNING, "attempts": 1, "started_at": now()}

    def change(execution_id: int, run_id: int) -> asyncio.Task[int | None]:
        return asyncio.create_task(
            store.apply_change(execution_id, OWNER, [RunChange(run_id, (PENDING,), start)])
        )

    first = []
    for execution_id, run_id in made[:MAX_IN_FLIGHT]:
        entered.clear()
        first.append(change(execution_id, run_id))
        await asyncio.wait_for(entered.wait(), 5)  # its send is under way before the next
    later = []
    for execution_id, run_id in made[MAX_IN_FLIGHT:]:
        later.append(change(execution_id, run_id))
        for _ in range(10):  # turns of the loop in which its send could start, and does not
            await asyncio.sleep(0)
    assert sizes == [1] * MAX_IN_FLIGHT
    gate.set()
    assert await asyncio.gather(*first, *later) == [2] * len(made)
    assert sizes == [1] * MAX_IN_FLIGHT + [3]


async def test_a_change_the_database_refuses_fails_alone(
    app: FastAPI, client: httpx.AsyncClient, statements: list[int]
) -> None:
    (a, a_run), (b, b_run) = await make_executions(client, 2)
    start = {"status": RUNNING, "attempts": 1}
    # An int column cannot hold this: the shared statement fails, then each goes alone.
    bad = {"status": RUNNING, "attempts": 2**40}
    answers = await asyncio.gather(
        store.apply_change(a, OWNER, [RunChange(a_run, (PENDING,), start)]),
        store.apply_change(b, OWNER, [RunChange(b_run, (PENDING,), bad)]),
        return_exceptions=True,
    )
    assert answers[0] == 2
    assert isinstance(answers[1], Exception)
    assert statements == [2, 1, 1]
    execution, run = await state(b)
    assert (execution.version, run.status) == (1, PENDING)


async def test_error_text_postgresql_refuses_is_stored_readably(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ((a, a_run),) = await make_executions(client, 1)
    values = {"status": RUNNING, "attempts": 1, "error": "bad\x00byte and a lone \ud800"}
    assert await store.apply_change(a, OWNER, [RunChange(a_run, (PENDING,), values)]) == 2
    _, run = await state(a)
    assert run.error == "bad\ufffdbyte and a lone \ufffd"
