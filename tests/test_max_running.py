"""WORKFLOW_MAX_RUNNING (contract section 8): an engine runs at most that many executions at
once; more are accepted and wait `pending`, starting in the order they came as others end.
Nothing is refused, nothing is lost. A real server process, on SQLite and on PostgreSQL with
Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from tests.live_server import live_server
from tests.services import server_environment

MAX_RUNNING = 3
STARTED = 3 * MAX_RUNNING
TASK_SECONDS = 0.4


@pytest.fixture(params=["sqlite", "postgres-redis"])
async def server_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    async with server_environment(
        request.param,
        tmp_path_factory,
        {"WORKFLOW_MAX_RUNNING": str(MAX_RUNNING), "WORKFLOW_LEASE_SECONDS": "2"},
    ) as env:
        yield env


@pytest.mark.slow
async def test_excess_executions_wait_pending_and_all_complete_in_order(
    server_env: dict[str, str],
) -> None:
    with live_server(server_env["DATABASE_URL"], server_env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            task = {"name": "t", "order": 1, "parameters": {"duration": TASK_SECONDS}}
            body = {"name": "w", "tasks": [task]}
            workflow_id = (await http.post("/workflows/", json=body)).json()["id"]
            answers = await asyncio.gather(
                *(http.post(f"/workflows/{workflow_id}/execute") for _ in range(STARTED))
            )
            assert all(answer.status_code == 200 for answer in answers)
            # Some waited (which ones had started by the time their answer was read varies).
            assert "pending" in [answer.json()["status"] for answer in answers]

            most_running = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                listed = (await http.get(f"/workflows/{workflow_id}/executions")).json()
                running = sum(row["status"] == "in_progress" for row in listed)
                most_running = max(most_running, running)
                if all(row["status"] == "completed" for row in listed):
                    break
                await asyncio.sleep(0.05)  # poll interval
            else:
                raise AssertionError(f"not all completed: {[r['status'] for r in listed]}")
    assert len(listed) == STARTED
    assert most_running <= MAX_RUNNING
    # Those that started after the first one ended had waited: they started in the order they
    # came (ids are given in arrival order), a later one never before an earlier one.
    first_end = min(datetime.fromisoformat(row["completed_at"]) for row in listed)
    waited = [row for row in listed if datetime.fromisoformat(row["started_at"]) >= first_end]
    assert len(waited) >= STARTED - MAX_RUNNING
    by_start = sorted(waited, key=lambda row: (row["started_at"], row["id"]))
    assert [row["id"] for row in by_start] == sorted(row["id"] for row in waited)
