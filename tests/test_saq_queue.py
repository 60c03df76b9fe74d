"""The SAQ queue of exec_service/saq_queue.py, on a real Redis: its sweep hands on the jobs whose
worker is gone, and never a job a live worker is about to run or has ended (SAQ issues #124,
#277); it announces a job's end, in the same transaction, and nothing else.

Workers are played by hand here (SAQ's own steps: `dequeue`, then `update(status=ACTIVE)`;
then the heartbeat's `update()`), so that each race is set up exactly rather than hoped for."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.client import PubSub
from saq import Job
from saq.job import Status
from saq.utils import now

from exec_service import saq_queue as sweeping
from exec_service.saq_queue import IN_JOB_SLOT, TaskQueue
from tests.services import saq_queue

ABORT_WAIT = 0.3  # how long a sweep waits for a live worker to answer its abort


@pytest.fixture
async def queue() -> AsyncIterator[TaskQueue]:
    async with saq_queue() as made:
        yield made


_sweepers: weakref.WeakKeyDictionary[TaskQueue, TaskQueue] = weakref.WeakKeyDictionary()


def sweeper(queue: TaskQueue) -> TaskQueue:
    """The queue of another worker process (a worker's sweep leaves the jobs it runs alone)."""
    if queue not in _sweepers:
        _sweepers[queue] = TaskQueue(queue.redis, name=queue.name)
    return _sweepers[queue]


async def sweep(queue: TaskQueue) -> list[str]:
    # Each sweep takes a lock for `lock` seconds; these tests sweep back to back.
    await queue.redis.delete(queue.namespace("sweep"))
    return await sweeper(queue).sweep(lock=60, abort=ABORT_WAIT)


async def taken(queue: TaskQueue, **fields: object) -> Job:
    """A job a worker has just moved into the active list (and not yet marked active)."""
    settings: dict[str, object] = {"heartbeat": 5, "retries": 3} | fields
    await queue.enqueue(Job("run_task", queue=queue, **settings))  # type: ignore[arg-type]
    job = await queue.dequeue()
    assert job is not None
    return job


async def claimed(queue: TaskQueue, *, touched_ago_ms: int = 0) -> Job:
    """A job a worker runs, last touched `touched_ago_ms` ago."""
    job = await taken(queue)
    job.attempts += 1
    job.started = now()
    await queue.update(job, status=Status.ACTIVE)
    await queue.update(job)  # its first heartbeat: the worker defers marking it active to it
    if touched_ago_ms:
        job.touched = now() - touched_ago_ms
        await queue.redis.set(job.id, queue.serialize(job))
    return job


async def stored(queue: TaskQueue, job: Job) -> Job:
    record = await queue.job(job.key)
    assert record is not None
    return record


async def raw_record(queue: TaskQueue, job: Job) -> bytes:
    record = await queue.redis.get(job.id)
    assert isinstance(record, bytes)
    return record


@contextlib.asynccontextmanager
async def notices(queue: TaskQueue, job: Job) -> AsyncIterator[PubSub]:
    """The notices on `job`'s channel, from the moment Redis confirms the subscription."""
    pubsub = queue.redis.pubsub()
    await pubsub.subscribe(job.id)
    try:
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        yield pubsub
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]


async def blocked_at_redis(queue: TaskQueue) -> int:
    """How many clients Redis holds in a blocking command (a worker waiting for a job)."""
    info = await queue.redis.info("clients")
    return int(info["blocked_clients"])


async def in_list(queue: TaskQueue, name: str, job: Job) -> bool:
    return job.id.encode() in await queue.redis.lrange(queue.namespace(name), 0, -1)


async def test_a_job_just_taken_by_a_worker_is_left_to_it(queue: TaskQueue) -> None:
    job = await taken(queue)
    assert await sweep(queue) == []
    assert (await stored(queue, job)).status == Status.QUEUED
    assert await in_list(queue, "active", job)
    # The worker starts it (marking it active waits for the first heartbeat: most jobs end
    # sooner), then runs it, as if the sweep had not been.
    job.attempts += 1
    job.started = now()
    await queue.update(job, status=Status.ACTIVE)
    assert (await stored(queue, job)).status == Status.QUEUED
    assert await sweep(queue) == []
    await queue.update(job)  # the first heartbeat
    record = await stored(queue, job)
    assert (record.status, record.attempts) == (Status.ACTIVE, 1)
    assert await sweep(queue) == []
    assert (await stored(queue, job)).status == Status.ACTIVE


async def test_a_worker_takes_a_job_waiting_or_one_enqueued_while_it_waits(
    queue: TaskQueue,
) -> None:
    waiting = await taken(queue)  # in the queue before the worker asked
    assert await in_list(queue, "active", waiting)
    # A worker that has taken nothing yet looks for a waiting job first; one that found its
    # queue empty last time waits for the next job at once. Either way, it gets it.
    for worker in (TaskQueue(queue.redis, name=queue.name), queue):
        blocked = await blocked_at_redis(queue)
        later = asyncio.create_task(worker.dequeue())
        async with asyncio.timeout(5):  # until the worker waits on the empty queue
            while await blocked_at_redis(queue) == blocked:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.01)
        assert not later.done()
        enqueued = await queue.enqueue(Job("run_task", queue=queue))
        assert enqueued is not None
        job = await asyncio.wait_for(later, 5)
        assert job is not None
        assert (job.key, job.status) == (enqueued.key, Status.QUEUED)
        assert await in_list(queue, "active", job)


async def enqueued(queue: TaskQueue, *keys: str) -> list[Job]:
    jobs = [Job("run_task", queue=queue, key=key, heartbeat=5, retries=3) for key in keys]
    for job in jobs:
        assert await queue.enqueue(job) is not None
    return jobs


async def finish_in_a_job_slot(queue: TaskQueue, job: Job) -> None:
    """Finish `job` as a worker's job slot does (TaskWorker.process)."""

    async def slot() -> None:
        IN_JOB_SLOT.set(True)
        await queue.finish(job, Status.COMPLETE, result={"ok": True, "output": {}})

    await asyncio.create_task(slot())


async def test_a_job_slot_finishing_a_job_takes_the_next_in_the_same_call(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await enqueued(queue, "first", "second")
    job = await queue.dequeue()
    assert job is not None
    assert job.key == first.key
    await finish_in_a_job_slot(queue, job)
    assert (await stored(queue, first)).status == Status.COMPLETE
    assert await in_list(queue, "active", second)  # taken, and the sweep leaves it alone
    assert not await in_list(queue, "queued", second)
    assert await sweep(queue) == []

    async def no_round_trip(*args: object, **kwargs: object) -> None:
        raise AssertionError("dequeue asked Redis for a job it already had")

    monkeypatch.setattr(queue, "_take", no_round_trip)
    monkeypatch.setattr(queue.redis, "blmove", no_round_trip)
    job = await queue.dequeue()
    assert job is not None
    assert job.key == second.key


async def test_a_job_taken_ahead_without_a_record_is_passed_over(queue: TaskQueue) -> None:
    _, lost = await enqueued(queue, "first", "lost")
    await queue.redis.delete(lost.id)  # its record gone (Redis lost it): only its id is queued
    job = await queue.dequeue()
    assert job is not None
    await finish_in_a_job_slot(queue, job)  # takes the id, and no record with it
    assert await queue.dequeue(timeout=0.1) is None
    assert lost.id not in queue._claims  # nothing kept for it


async def test_a_job_finished_outside_a_job_slot_takes_nothing(queue: TaskQueue) -> None:
    """An engine's abort, or SAQ's abort timer, finishes jobs too: their next job would wait
    for a slot to come by, so they leave it in the queue."""
    _, second = await enqueued(queue, "first", "second")
    job = await queue.dequeue()
    assert job is not None
    await queue.finish(job, Status.ABORTED, error="cancelled by the engine")
    assert await in_list(queue, "queued", second)
    assert not await in_list(queue, "active", second)


async def test_a_stopping_worker_gives_back_the_jobs_it_took_ahead(queue: TaskQueue) -> None:
    _, _, c, d, e = await enqueued(queue, "a", "b", "c", "d", "e")
    running = [await queue.dequeue(), await queue.dequeue()]  # a and b
    for job in running:
        assert job is not None
        await finish_in_a_job_slot(queue, job)  # takes c, then d
    assert [await in_list(queue, "active", job) for job in (c, d, e)] == [True, True, False]
    # The engine aborts d (its task was cancelled) before the worker got to it.
    aborted = await stored(queue, d)
    await queue.abort(aborted, "cancelled by the engine")
    queue.worker_stopping = True
    await queue.give_back()
    queued = await queue.redis.lrange(queue.namespace("queued"), 0, -1)
    assert queued == [c.id.encode(), e.id.encode()]  # c back at the head, before e
    assert await queue.redis.lrange(queue.namespace("active"), 0, -1) == []
    assert (await stored(queue, c)).status == Status.QUEUED
    assert (await stored(queue, d)).status != Status.QUEUED
    # c runs next, on whichever worker.
    job = await TaskQueue(queue.redis, name=queue.name).dequeue()
    assert job is not None
    assert job.key == c.key


async def test_a_heartbeat_does_not_overwrite_an_abort(queue: TaskQueue) -> None:
    """The engine aborts a job its worker has just started (and not yet marked active)."""
    job = await taken(queue)
    job.attempts += 1
    await queue.update(job, status=Status.ACTIVE)
    engine = TaskQueue(queue.redis, name=queue.name)  # the execution service's queue
    await engine.abort(await stored(queue, job), "cancelled by the engine")
    await queue.update(job)  # the heartbeat
    record = await stored(queue, job)
    assert (record.status, record.error) == (Status.ABORTING, "cancelled by the engine")


async def test_a_heartbeat_whose_answer_was_lost_does_not_stop_the_next(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write landed, its answer went with the connection: the next touch must still be
    accepted, or the job goes untouched, is swept, and runs a second time."""
    job = await claimed(queue)
    set_if_unchanged = queue._set_if_unchanged

    async def landed_unheard(*args: Any, **kwargs: Any) -> Any:
        await set_if_unchanged(*args, **kwargs)
        raise ConnectionError("connection lost before the answer")

    monkeypatch.setattr(queue, "_set_if_unchanged", landed_unheard)
    job.progress = 0.5
    with pytest.raises(ConnectionError):
        await queue.update(job)
    monkeypatch.setattr(queue, "_set_if_unchanged", set_if_unchanged)
    job.progress = 0.75
    await queue.update(job)
    assert (await stored(queue, job)).progress == 0.75


async def test_a_worker_leaves_the_jobs_it_runs_to_itself(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sweep shows it is alive, whatever its jobs' records say."""
    monkeypatch.setattr(sweeping, "UNCLAIMED_GRACE_SECONDS", 0.0)
    job = await taken(queue)  # not marked active yet
    await queue.redis.delete(queue.namespace("sweep"))
    assert await queue.sweep(lock=60, abort=ABORT_WAIT) == []
    assert await in_list(queue, "active", job)
    assert await sweep(queue) == [job.id]  # another worker's sweep: this one is gone, say


async def test_a_job_its_worker_gives_back_runs_again_unless_it_was_aborted(
    queue: TaskQueue,
) -> None:
    """What SAQ's worker does with the jobs it runs when it shuts down: `retry`. A job the
    engine aborted in the same moment (its task cancelled) must not go back to the queue."""
    given_back, aborted = await claimed(queue), await claimed(queue)
    engine = TaskQueue(queue.redis, name=queue.name)  # the execution service's queue
    await engine.abort(await stored(queue, aborted), "cancelled by the engine")
    for job in (given_back, aborted):
        await queue.retry(job, "cancelled")
    record = await stored(queue, given_back)
    assert (record.status, record.error) == (Status.QUEUED, "cancelled")
    assert await in_list(queue, "queued", given_back)
    assert not await in_list(queue, "active", given_back)
    record = await stored(queue, aborted)
    assert (record.status, record.error) == (Status.ABORTING, "cancelled by the engine")
    assert not await in_list(queue, "queued", aborted)


async def test_a_job_whose_worker_died_before_marking_it_is_handed_on(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await taken(queue)
    assert await sweep(queue) == []  # first seen: may be a live worker between its steps
    monkeypatch.setattr(sweeping, "UNCLAIMED_GRACE_SECONDS", 0.0)
    assert await sweep(queue) == [job.id]
    record = await stored(queue, job)
    assert (record.status, record.error) == (Status.QUEUED, queue.swept_error_message)
    assert record.attempts == 1  # counted, though its worker never marked it
    assert await in_list(queue, "queued", job)
    assert not await in_list(queue, "active", job)


async def test_a_job_that_kills_its_workers_at_once_runs_out_of_retries(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeping, "UNCLAIMED_GRACE_SECONDS", 0.0)
    job = await taken(queue, retries=2)
    assert await sweep(queue) == [job.id]  # its first worker died: run it again
    assert (await stored(queue, job)).status == Status.QUEUED
    assert await queue.dequeue() is not None  # and so did the second
    assert await sweep(queue) == [job.id]
    record = await stored(queue, job)
    assert (record.status, record.attempts) == (Status.ABORTED, 2)
    assert not await in_list(queue, "queued", job)


async def test_a_job_whose_worker_stopped_touching_it_is_handed_on(queue: TaskQueue) -> None:
    job = await claimed(queue, touched_ago_ms=10_000)
    assert await sweep(queue) == [job.id]
    assert (await stored(queue, job)).status == Status.QUEUED
    assert await in_list(queue, "queued", job)


async def test_a_job_with_no_retries_left_is_aborted_for_good(queue: TaskQueue) -> None:
    job = await claimed(queue, touched_ago_ms=10_000)
    job.retries = job.attempts
    await queue.redis.set(job.id, queue.serialize(job))
    assert await sweep(queue) == [job.id]
    assert (await stored(queue, job)).status == Status.ABORTED
    assert not await in_list(queue, "queued", job)


async def test_a_job_its_worker_completes_during_the_sweep_is_not_run_again(
    queue: TaskQueue,
) -> None:
    """SAQ's sweep re-queued it after its worker stored the answer: the task ran twice."""
    job = await claimed(queue, touched_ago_ms=10_000)  # the worker's loop was blocked, say
    async with notices(queue, job) as pubsub:  # the sweep announces its abort there
        sweeping_task = asyncio.create_task(sweeper(queue).sweep(lock=60, abort=5.0))
        notice = await pubsub.get_message(timeout=5)
        assert notice is not None
        assert notice["data"] == b"aborting"
    assert (await stored(queue, job)).status == Status.ABORTING
    await queue.finish(job, Status.COMPLETE, result={"ok": True, "output": {}})  # it wakes up
    assert await asyncio.wait_for(sweeping_task, 5) == [job.id]
    record = await stored(queue, job)
    assert (record.status, record.result) == (Status.COMPLETE, {"ok": True, "output": {}})
    assert not await in_list(queue, "queued", job)


async def test_a_job_being_aborted_is_left_to_its_aborter(queue: TaskQueue) -> None:
    """The engine aborts a job whose task was cancelled; the sweep must not re-queue it."""
    job = await claimed(queue)
    job.status, job.error = Status.ABORTING, "cancelled by the engine"
    await queue.redis.set(job.id, queue.serialize(job))  # abort's first step, not yet its second
    assert await sweep(queue) == []
    assert (await stored(queue, job)).status == Status.ABORTING
    # Its worker is gone too: the sweep ends it, keeping why, and does not run it again.
    job.touched = now() - 10_000
    await queue.redis.set(job.id, queue.serialize(job))
    assert await sweep(queue) == [job.id]
    record = await stored(queue, job)
    assert (record.status, record.error) == (Status.ABORTED, "cancelled by the engine")
    assert not await in_list(queue, "queued", job)


async def test_an_ended_job_left_in_the_active_list_keeps_its_answer(queue: TaskQueue) -> None:
    job = await claimed(queue)
    await queue.finish(job, Status.COMPLETE, result={"ok": True, "output": {}})
    await queue.redis.rpush(queue.namespace("active"), job.id)
    assert await sweep(queue) == []
    assert (await stored(queue, job)).status == Status.COMPLETE
    assert not await in_list(queue, "active", job)


async def test_only_a_jobs_end_is_announced_and_after_it_is_stored(queue: TaskQueue) -> None:
    job = await taken(queue)
    async with notices(queue, job) as pubsub:
        job.attempts += 1
        job.started = now()
        await queue.update(job, status=Status.ACTIVE)  # started
        await queue.update(job)  # a heartbeat's touch
        await queue.finish(job, Status.COMPLETE, result={"ok": True, "output": {}})
        message = await pubsub.get_message(timeout=5)
        assert message is not None
        assert (message["type"], message["data"]) == ("message", b"complete")
        assert (await stored(queue, job)).status == Status.COMPLETE
        assert await pubsub.get_message(timeout=0.2) is None  # nothing else came


async def test_an_aborted_job_is_not_enqueued(queue: TaskQueue) -> None:
    """What the engine relies on when a task is cancelled while its job is being enqueued."""
    job = Job("run_task", queue=queue)
    await queue.abort(job, "cancelled by the engine")
    assert await queue.enqueue(job) is None
    assert await queue.redis.lrange(queue.namespace("queued"), 0, -1) == []


async def test_jobs_enqueued_in_one_turn_go_in_one_call_and_each_is_checked(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    enqueue_many = queue._enqueue_many

    async def counting(*, keys: list[str], args: list[Any], client: Any) -> Any:
        calls.append(len(args) // 2)
        return await enqueue_many(keys=keys, args=args, client=client)

    monkeypatch.setattr(queue, "_enqueue_many", counting)
    waiting = Job("run_task", queue=queue, key="waiting")
    assert await queue.enqueue(waiting) is not None
    aborted = Job("run_task", queue=queue, key="aborted")
    await queue.abort(aborted, "cancelled by the engine")
    fresh = [Job("run_task", queue=queue, key=f"fresh-{n}") for n in range(3)]
    again = Job("run_task", queue=queue, key="waiting")  # already waiting: not a second time
    answers = await asyncio.gather(
        queue.enqueue(fresh[0]), queue.enqueue(aborted), queue.enqueue(fresh[1]),
        queue.enqueue(again), queue.enqueue(fresh[2]),
    )  # fmt: skip
    assert [answer is not None for answer in answers] == [True, False, True, False, True]
    assert calls == [1, 5]
    queued = await queue.redis.lrange(queue.namespace("queued"), 0, -1)
    assert queued == [job.id.encode() for job in (waiting, *fresh)]  # in the order asked
    for job in fresh:
        assert (await stored(queue, job)).status == Status.QUEUED
    assert (await stored(queue, aborted)).status != Status.QUEUED


async def test_a_job_whose_caller_gives_up_is_withdrawn_from_its_call(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call held up (Redis unreachable, redis-py retrying) must not land a job after its
    caller gave up and aborted it: the call is stopped, and its other jobs go again."""
    calls: list[list[str]] = []
    called = asyncio.Event()
    enqueue_many = queue._enqueue_many

    async def slow_first(*, keys: list[str], args: list[Any], client: Any) -> Any:
        calls.append(keys[2::2])
        called.set()
        if len(calls) == 1:
            await asyncio.sleep(30)  # stands in for redis-py's retries
        return await enqueue_many(keys=keys, args=args, client=client)

    monkeypatch.setattr(queue, "_enqueue_many", slow_first)
    leaving, staying = Job("run_task", queue=queue), Job("run_task", queue=queue)
    gives_up = asyncio.create_task(queue.enqueue(leaving))
    waits = asyncio.create_task(queue.enqueue(staying))
    await asyncio.wait_for(called.wait(), 5)
    gives_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gives_up
    assert await asyncio.wait_for(waits, 5) is not None
    assert calls == [[leaving.id, staying.id], [staying.id]]
    assert await queue.redis.lrange(queue.namespace("queued"), 0, -1) == [staying.id.encode()]
    assert await queue.redis.get(leaving.id) is None


async def test_a_sweep_acting_on_an_old_snapshot_changes_nothing(queue: TaskQueue) -> None:
    """A sweep decides from a snapshot, then acts seconds later (it waits on earlier jobs). A
    job whose (slow, not dead) worker completed it meanwhile keeps its answer."""
    job = await claimed(queue, touched_ago_ms=10_000)
    seen = await raw_record(queue, job)
    await queue.finish(job, Status.COMPLETE, result={"ok": True, "output": {}})
    assert not await queue._hand_on(await stored(queue, job), seen, ABORT_WAIT)
    record = await stored(queue, job)
    assert (record.status, record.result) == (Status.COMPLETE, {"ok": True, "output": {}})
    assert not await in_list(queue, "queued", job)


async def test_two_sweeps_of_one_dead_job_requeue_it_once(queue: TaskQueue) -> None:
    """Sweeps outlive their lock (they wait for aborts): two may take the same job."""
    job = await claimed(queue, touched_ago_ms=10_000)
    seen = await raw_record(queue, job)
    other = TaskQueue(queue.redis, name=queue.name)  # another worker process's queue
    snapshot = await stored(queue, job)
    handed = await asyncio.gather(
        queue._hand_on(snapshot, seen, ABORT_WAIT), other._hand_on(snapshot, seen, ABORT_WAIT)
    )
    assert sorted(handed) == [False, True]
    queued = await queue.redis.lrange(queue.namespace("queued"), 0, -1)
    assert queued == [job.id.encode()]
    assert (await stored(queue, job)).status == Status.QUEUED
