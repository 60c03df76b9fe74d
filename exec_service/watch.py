"""Watching an execution: its current state, then every change, until it ends.

Subscribes before reading, so nothing committed after the read can be missed; uses each
announcement's version to drop old or repeated ones; re-reads the database after an overflow,
and whenever the bus has been quiet for a while (an announcement lost with a Redis outage
costs a delay, never the end of the stream). A re-read that finds newer versions first gives
their announcements a moment to arrive, so that a quiet spell ending just then does not merge
changes that the bus is still delivering.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from exec_service.bus import RESYNC, EventBus, Payload, Subscription, execution_channel
from models import executions as store
from models.db_unavailable import database_unavailable

# How long a watcher trusts a quiet bus before it re-reads the database.
QUIET_RESYNC_SECONDS = 2.0
# How long a re-read that found newer versions waits for their announcements.
CATCH_UP_SECONDS = 0.25


@dataclass(frozen=True)
class Update:
    execution: Mapping[str, Any]
    task_id: int | None = None
    task_status: str | None = None


def _applied(current: Mapping[str, Any], event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The execution after `event`, from the watcher's `current` state: a whole execution is
    taken as it is; a change (`changed`: the runs it touched) applies only to the version just
    before it (None when one was missed: the caller reads the database)."""
    changed = event.get("changed")
    if changed is None:
        execution: Mapping[str, Any] = event["execution"]
        return execution
    if event["version"] != current["version"] + 1:
        return None
    by_task = {run["task_id"]: run for run in changed}
    tasks = [by_task.get(run["task_id"], run) for run in current["tasks"]]
    return {**current, **event["execution"], "tasks": tasks}


def _update(execution: Mapping[str, Any], event: Mapping[str, Any]) -> Update:
    return Update(execution, event.get("task_id"), event.get("task_status"))


def _event(payload: Payload) -> Mapping[str, Any]:
    """An announcement, decoded unless it came from a publisher in this process."""
    if isinstance(payload, bytes):
        event: Mapping[str, Any] = orjson.loads(payload)
        return event
    return payload


async def _catch_up(
    subscription: Subscription, current: Mapping[str, Any], target: int
) -> AsyncIterator[Update]:
    """Announcements after `current`, up to version `target`, as they arrive within the grace
    period (until one cannot be applied: the caller's fresh read stands in for the rest)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CATCH_UP_SECONDS
    while current["version"] < target:
        payload = await subscription.get(within=max(0.0, deadline - loop.time()))
        if payload is None or payload == RESYNC:
            return
        event = _event(payload)
        if event["version"] > current["version"]:
            applied = _applied(current, event)
            if applied is None:
                return
            current = applied
            yield _update(current, event)


async def _read(execution_id: int) -> Mapping[str, Any] | None:
    """The execution as the database has it; None while the database does not answer (the
    stream waits and reads again, rather than end: announcements still arrive meanwhile)."""
    try:
        return await store.get_execution(execution_id)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        return None


async def watch(
    bus: EventBus,
    execution_id: int,
    quiet_seconds: float = QUIET_RESYNC_SECONDS,
    local: Callable[[int], Mapping[str, Any] | None] | None = None,
) -> AsyncIterator[Update]:
    """Raises NotFound before yielding anything when there is no such execution. `local`
    answers the execution's current state when it runs in this process (Engine.current): it
    is read after subscribing, as the database would be, and saves that read."""
    async with bus.subscribe(execution_channel(execution_id)) as subscription:
        current = local(execution_id) if local is not None else None
        if current is None:
            current = await store.get_execution(execution_id)
        yield Update(current)
        while not store.is_terminal(current["status"]):
            payload = await subscription.get(within=quiet_seconds)
            if payload is None or payload == RESYNC:
                fresh = await _read(execution_id)
                if fresh is None or fresh["version"] <= current["version"]:
                    continue
                if payload is None:  # quiet, not overflowed: the news may be on its way
                    async for update in _catch_up(subscription, current, fresh["version"]):
                        current = update.execution
                        yield update
                if fresh["version"] > current["version"]:
                    current = fresh
                    yield Update(current)
                continue
            event = _event(payload)
            if event["version"] <= current["version"]:
                continue
            applied = _applied(current, event)
            if applied is not None:
                current = applied
                yield _update(current, event)
                continue
            # A change was missed (Redis dropped it): the database has them all.
            fresh = await _read(execution_id)
            if fresh is not None and fresh["version"] > current["version"]:
                current = fresh
                yield Update(current)
