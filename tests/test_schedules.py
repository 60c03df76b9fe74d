"""Schedules (contract section 9): made, changed and deleted over REST and GraphQL, refused
when malformed; cron ticks in a time zone across daylight-saving changes; each tick starts
exactly one execution, also when two services race for it; after downtime only the latest
missed tick runs; disabling stops the ticks.

The shared app runs on SQLite and on PostgreSQL with Redis. The two-service and restart tests
start server processes of their own."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from models import schedules
from models.executions import now
from models.schedule_times import cron_after, cron_at_or_before, due_tick
from models.tables import Execution, Schedule
from tests.executions import make_workflow
from tests.live_server import (
    cli_process,
    environment,
    free_port,
    live_server,
    wait_for,
    wait_grpc_serving,
)
from tests.services import server_environment

BERLIN = ZoneInfo("Europe/Berlin")
SCHEDULE_FIELDS = "id workflowId cron intervalSeconds timezone input enabled nextRunAt lastRunAt"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- when ticks fall (no database) ---------------------------------------------------------


def test_a_daily_cron_keeps_its_local_time_across_both_changes() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    assert cron_after("0 9 * * *", BERLIN, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 7)
    assert cron_after("0 9 * * *", BERLIN, utc(2026, 3, 27, 12)) == utc(2026, 3, 28, 8)
    assert cron_after("0 9 * * *", BERLIN, utc(2026, 10, 24, 12)) == utc(2026, 10, 25, 8)


def test_a_time_the_spring_change_skips_runs_when_the_clock_jumps() -> None:
    # 02:30 does not exist in Berlin on 29 March 2026: it runs at 03:00 local (01:00 UTC).
    tick = cron_after("30 2 * * *", BERLIN, utc(2026, 3, 28, 12))
    assert tick == utc(2026, 3, 29, 1)
    assert cron_after("30 2 * * *", BERLIN, tick) == utc(2026, 3, 30, 0, 30)


def test_a_time_the_autumn_change_repeats_runs_once() -> None:
    # 02:30 happens twice in Berlin on 25 October 2026 (00:30 and 01:30 UTC): once is enough.
    first = cron_after("30 2 * * *", BERLIN, utc(2026, 10, 24, 12))
    assert first == utc(2026, 10, 25, 0, 30)
    assert cron_after("30 2 * * *", BERLIN, first) == utc(2026, 10, 26, 1, 30)
    assert cron_at_or_before("30 2 * * *", BERLIN, utc(2026, 10, 25, 1, 45)) == first


def test_an_hourly_cron_runs_every_real_hour_of_the_autumn_change() -> None:
    ticks, moment = [], utc(2026, 10, 24, 23, 30)
    for _ in range(4):
        moment = cron_after("0 * * * *", BERLIN, moment)
        ticks.append(moment)
    assert ticks == [utc(2026, 10, 25, hour) for hour in range(4)]


def test_only_the_latest_missed_tick_is_due() -> None:
    start = utc(2026, 1, 1)
    tick, after = due_tick(None, 10, BERLIN, start, start + timedelta(seconds=65))
    assert (tick, after) == (start + timedelta(seconds=60), start + timedelta(seconds=70))
    tick, after = due_tick("*/5 * * * *", None, BERLIN, start, utc(2026, 1, 1, 1, 7))
    assert (tick, after) == (utc(2026, 1, 1, 1, 5), utc(2026, 1, 1, 1, 10))


# -- the API (shared app) ------------------------------------------------------------------


@pytest.fixture
async def workflow_id(client: httpx.AsyncClient) -> AsyncIterator[int]:
    """A workflow whose one task echoes the input's `n`; deleted after the test, and its
    schedules with it (they would go on ticking in the shared app)."""
    task = {"name": "echo", "order": 1, "action": "echo", "parameters": {"n": "{{ input.n }}"}}
    made = await make_workflow(client, [task])
    yield made
    await client.delete(f"/workflows/{made}")


async def graphql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    answer = await client.post("/graphql", json={"query": query, "variables": variables})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_rest_makes_lists_changes_and_deletes_schedules(
    client: httpx.AsyncClient, workflow_id: int
) -> None:
    before = now()
    made = await client.post(
        f"/workflows/{workflow_id}/schedules",
        json={"interval_seconds": 3600, "input": {"n": 1}},
    )
    assert made.status_code == 200, made.text
    schedule = made.json()
    assert schedule["workflow_id"] == workflow_id
    assert (schedule["cron"], schedule["interval_seconds"]) == (None, 3600)
    assert (schedule["timezone"], schedule["input"], schedule["enabled"]) == ("UTC", {"n": 1}, True)
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert before + timedelta(hours=1) <= next_run <= now() + timedelta(hours=1)
    assert schedule["last_run_at"] is None

    listed = await client.get(f"/workflows/{workflow_id}/schedules/")
    assert [row["id"] for row in listed.json()] == [schedule["id"]]
    got = await client.get(f"/schedules/{schedule['id']}")
    assert got.json() == schedule

    changed = await client.put(
        f"/schedules/{schedule['id']}",
        json={"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "enabled": False},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["cron"] == "0 9 * * 1-5"
    assert changed.json()["next_run_at"] is None  # disabled
    enabled = await client.put(
        f"/schedules/{schedule['id']}", json={"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}
    )
    local = datetime.fromisoformat(enabled.json()["next_run_at"]).astimezone(BERLIN)
    assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)

    deleted = await client.delete(f"/schedules/{schedule['id']}")
    assert deleted.json() == {"success": True}
    assert (await client.get(f"/schedules/{schedule['id']}")).status_code == 404
    assert (await client.delete(f"/schedules/{schedule['id']}")).status_code == 404
    assert (await client.get("/workflows/2147483000/schedules")).status_code == 404
    missing = await client.post("/workflows/2147483000/schedules", json={"interval_seconds": 5})
    assert (missing.status_code, missing.json()) == (404, {"detail": "Workflow not found"})


@pytest.mark.parametrize(
    ("body", "told"),
    [
        ({}, "exactly one of cron and interval_seconds"),
        ({"cron": "* * * * *", "interval_seconds": 5}, "exactly one of cron and interval_seconds"),
        ({"cron": "61 * * * *"}, "not a valid cron expression"),
        ({"cron": "* * * * * *"}, "five fields"),
        ({"cron": "x" * 200}, "at most 120 characters"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "* * * * *", "timezone": "Europe"}, "unknown time zone"),
        ({"interval_seconds": 0}, "interval_seconds: from 1"),
        ({"interval_seconds": 10**9}, "interval_seconds: from 1"),
        ({"interval_seconds": 5, "input": [1]}, "dictionary"),
        ({"cron": "* * * * *\ud800"}, "lone surrogates"),
    ],
)
async def test_malformed_schedules_are_refused(
    client: httpx.AsyncClient, workflow_id: int, body: dict[str, Any], told: str
) -> None:
    # As JSON text with escapes: a lone surrogate cannot be sent as UTF-8.
    answer = await client.post(
        f"/workflows/{workflow_id}/schedules",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert told in answer.text
    listed = await client.get(f"/workflows/{workflow_id}/schedules")
    assert listed.json() == []


async def test_graphql_makes_lists_changes_and_deletes_schedules(
    client: httpx.AsyncClient, workflow_id: int
) -> None:
    made = await graphql(
        client,
        "mutation($w: ID!, $s: ScheduleInput!) { createSchedule(workflowId: $w, input: $s) "
        f"{{ {SCHEDULE_FIELDS} }} }}",
        w=str(workflow_id),
        s={"cron": "30 2 * * *", "timezone": "Europe/Berlin", "input": {"n": 2}},
    )
    schedule = made["data"]["createSchedule"]
    expected = cron_after("30 2 * * *", BERLIN, now())
    assert datetime.fromisoformat(schedule["nextRunAt"]) == expected
    assert (schedule["intervalSeconds"], schedule["input"]) == (None, {"n": 2})

    listed = await graphql(
        client,
        f"query($w: ID) {{ schedules(workflowId: $w) {{ {SCHEDULE_FIELDS} }} }}",
        w=str(workflow_id),
    )
    assert listed["data"]["schedules"] == [schedule]

    refused = await graphql(
        client,
        "mutation($id: ID!, $s: ScheduleInput!) { updateSchedule(id: $id, input: $s) { id } }",
        id=schedule["id"],
        s={"cron": "0 25 * * *"},
    )
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "input: Value error, not a valid cron expression" in refused["errors"][0]["message"]

    changed = await graphql(
        client,
        "mutation($id: ID!, $s: ScheduleInput!) { updateSchedule(id: $id, input: $s) "
        "{ intervalSeconds cron enabled nextRunAt } }",
        id=schedule["id"],
        s={"intervalSeconds": 7200, "enabled": False},
    )
    assert changed["data"]["updateSchedule"] == {
        "intervalSeconds": 7200,
        "cron": None,
        "enabled": False,
        "nextRunAt": None,
    }
    deleted = await graphql(
        client, "mutation($id: ID!) { deleteSchedule(id: $id) }", id=schedule["id"]
    )
    assert deleted["data"]["deleteSchedule"] is True
    again = await graphql(
        client, "mutation($id: ID!) { deleteSchedule(id: $id) }", id=schedule["id"]
    )
    assert again["errors"][0]["extensions"]["code"] == "NOT_FOUND"


# -- ticks (shared app) --------------------------------------------------------------------


async def scheduled_executions(client: httpx.AsyncClient, workflow_id: int) -> list[dict[str, Any]]:
    answer = await client.get(f"/workflows/{workflow_id}/executions", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()
    return rows


async def wait_async(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)  # poll interval
    raise AssertionError(f"timed out waiting for {what}")


async def test_each_tick_starts_one_execution_with_the_input_until_disabled(
    client: httpx.AsyncClient, workflow_id: int
) -> None:
    made = await client.post(
        f"/workflows/{workflow_id}/schedules", json={"interval_seconds": 1, "input": {"n": 7}}
    )
    schedule = made.json()

    async def two_completed() -> bool:
        rows = await scheduled_executions(client, workflow_id)
        return len([row for row in rows if row["status"] == "completed"]) >= 2

    await wait_async(two_completed, 10, "two scheduled executions")
    rows = await scheduled_executions(client, workflow_id)
    for row in rows:
        assert row["triggered_by"] == f"schedule:{schedule['id']}"
        assert row["input"] == {"n": 7}
    assert {row["output"]["echo"]["n"] for row in rows if row["status"] == "completed"} == {7}
    keys = [row.idempotency_key for row in await Execution.filter(workflow_id=workflow_id)]
    assert len(keys) == len(set(keys)) == len(rows)
    assert all(key is not None and key.startswith(f"schedule:{schedule['id']}:") for key in keys)
    shown = (await client.get(f"/schedules/{schedule['id']}")).json()
    assert shown["last_run_at"] is not None

    disabled = await client.put(
        f"/schedules/{schedule['id']}", json={"interval_seconds": 1, "enabled": False}
    )
    assert disabled.status_code == 200
    count = len(await scheduled_executions(client, workflow_id))
    # No tick may start after the answer: wait past two of its intervals and count again.
    await asyncio.sleep(2.5)
    assert len(await scheduled_executions(client, workflow_id)) == count


async def test_a_tick_is_taken_once_and_only_the_latest_missed_one_runs(
    client: httpx.AsyncClient, workflow_id: int
) -> None:
    made = await client.post(f"/workflows/{workflow_id}/schedules", json={"interval_seconds": 60})
    schedule_id = made.json()["id"]
    # As if no service had run for ten minutes and a half.
    moment = now()
    start = moment - timedelta(seconds=630)
    await Schedule.filter(id=schedule_id).update(next_run_at=start)
    row = await Schedule.get(id=schedule_id)
    # Two services that read the same row race for the tick: one takes it.
    taken = await asyncio.gather(
        schedules.take_tick(row, moment, "one"), schedules.take_tick(row, moment, "two")
    )
    assert sorted(taken, key=lambda value: value is None)[1] is None
    execution_id = next(value for value in taken if value is not None)
    assert await Execution.filter(workflow_id=workflow_id).count() == 1
    execution = await Execution.get(id=execution_id)
    assert execution.triggered_by == f"schedule:{schedule_id}"
    latest = start + timedelta(seconds=600)
    assert execution.idempotency_key == schedules.tick_key(schedule_id, latest)
    after = await Schedule.get(id=schedule_id)
    assert (after.last_run_at, after.next_run_at) == (latest, latest + timedelta(seconds=60))
    upcoming = await schedules.next_ticks(1000)
    assert not [row for row in upcoming if row.id == schedule_id and row.next_run_at <= moment]
    # A stale read (the tick already taken) takes nothing.
    assert await schedules.take_tick(row, moment, "three") is None


# -- two execution services on one PostgreSQL; a restart after downtime (own processes) -----


async def test_two_services_on_one_database_start_one_execution_per_tick(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with server_environment("postgres-redis", tmp_path_factory) as env:
        with live_server(env["DATABASE_URL"], env) as server:
            grpc_port = free_port()
            arguments = ["grpc", "--host", "127.0.0.1", "--port", str(grpc_port)]
            with cli_process(arguments, environment(env["DATABASE_URL"], env)) as second:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                    answer = await http.post("/workflows/", json={"name": "tick", "tasks": []})
                    workflow = answer.json()
                    # Once the second service answers, both are looking for ticks.
                    await asyncio.to_thread(wait_grpc_serving, second, f"127.0.0.1:{grpc_port}")
                    answer = await http.post(
                        f"/workflows/{workflow['id']}/schedules", json={"interval_seconds": 1}
                    )
                    made = answer.json()
                    await asyncio.sleep(6)
                    await http.put(
                        f"/schedules/{made['id']}", json={"interval_seconds": 1, "enabled": False}
                    )
                    rows = (await http.get(f"/workflows/{workflow['id']}/executions")).json()
                assert second.process.poll() is None, second.log()
        keys = await _keys_of(env["DATABASE_URL"], workflow["id"])
    assert len(rows) == len(keys)
    assert 5 <= len(keys) <= 7, keys
    assert len(set(keys)) == len(keys)
    # One execution per tick and no tick left out: the ticks are a run of whole seconds.
    ticks = sorted(datetime.fromisoformat(key.split(":", 2)[2]) for key in keys)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)] == [1.0] * (
        len(ticks) - 1
    )


async def _keys_of(database_url: str, workflow_id: int) -> list[str]:
    import asyncpg

    connection = await asyncpg.connect(database_url.replace("postgres://", "postgresql://"))
    try:
        rows = await connection.fetch(
            "SELECT idempotency_key FROM executions WHERE workflow_id = $1", workflow_id
        )
    finally:
        await connection.close()
    return [str(row["idempotency_key"]) for row in rows]


def test_a_service_restarted_after_missed_ticks_runs_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = tmp_path_factory.mktemp("restart") / "db.sqlite3"
    url = f"sqlite://{path}"
    with live_server(url) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        workflow = http.post("/workflows/", json={"name": "hourly", "tasks": []}).json()
        made = http.post(
            f"/workflows/{workflow['id']}/schedules", json={"interval_seconds": 3600}
        ).json()
    # While the service is down, five and a half hours pass (its next tick moves back).
    with sqlite3.connect(path) as database:
        (stored,) = database.execute(
            "SELECT next_run_at FROM schedules WHERE id = ?", (made["id"],)
        ).fetchone()
        first = datetime.fromisoformat(made["next_run_at"])
        back = first - timedelta(hours=5, minutes=30)
        # Written as Tortoise wrote it (same text form, shifted).
        text = (
            str(stored)
            .replace(first.strftime("%Y-%m-%d %H:%M:%S"), back.strftime("%Y-%m-%d %H:%M:%S"))
            .replace(first.strftime("%Y-%m-%dT%H:%M:%S"), back.strftime("%Y-%m-%dT%H:%M:%S"))
        )
        assert text != str(stored), stored
        database.execute("UPDATE schedules SET next_run_at = ? WHERE id = ?", (text, made["id"]))
    with live_server(url) as server, httpx.Client(base_url=server.url, timeout=10) as http:

        def executions() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = http.get(f"/workflows/{workflow['id']}/executions").json()
            return rows

        wait_for(lambda: len(executions()) >= 1, 10, "the missed tick")
        shown = http.get(f"/schedules/{made['id']}").json()
        # Four ticks were missed, the latest 30 minutes ago: that one ran, and the next is on
        # the same hourly grid, 30 minutes from now.
        assert datetime.fromisoformat(shown["last_run_at"]) == first - timedelta(minutes=90)
        assert datetime.fromisoformat(shown["next_run_at"]) == first - timedelta(minutes=30)
        # Looked at again a second later (the scheduler's pace): still the one execution.
        wait_for(lambda: "schedule" in json.dumps(executions()), 5, "triggered_by")
        time.sleep(1.5)
        assert len(executions()) == 1
