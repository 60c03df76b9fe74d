"""Nothing is lost when a process dies: `workflow serve` is killed with SIGKILL in the middle of
several executions and started again on the same database. Every execution completes, and no
task that had completed before the kill runs again. On SQLite, and on PostgreSQL with Redis.

Also: SIGTERM shuts down cleanly, hands its executions over at once, and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.live_server import LiveServer, live_server, wait_for
from tests.recorder import Recorder, recorder
from tests.services import server_environment

# Short leases so that a restarted process takes over quickly.
ENV = {
    "WORKFLOW_LEASE_SECONDS": "1.5",
    "WORKFLOW_RETRY_BASE_SECONDS": "0.05",
    # The http tasks call the recorder on this machine.
    "WORKFLOW_HTTP_ALLOW": "127.0.0.1",
}
WORKFLOWS = 4
TASKS = 5
TASK_SECONDS = 0.3


@pytest.fixture(params=["sqlite", "postgres-redis"])
async def server_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    async with server_environment(request.param, tmp_path_factory, ENV) as env:
        yield env


def start(env: dict[str, str]) -> Any:
    return live_server(env["DATABASE_URL"], env)


def make_executions(server: LiveServer, record: Recorder, prefix: str) -> list[int]:
    executions = []
    for workflow in range(WORKFLOWS):
        tasks = [
            {
                "name": f"t{task}",
                "order": task,
                "action": "http",
                "parameters": {"url": record.url(f"{prefix}-{workflow}-{task}", TASK_SECONDS)},
            }
            for task in range(TASKS)
        ]
        created = httpx.post(f"{server.url}/workflows/", json={"name": "w", "tasks": tasks})
        workflow_id = created.json()["id"]
        started = httpx.post(f"{server.url}/workflows/{workflow_id}/execute")
        assert started.status_code == 200, started.text
        executions.append(started.json()["id"])
    return executions


def states(server: LiveServer, executions: list[int]) -> dict[int, dict[str, Any]]:
    return {
        execution_id: httpx.get(f"{server.url}/executions/{execution_id}", timeout=5).json()
        for execution_id in executions
    }


def completed_tasks(snapshot: dict[int, dict[str, Any]]) -> set[tuple[int, str]]:
    return {
        (execution_id, task["name"])
        for execution_id, execution in snapshot.items()
        for task in execution["tasks"]
        if task["status"] == "completed"
    }


def completed_in_database(database_url: str) -> set[tuple[int, str]]:
    query = "SELECT execution_id, name FROM task_runs WHERE status = 'completed'"
    if database_url.startswith("sqlite://"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite://"))) as db:
            return {(int(row[0]), str(row[1])) for row in db.execute(query)}

    async def read() -> set[tuple[int, str]]:
        connection = await asyncpg.connect(database_url)
        try:
            return {(row[0], row[1]) for row in await connection.fetch(query)}
        finally:
            await connection.close()

    return asyncio.run(read())


def label(execution_index: int, task_name: str, prefix: str) -> str:
    return f"{prefix}-{execution_index}-{task_name.removeprefix('t')}"


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_killed_server_loses_nothing(server_env: dict[str, str], signal_name: str) -> None:
    with recorder() as record:
        with start(server_env) as first:
            executions = make_executions(first, record, signal_name)
            # Wait until every execution is under way, some further than others.
            wait_for(
                lambda: len(completed_tasks(states(first, executions))) >= WORKFLOWS,
                30,
                "tasks to complete before the kill",
            )
            if signal_name == "SIGKILL":
                first.process.kill()
            else:
                first.process.terminate()
            first.process.wait(timeout=15)
        # With no server running: what the database says had completed when the process died.
        before = completed_in_database(server_env["DATABASE_URL"])
        with start(server_env) as second:
            wait_for(
                lambda: all(
                    execution["status"] == "completed"
                    for execution in states(second, executions).values()
                ),
                60,
                "every execution to complete after the restart",
            )
            final = states(second, executions)
    index = {execution_id: position for position, execution_id in enumerate(executions)}
    assert before, "nothing had completed before the kill: the test proved nothing"
    for execution_id, name in before:
        hits = record.count(label(index[execution_id], name, signal_name))
        assert hits == 1, f"{name} of execution {execution_id} completed before, ran {hits}x"
    for execution_id, execution in final.items():
        for task in execution["tasks"]:
            assert task["status"] == "completed"
            # A call the kill cut short is not an attempt: never above max_attempts (1).
            assert task["attempts"] == 1, (execution_id, task)
            assert record.count(label(index[execution_id], task["name"], signal_name)) >= 1


@pytest.mark.slow
def test_a_take_over_renders_templates_from_the_committed_outputs(
    server_env: dict[str, str],
) -> None:
    """Killed between two tasks of a templated workflow: the task after the kill gets the
    output the first task committed before it, and the first task does not run again."""
    with recorder() as record:
        fetch = record.url("fetch")
        base = fetch.split("/hit/")[0]
        used = f"{base}/hit/{{{{ tasks.fetch.output.body.label }}}}-used-{{{{ input.n }}}}"
        tasks = [
            {"name": "fetch", "order": 1, "action": "http", "parameters": {"url": fetch}},
            {"name": "pause", "order": 2, "parameters": {"duration": 3}},
            {"name": "use", "order": 3, "action": "http", "parameters": {"url": used}},
        ]
        with start(server_env) as first:
            created = httpx.post(f"{first.url}/workflows/", json={"name": "t", "tasks": tasks})
            assert created.status_code == 200, created.text
            workflow_id = created.json()["id"]
            started = httpx.post(
                f"{first.url}/workflows/{workflow_id}/execute", json={"input": {"n": 7}}
            )
            execution_id = started.json()["id"]

            def between() -> bool:
                runs = states(first, [execution_id])[execution_id]["tasks"]
                return [run["status"] for run in runs] == ["completed", "running", "pending"]

            wait_for(between, 30, "the pause between the two http tasks")
            first.process.kill()
            first.process.wait(timeout=15)
        with start(server_env) as second:
            wait_for(
                lambda: states(second, [execution_id])[execution_id]["status"] == "completed",
                60,
                "the execution to complete after the restart",
            )
            final = states(second, [execution_id])[execution_id]
    assert record.count("fetch") == 1
    assert record.count("fetch-used-7") == 1
    assert final["tasks"][2]["parameters"] == {"url": f"{base}/hit/fetch-used-7"}
    assert final["output"]["use"]["body"] == {"label": "fetch-used-7", "hit": 1}
