"""A SAQ worker's heartbeat for a running job (exec_service/worker.py `Heartbeat`), on a real
Redis: it touches long jobs, and never after the job function has returned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from saq import Job
from saq.job import Status
from saq.queue.redis import RedisQueue

from exec_service import worker
from exec_service.worker import Heartbeat
from tests.services import saq_queue


@pytest.fixture
async def queue() -> AsyncIterator[RedisQueue]:
    async with saq_queue() as made:
        yield made


async def test_a_long_job_is_touched_and_a_short_one_is_not(
    queue: RedisQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "TOUCH_SECONDS", 0.05)
    long, short = Job("run_task", queue=queue), Job("run_task", queue=queue)
    for job in (long, short):
        await queue.enqueue(job)
        await queue.update(job, status=Status.ACTIVE)
    touched = {job.key: (await queue.job(job.key)).touched for job in (long, short)}  # type: ignore[union-attr]
    beats = Heartbeat(long), Heartbeat(short)
    await beats[1].stop()  # the short job ends at once

    async def touched_again() -> None:
        # The touch happens in Redis, which has no event for it: look until it shows.
        while (await queue.job(long.key)).touched == touched[long.key]:  # type: ignore[union-attr]  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(touched_again(), 2)
    await beats[0].stop()
    assert (await queue.job(short.key)).touched == touched[short.key]  # type: ignore[union-attr]


async def test_stop_waits_for_a_touch_in_flight(
    queue: RedisQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A touch rewrites the whole record: one landing after the job's end would undo it."""
    monkeypatch.setattr(worker, "TOUCH_SECONDS", 0.05)
    job = Job("run_task", queue=queue)
    await queue.enqueue(job)
    await queue.update(job, status=Status.ACTIVE)
    update = RedisQueue._update
    in_flight = asyncio.Event()

    async def slow_update(self: RedisQueue, stored: Job, *args: Any, **kwargs: Any) -> None:
        in_flight.set()
        await asyncio.sleep(0.3)  # the write of a touch, delayed
        await update(self, stored, *args, **kwargs)

    monkeypatch.setattr(RedisQueue, "_update", slow_update)
    heartbeat = Heartbeat(job)
    await asyncio.wait_for(in_flight.wait(), 2)
    await heartbeat.stop()
    monkeypatch.setattr(RedisQueue, "_update", update)
    # What SAQ does once the job function has returned: store the end.
    await queue.finish(job, Status.COMPLETE, result={"ok": True, "output": {}})
    await asyncio.sleep(0.4)  # a touch left running would land about now
    stored = await queue.job(job.key)
    assert stored is not None
    assert (stored.status, stored.result) == (Status.COMPLETE, {"ok": True, "output": {}})
