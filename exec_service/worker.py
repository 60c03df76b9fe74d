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
from typing import Any

from redis.asyncio import Redis
from saq import Queue, Worker
from saq.queue.redis import RedisQueue
from saq.types import Context, PartialTimersDict
from saq.utils import now

from exec_service import actions
from exec_service.actions.builtin import describe
from exec_service.types import TaskRequest

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
    try:
        action = actions.get(request["action"])
        output = await action(dict(request["parameters"]))
    except asyncio.CancelledError:
        raise  # aborted by the engine (cancel, timeout): SAQ records it
    except Exception as exc:
        return {"ok": False, "error": describe(exc)}
    return {"ok": True, "output": output}


async def touch_running_jobs(worker: Worker[Context]) -> None:
    """Keep the heartbeat of every job this worker runs, every TOUCH_SECONDS: a job whose
    worker died stops being touched, and a sweep hands it to another worker. One loop per
    worker rather than one timer per job: most tasks end long before their first touch."""
    while True:
        await asyncio.sleep(TOUCH_SECONDS)
        due = now() - TOUCH_SECONDS * 1000
        stale = [job for job in list(worker.job_task_contexts) if job.touched <= due]
        # A failed touch is tried again next round; a job missing several is swept.
        await asyncio.gather(*(job.update() for job in stale), return_exceptions=True)


# Each worker's touch loop, by worker id (SAQ's context is a closed TypedDict).
_touchers: dict[str, asyncio.Task[None]] = {}


async def _start_touching(ctx: Context) -> None:
    worker = ctx["worker"]
    _touchers[str(worker.id)] = asyncio.create_task(touch_running_jobs(worker), name="saq-touch")


async def _stop_touching(ctx: Context) -> None:
    toucher = _touchers.pop(str(ctx["worker"].id), None)
    if toucher is not None:
        toucher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await toucher


def queue_name(prefix: str) -> str:
    return f"{prefix}tasks"


def make_queue(redis_url: str, prefix: str) -> RedisQueue:
    # redis-py's default pool refuses connections past its size instead of waiting; hundreds
    # of tasks in flight each hold one for a moment.
    redis = Redis.from_url(redis_url, max_connections=REDIS_CONNECTIONS)
    return RedisQueue(redis, name=queue_name(prefix))


class EmbeddedWorker(Worker[Context]):
    """A worker inside another server's process: the server owns the signals."""

    SIGNALS: list[signal.Signals] = []


def make_worker(queue: Queue, concurrency: int, embedded: bool = False) -> Worker[Context]:
    kind = EmbeddedWorker if embedded else Worker[Context]
    return kind(
        queue,
        functions=[(JOB_FUNCTION, run_task)],
        concurrency=concurrency,
        timers=TIMERS,
        startup=_start_touching,
        shutdown=_stop_touching,
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
