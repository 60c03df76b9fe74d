"""Runs each task attempt as a SAQ job on Redis, picked up by any `workflow worker`.

The engine stays in the execution service: it enqueues a job, waits for its answer, and on
cancellation (user cancel, timeout, a sibling's failure) aborts the job. A job SAQ gave up on
without an answer (its workers kept dying, or it was swept) is an interruption, not a failure
of the task: the engine runs the task again without counting it against `max_attempts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
from typing import Any

from redis.exceptions import RedisError
from saq import Job, Worker
from saq.job import Status
from saq.types import Context

from exec_service.actions.builtin import ActionError, failed
from exec_service.executors import TaskInterrupted
from exec_service.executors.saq_answers import JobAnswers
from exec_service.saq_queue import TaskQueue
from exec_service.types import TaskRequest
from exec_service.worker import (
    HEARTBEAT_SECONDS,
    JOB_FUNCTION,
    make_queue,
    make_worker,
)
from models import tracing
from models.outages import Outage

log = logging.getLogger(__name__)

# Times SAQ re-queues a job whose worker died before the engine hears of it as an interruption.
SWEEP_RETRIES = 3
# Seconds a finished job's record stays in Redis.
JOB_TTL_SECONDS = 600
# How long aborting a cancelled task's job may take.
ABORT_SECONDS = 5.0
# How long the abort marker of a cancelled task's job lives: longer than an enqueue may still
# land after its caller was cancelled (TaskQueue's ENQUEUE_SECONDS), so that one is refused.
ABORT_MARKER_SECONDS = 60
# While Redis is away, an enqueue is tried again after this long, doubling up to the cap.
ENQUEUE_RETRY_FIRST_SECONDS = 0.1
ENQUEUE_RETRY_MAX_SECONDS = 2.0


class SaqExecutor:
    name = "saq"

    def __init__(self, redis_url: str, prefix: str, embedded_workers: int | None = None) -> None:
        self.queue: TaskQueue = make_queue(redis_url, prefix)
        self._answers = JobAnswers(self.queue)
        self._embedded = embedded_workers
        self._worker: Worker[Context] | None = None
        self._worker_task: asyncio.Task[None] | None = None
        # Job keys: this executor's random part, then a count.
        self._key_suffix = secrets.token_hex(4) + "."
        self._jobs = itertools.count()
        # One warning per Redis outage, however many enqueues wait in it.
        self.outage = Outage(log, "Redis (SAQ queue)")

    async def start(self) -> None:
        await self.queue.connect()
        await self._answers.start()
        if self._embedded:
            self._worker = make_worker(self.queue, self._embedded, embedded=True)
            self._worker_task = asyncio.create_task(self._worker.start(), name="saq-worker")

    async def run(self, request: TaskRequest) -> dict[str, Any]:
        timeout = request["timeout_seconds"]
        job = Job(
            JOB_FUNCTION,
            queue=self.queue,
            # Says which attempt it is, and is unique without a syscall per job (SAQ's default
            # key, a uuid1, costs three; a random suffix per job costs one).
            key=f"{request['run_id']}.{request['attempt']}.{self._key_suffix}{next(self._jobs)}",
            # With the attempt's trace context when tracing is on (the worker's span joins it).
            kwargs={"request": tracing.carry(request) if tracing.TRACER else dict(request)},
            # The engine enforces the task's timeout; SAQ's is a backstop a little later.
            timeout=math.ceil(timeout) + 5 if timeout else 0,
            heartbeat=HEARTBEAT_SECONDS,
            retries=SWEEP_RETRIES,
            ttl=JOB_TTL_SECONDS,
        )
        with self._answers.expect(job) as ended:
            try:
                await self._enqueue(job)
                job = await self._answers.wait(job, ended)
            except asyncio.CancelledError:
                # Also while it is being enqueued: an abort first leaves a marker that makes
                # the enqueue refuse the job, an abort after it stops the job. Bounded, so
                # that a Redis that stopped answering cannot hold up a cancel or a shutdown;
                # and the record it writes expires, in case the job was never enqueued.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(ABORT_SECONDS):
                        await self.queue.abort(
                            job, "cancelled by the engine", ttl=ABORT_MARKER_SECONDS
                        )
                        await self.queue.redis.expire(job.id, JOB_TTL_SECONDS)
                raise
        if job.status == Status.COMPLETE:
            answer = job.result or {}
            if answer.get("ok"):
                output: dict[str, Any] = answer["output"]
                return output
            raise failed(answer)
        if job.status == Status.FAILED:
            # Our job function answers failures itself: this is SAQ failing to store the answer,
            # which is what an output that is not JSON does.
            raise ActionError(f"the worker could not hand the answer back: {job.error}")
        raise TaskInterrupted(f"SAQ gave the job up: {job.error}")

    async def _enqueue(self, job: Job) -> None:
        """Enqueue the job, however long Redis is away: a queue that cannot be reached is the
        platform's failure, not the task's, so it costs neither an attempt nor an
        interruption (the task's timeout still bounds the wait). A call that failed may have
        landed all the same (the answer was lost): the job's record says so, and then it is
        not enqueued twice. The same job, under the same key, goes each time."""
        delay = ENQUEUE_RETRY_FIRST_SECONDS
        tried = False
        while True:
            try:
                if not tried or not await self.queue.redis.exists(job.id):
                    tried = True
                    await self.queue.enqueue(job)
                self.outage.answered()
                return
            except (RedisError, OSError) as exc:
                self.outage.failed(exc, "tasks wait to be enqueued until it is back")
            await asyncio.sleep(delay)
            delay = min(delay * 2, ENQUEUE_RETRY_MAX_SECONDS)

    async def close(self) -> None:
        if self._worker is not None:
            await self._worker.stop()
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        await self._answers.close()
        await self.queue.disconnect()


__all__ = ["SaqExecutor"]
