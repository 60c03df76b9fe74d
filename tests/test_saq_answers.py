"""How the SAQ executor hears that its jobs ended (exec_service/executors/saq_answers.py), on a
real Redis, with the job's end written the way SAQ writes it (record, then a notice)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from saq import Job
from saq.job import Status
from saq.queue.redis import RedisQueue

from exec_service.executors import TaskInterrupted, saq_answers
from exec_service.executors.saq_answers import JobAnswers
from tests.services import saq_queue


@pytest.fixture
async def queue() -> AsyncIterator[RedisQueue]:
    async with saq_queue() as made:
        yield made


@pytest.fixture
async def answers(queue: RedisQueue) -> AsyncIterator[JobAnswers]:
    listening = JobAnswers(queue)
    await listening.start()
    yield listening
    await listening.close()


async def store(queue: RedisQueue, job: Job, *, announce: bool = True) -> None:
    """Write the job's record, then (unless told not to) its notice, as SAQ does."""
    await queue.redis.set(job.id, queue.serialize(job))
    if announce:
        await queue.notify(job)


async def end(queue: RedisQueue, job: Job, *, announce: bool = True) -> None:
    job.status = Status.COMPLETE
    job.result = {"ok": True, "output": {"n": job.key}}
    await store(queue, job, announce=announce)


@contextlib.asynccontextmanager
async def enqueued(
    queue: RedisQueue, answers: JobAnswers, job: Job
) -> AsyncIterator[asyncio.Task[Job]]:
    """`job` in the queue, and the executor's wait for its end under way."""
    with answers.expect(job) as ended:
        await queue.enqueue(job)
        waiting = asyncio.create_task(answers.wait(job, ended))
        try:
            yield waiting
        finally:
            waiting.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await waiting


async def abort_as_swept(queue: RedisQueue, job: Job) -> None:
    """What a live worker records when SAQ's sweep aborted its job."""
    job.attempts, job.status, job.error = 1, Status.ABORTED, queue.swept_error_message
    await store(queue, job)


async def test_many_waiters_each_get_their_own_answer(
    queue: RedisQueue, answers: JobAnswers
) -> None:
    jobs = [Job("run_task", queue=queue) for _ in range(50)]
    for job in jobs:
        await queue.enqueue(job)

    async def wait(job: Job) -> Job:
        with answers.expect(job) as ended:
            return await answers.wait(job, ended)

    waiting = [asyncio.create_task(wait(job)) for job in jobs]
    await asyncio.sleep(0)
    # Ended together: their records are read back in one MGET (the test only sees answers).
    await asyncio.gather(*(end(queue, job) for job in reversed(jobs)))
    done = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert [job.result for job in done] == [{"ok": True, "output": {"n": job.key}} for job in jobs]


async def test_an_end_whose_notice_is_lost_is_found_by_reading(
    queue: RedisQueue, answers: JobAnswers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saq_answers, "CHECK_SECONDS", 0.2)
    job = Job("run_task", queue=queue)
    async with enqueued(queue, answers, job) as waiting:
        await end(queue, job, announce=False)
        stored = await asyncio.wait_for(waiting, 2)
    assert stored.status == Status.COMPLETE


async def test_a_notice_that_is_not_an_end_keeps_the_waiter_waiting(
    queue: RedisQueue, answers: JobAnswers
) -> None:
    job = Job("run_task", queue=queue)
    async with enqueued(queue, answers, job) as waiting:
        await queue.update(job, status=Status.ACTIVE)
        # Plain SAQ announces "active" too (our queue does not): a notice, not an end.
        await queue.redis.publish(job.id, Status.ACTIVE)
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await end(queue, job)
        assert (await asyncio.wait_for(waiting, 2)).status == Status.COMPLETE


async def test_a_job_whose_record_is_gone_is_an_interruption(
    queue: RedisQueue, answers: JobAnswers
) -> None:
    job = Job("run_task", queue=queue)
    async with enqueued(queue, answers, job) as waiting:
        await queue.redis.delete(job.id)  # Redis flushed or restarted without persistence
        await queue.notify(Job("run_task", queue=queue, key=job.key, status=Status.COMPLETE))
        with pytest.raises(TaskInterrupted):
            await asyncio.wait_for(waiting, 2)


async def test_an_abort_by_the_sweep_with_a_retry_to_come_is_not_the_end(
    queue: RedisQueue, answers: JobAnswers
) -> None:
    job = Job("run_task", queue=queue, retries=3)
    async with enqueued(queue, answers, job) as waiting:
        # A live worker's abort of a swept job lands first; the sweep then requeues it.
        await abort_as_swept(queue, job)
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await end(queue, job)  # the requeued job ran on another worker
        assert (await asyncio.wait_for(waiting, 2)).status == Status.COMPLETE


async def test_an_abort_by_the_sweep_with_no_retry_left_is_the_end(
    queue: RedisQueue, answers: JobAnswers
) -> None:
    job = Job("run_task", queue=queue, retries=1)
    async with enqueued(queue, answers, job) as waiting:
        await abort_as_swept(queue, job)
        assert (await asyncio.wait_for(waiting, 2)).status == Status.ABORTED


async def test_redis_away_while_reading_is_waited_out(
    queue: RedisQueue, answers: JobAnswers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saq_answers, "RECONNECT_DELAY_SECONDS", 0.05)
    fetch = answers._fetch
    failures = 0

    async def failing_twice(job_id: str) -> Job | None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise ConnectionError("Redis is restarting")
        return await fetch(job_id)

    monkeypatch.setattr(answers, "_fetch", failing_twice)
    job = Job("run_task", queue=queue)
    async with enqueued(queue, answers, job) as waiting:
        await end(queue, job)
        assert (await asyncio.wait_for(waiting, 2)).status == Status.COMPLETE
    assert failures == 2


@pytest.mark.parametrize("status", [Status.ACTIVE, Status.ABORTING])
async def test_a_job_lost_by_saq_is_given_up_and_aborted(
    queue: RedisQueue, answers: JobAnswers, monkeypatch: pytest.MonkeyPatch, status: Status
) -> None:
    """Running untouched, or aborting with no sweep to settle it: its worker died and SAQ
    lost it. The engine runs the task again rather than wait for ever."""
    monkeypatch.setattr(saq_answers, "CHECK_SECONDS", 0.1)
    monkeypatch.setattr(saq_answers, "STALLED_SECONDS", 0.5)
    job = Job("run_task", queue=queue)
    async with enqueued(queue, answers, job) as waiting:
        await queue.update(job, status=status)  # touched now, then never again
        await asyncio.sleep(0.3)
        assert not waiting.done()
        with pytest.raises(TaskInterrupted, match="stalled"):
            await asyncio.wait_for(waiting, 3)
    stored = await queue.job(job.key)
    assert stored is not None
    assert stored.status == Status.ABORTED or stored.status == Status.ABORTING
    assert stored.error == "stalled: given up by the engine"
