"""SAQ workers: where tasks run when the executor is `saq`. `workflow worker` starts one.

A worker runs actions only; it needs Redis, not the database. The engine (in the execution
service) owns every state change: a worker's answer travels back through the SAQ job.
Action failures come back as answers (so that the engine's retries and `max_attempts` apply);
SAQ's own retries are kept for jobs whose worker died (their heartbeat stopped and another
worker's sweep picked them up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from redis.exceptions import RedisError
from saq import Job, Worker
from saq.types import Context, PartialTimersDict

from exec_service import actions
from exec_service.actions.builtin import failure
from exec_service.engine_metrics import action_label
from exec_service.redis_client import redis_client
from exec_service.saq_queue import IN_JOB_SLOT, TaskQueue
from exec_service.types import TaskRequest
from models import tracing
from models.logs import EXECUTION_ID, TASK_ID
from models.metrics import WORKER_DURATION, WORKER_TASKS

log = logging.getLogger(__name__)

JOB_FUNCTION = "run_task"
# A job whose worker has not touched it for this many seconds is stuck (its worker died)...
HEARTBEAT_SECONDS = 5
# ...and it touches it this often while the action runs.
TOUCH_SECONDS = 1.0
# How often each worker sweeps stuck jobs back into the queue.
SWEEP_SECONDS = 2
DEFAULT_CONCURRENCY = 10
REDIS_CONNECTIONS = 1024
TIMERS: PartialTimersDict = {"sweep": SWEEP_SECONDS, "abort": 1, "schedule": 1, "worker_info": 10}


async def run_task(ctx: Context, *, request: TaskRequest) -> dict[str, Any]:
    """Run one attempt of a task; answer {"ok": True, "output": ...} or {"ok": False, ...}."""
    if tracing.TRACER is None:
        return await _run_task(ctx, request)
    # A child of the engine's attempt span, whose context the request carries.
    with tracing.task_run_span(request, "saq") as span:
        answer = await _run_task(ctx, request)
        tracing.answered(span, answer)
        return answer


async def _run_task(ctx: Context, request: TaskRequest) -> dict[str, Any]:
    # Each job runs in a task of its own: these hold for its log lines only.
    EXECUTION_ID.set(request["execution_id"])
    TASK_ID.set(request["task_id"])
    heartbeat = Heartbeat(ctx["job"])
    started, outcome = time.perf_counter(), "cancelled"
    try:
        action = actions.get(request["action"])
        output = await action(dict(request["parameters"]))
        outcome = "completed"
    except asyncio.CancelledError:
        raise  # aborted by the engine (cancel, timeout): SAQ records it
    except Exception as exc:
        outcome = "failed"
        return failure(exc)
    finally:
        await heartbeat.stop()
        # What this worker did (the engine counts attempts as it saw them, in its process).
        label = action_label(request["action"])
        WORKER_TASKS.labels(label, outcome).inc()
        WORKER_DURATION.labels(label).observe(time.perf_counter() - started)
    return {"ok": True, "output": output}


class Heartbeat:
    """Touches a running job every TOUCH_SECONDS, so that a job whose worker died stops being
    touched and a sweep hands it to another worker.

    It starts only once the job has run TOUCH_SECONDS (most tasks end sooner, and cost a timer,
    not a task). It is stopped, and a touch in flight allowed to finish, before the job
    function returns: a touch rewrites the job's whole record, and one landing after SAQ
    stored the job's end would put the job back to "active" with no answer, for good.
    """

    def __init__(self, job: Job) -> None:
        self._job = job
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(TOUCH_SECONDS, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._touch(), name=f"heartbeat-{self._job.key}")

    async def _touch(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):  # a missed touch is made up next round
                await self._job.update()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), TOUCH_SECONDS)

    async def stop(self) -> None:
        self._timer.cancel()
        self._stopping.set()
        if self._task is not None:
            # Shielded: even if this job is being cancelled, the touch finishes first.
            await asyncio.shield(self._task)


def queue_name(prefix: str) -> str:
    return f"{prefix}tasks"


def make_queue(redis_url: str, prefix: str) -> TaskQueue:
    # redis-py's default pool refuses connections past its size instead of waiting; hundreds
    # of tasks in flight each hold one for a moment.
    redis = redis_client(redis_url, max_connections=REDIS_CONNECTIONS)
    return TaskQueue(redis, name=queue_name(prefix))


class TaskWorker(Worker[Context]):
    """SAQ's worker on a TaskQueue, whose job slots take their next job as they finish one (see
    TaskQueue._finish), and which gives back the jobs so taken when it stops."""

    def __init__(self, queue: TaskQueue, **settings: Any) -> None:
        super().__init__(queue, **settings)
        self.tasks_queue = queue  # `queue` as SAQ types it is any queue

    async def process(self) -> bool:
        IN_JOB_SLOT.set(True)  # this slot's task only: each runs in a context of its own
        try:
            return await super().process()
        except (RedisError, OSError) as exc:
            # Redis went away as a job ended: its end could not be stored (SAQ's sweep, or the
            # engine's wait, runs it again). Counted in the outage, not raised into a task
            # nobody awaits.
            self.tasks_queue.outage.failed(exc, "job ends cannot be stored")
            return False

    async def stop(self) -> None:
        self.tasks_queue.worker_stopping = True
        if self.job_task_contexts:
            log.info(
                "stopping: %d jobs in flight are cut short and run again",
                len(self.job_task_contexts),
            )
        await super().stop()
        await self.tasks_queue.give_back()


class EmbeddedWorker(TaskWorker):
    """A worker inside another server's process: the server owns the signals."""

    SIGNALS: list[signal.Signals] = []


class _QuietDuringOutages(logging.Filter):
    """Drops SAQ's "Error processing job" records whose cause is Redis being away: one per
    job during an outage, each with its traceback. The queue's outage warns once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, RedisError | OSError)


class _QuietOnStop(logging.Filter):
    """Drops SAQ's "Some tasks did not finish within the shutdown grace period" on every stop.
    Its worker waits for its tasks for a grace period, which we leave at 0: a job cut short is
    handed back and run again (TaskWorker.stop). But its job slots and timers never finish by
    themselves, so even an idle worker "did not finish" and said so on each normal stop; SAQ
    has no switch for it. TaskWorker.stop says instead how many jobs were in flight, if any.
    (SAQ's warning that tasks did not finish their cancellation stays: that one is news.)"""

    MESSAGE = "Some tasks did not finish within the shutdown grace period, requesting cancellation"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.MESSAGE


_QUIET = _QuietDuringOutages()
_QUIET_ON_STOP = _QuietOnStop()


def make_worker(queue: TaskQueue, concurrency: int, embedded: bool = False) -> Worker[Context]:
    saq_log = logging.getLogger("saq")
    for quiet in (_QUIET, _QUIET_ON_STOP):
        if quiet not in saq_log.filters:
            saq_log.addFilter(quiet)
    kind = EmbeddedWorker if embedded else TaskWorker
    return kind(
        queue,
        functions=[(JOB_FUNCTION, run_task)],
        concurrency=concurrency,
        timers=TIMERS,
    )


async def run_worker(redis_url: str, prefix: str, concurrency: int) -> None:
    """`workflow worker`: process jobs until SIGTERM or SIGINT."""
    queue = make_queue(redis_url, prefix)
    await queue.connect()
    worker = make_worker(queue, concurrency)
    log.info("SAQ worker on queue %s, concurrency %d", queue_name(prefix), concurrency)
    try:
        await worker.start()
    finally:
        await queue.disconnect()
