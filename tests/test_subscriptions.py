"""GraphQL subscriptions (graphql-transport-ws) against a real server process, on SQLite and
on PostgreSQL with Redis: opened before, during and after an execution, each ends with its
terminal state; 200 concurrent subscribers on one execution each receive every event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.live_server import LiveServer, live_server
from tests.services import fresh_postgres_database, redis_namespace

SUBSCRIPTION = """
subscription($id: ID!) {
  executionEvents(executionId: $id) {
    executionId status taskId taskStatus at
    execution { id status taskRuns { name status attempts } }
  }
}"""
State = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module", params=["sqlite", "postgres-redis"])
async def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("subscriptions") / "db.sqlite3"
        with live_server(f"sqlite://{path}") as running:
            yield running
        return
    async with fresh_postgres_database() as database_url, redis_namespace() as (url, prefix):
        env = {"REDIS_URL": url, "WORKFLOW_REDIS_PREFIX": prefix}
        with live_server(database_url, env) as running:
            yield running


async def start_execution(server: LiveServer, durations: list[float]) -> int:
    tasks = [
        {"name": f"t{index}", "order": index, "parameters": {"duration": duration}}
        for index, duration in enumerate(durations)
    ]
    async with httpx.AsyncClient(base_url=server.url) as http:
        workflow = (await http.post("/workflows/", json={"name": "w", "tasks": tasks})).json()
        execution = (await http.post(f"/workflows/{workflow['id']}/execute")).json()
    execution_id: int = execution["id"]
    return execution_id


async def subscribe(server: LiveServer, execution_id: int | str) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + "/graphql"
    socket = await connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    await socket.send(json.dumps({"type": "connection_init"}))
    assert json.loads(await socket.recv())["type"] == "connection_ack"
    payload = {"query": SUBSCRIPTION, "variables": {"id": str(execution_id)}}
    await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
    return socket


async def collect(socket: ClientConnection, within: float = 30.0) -> list[dict[str, Any]]:
    """Every event until the server completes the subscription."""
    events = []

    async def read() -> None:
        while True:
            message = json.loads(await socket.recv())
            if message["type"] == "complete":
                return
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            events.append(message["payload"]["data"]["executionEvents"])

    try:
        await asyncio.wait_for(read(), within)
    finally:
        await socket.close()
    return events


def state(event: dict[str, Any]) -> State:
    runs = event["execution"]["taskRuns"]
    return event["status"], tuple((run["name"], run["status"]) for run in runs)


def tail(names: list[str]) -> Iterator[State]:
    """The states an execution of sync tasks goes through, from its first task completing."""
    for done in range(1, len(names) + 1):
        statuses = ["COMPLETED"] * done + ["PENDING"] * (len(names) - done)
        yield "IN_PROGRESS", tuple(zip(names, statuses, strict=True))
        if done < len(names):
            statuses[done] = "RUNNING"
            yield "IN_PROGRESS", tuple(zip(names, statuses, strict=True))
    yield "COMPLETED", tuple((name, "COMPLETED") for name in names)


async def test_subscriptions_before_during_and_after(server: LiveServer) -> None:
    execution_id = await start_execution(server, [0.6, 0.3])
    early = asyncio.create_task(collect(await subscribe(server, execution_id)))
    await asyncio.sleep(0.7)  # a point in the middle of the run: the first task has ended
    during = asyncio.create_task(collect(await subscribe(server, execution_id)))
    early_events, during_events = await early, await during
    late_events = await collect(await subscribe(server, execution_id))

    for events in (early_events, during_events, late_events):
        assert events[-1]["status"] == "COMPLETED"
        assert events[-1]["execution"]["status"] == "COMPLETED"
    assert len(late_events) == 1  # the current state, then the end
    expected = list(tail(["t0", "t1"]))
    assert [state(event) for event in early_events][-len(expected) :] == expected
    changed = [(e["taskId"] is not None, e["taskStatus"]) for e in early_events[1:]]
    assert all(has_task for has_task, _ in changed[:-1])  # each change names its task


async def test_two_hundred_subscribers_each_receive_every_event(server: LiveServer) -> None:
    # The first task gives the subscribers time to connect; every change after it is checked.
    execution_id = await start_execution(server, [3.0, 0.2, 0.2])
    sockets = await asyncio.gather(*(subscribe(server, execution_id) for _ in range(200)))
    results = await asyncio.gather(*(collect(socket, within=60) for socket in sockets))
    expected = list(tail(["t0", "t1", "t2"]))
    for events in results:
        states = [state(event) for event in events]
        first_task = states[0][1][0][1]
        assert first_task in ("PENDING", "RUNNING"), f"connected too late: {states}"
        assert states[-len(expected) :] == expected, states
        assert len(states) == len(set(states))  # nothing twice


async def test_subscribing_to_a_missing_execution_is_an_error(server: LiveServer) -> None:
    socket = await subscribe(server, 2147483000)
    message = json.loads(await asyncio.wait_for(socket.recv(), 10))
    await socket.close()
    assert message["type"] in ("error", "next")
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_connection_holds_at_most_100_subscriptions(server: LiveServer) -> None:
    execution_id = await start_execution(server, [30])  # long: every subscription stays open
    socket = await subscribe(server, execution_id)  # the first one, "1"
    try:
        for number in range(2, 102):
            payload = {"query": SUBSCRIPTION, "variables": {"id": str(execution_id)}}
            await socket.send(
                json.dumps({"id": str(number), "type": "subscribe", "payload": payload})
            )
        refused = None
        while refused is None:
            message = json.loads(await asyncio.wait_for(socket.recv(), 10))
            if message["type"] == "error":
                refused = message
        assert refused["id"] == "101"
        assert refused["payload"][0]["message"] == "Subscription limit reached"
    finally:
        await socket.close()
    async with httpx.AsyncClient(base_url=server.url) as http:
        await http.post(f"/executions/{execution_id}/cancel")
