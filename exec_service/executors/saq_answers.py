"""Hears when SAQ jobs end, for every job this process waits on, over one Redis subscription.

SAQ's own wait (`Job.refresh(until_complete=...)`) subscribes per wait, and when its last
waiter leaves it drops its shared pattern subscription; the next wait subscribes afresh, in a
background task, so a job that ends before that subscription is in force is heard only by
polling. A run of sequential tasks paid about 10 ms a task for it, and under load every wait
went through several rounds of poll, read and subscribe. Here the pattern is subscribed once,
confirmed before any job is enqueued, and kept; a waiter registers before its job is
enqueued, so no end goes unheard; and the records of jobs that end in the same moment are read
back in one MGET.

Delivery over pub/sub can still be lost (Redis restarted, the connection dropped): every
waiter also reads its job's record after `CHECK_SECONDS` of silence, and everyone re-reads
when the subscription breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from redis.exceptions import RedisError
from saq import Job
from saq.job import TERMINAL_STATUSES, Status
from saq.queue.redis import RedisQueue
from saq.utils import now as saq_now

from exec_service.executors import TaskInterrupted
from models.outages import Outage

log = logging.getLogger(__name__)

# How long a waiter trusts the subscription before it reads its job's record anyway.
CHECK_SECONDS = 2.0
# How long start() waits for Redis to confirm the subscription.
CONFIRM_SECONDS = 5.0
RECONNECT_DELAY_SECONDS = 0.5
# How long reading back the records of ended jobs may take.
READ_SECONDS = 10.0
# A job running untouched, or aborting, this long is lost (see JobAnswers._stalled).
STALLED_SECONDS = 30.0
# How long a job SAQ's sweep aborted may take to be back in the queue (the sweep waits up to
# 5 s for the abort to land before it requeues the job).
SWEEP_GRACE_SECONDS = 15.0


def glob_escape(text: str) -> str:
    """`text` matched literally in a Redis glob pattern (PSUBSCRIBE, SCAN MATCH)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


_TERMINAL = frozenset(status.value.encode() for status in TERMINAL_STATUSES)


class JobAnswers:
    """Waits for jobs of one SAQ queue to end, and reads back how they ended."""

    def __init__(self, queue: RedisQueue) -> None:
        self._queue = queue
        self._pubsub = queue.redis.pubsub()
        self._waiters: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._confirmed = asyncio.Event()
        self._pending: list[tuple[str, asyncio.Future[Job | None]]] = []
        self._reads: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly
        self.outage = Outage(log, "Redis (SAQ job answers)")

    async def start(self) -> None:
        # SAQ publishes a job's status on a channel named after its id; ids of this queue share
        # the prefix `job_id("")`. Glob characters in it (from our key prefix) are escaped.
        pattern = glob_escape(self._queue.job_id("")) + "*"
        await self._pubsub.psubscribe(pattern)
        self._reader = asyncio.create_task(self._read(), name="saq-job-answers")
        await asyncio.wait_for(self._confirmed.wait(), CONFIRM_SECONDS)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                self.outage.answered()
                if message is not None:
                    self._handle(message)
            except (RedisError, OSError) as exc:
                self.outage.failed(exc, "waiting tasks re-read their jobs once it is back")
                self._wake_all()
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
            except Exception:
                # Never let the reader die: its waiters would fall back to reading every 2 s.
                log.exception("unexpected message while waiting for SAQ jobs")
                self._wake_all()

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "pmessage":
            if message["data"] in _TERMINAL:
                waiter = self._waiters.get(message["channel"].decode())
                if waiter is not None:
                    waiter.set()
        elif message["type"] == "psubscribe":
            self._confirmed.set()

    def _wake_all(self) -> None:
        for waiter in self._waiters.values():
            waiter.set()

    @contextlib.contextmanager
    def expect(self, job: Job) -> Iterator[asyncio.Event]:
        """An event set when `job` may have ended. Enter before enqueueing the job."""
        waiter = asyncio.Event()
        self._waiters[job.id] = waiter
        try:
            yield waiter
        finally:
            del self._waiters[job.id]

    async def wait(self, job: Job, ended: asyncio.Event) -> Job:
        """The job's record once it has ended (`ended` from `expect`)."""
        loop = asyncio.get_running_loop()
        swept_at: float | None = None
        aborting_since: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_SECONDS):
                    await ended.wait()
            ended.clear()
            try:
                stored = await self._fetch(job.id)
            except (RedisError, OSError):
                # Redis is away for a moment (restarting, a dropped connection): the job may
                # still end well. Look again once it is back; a task's timeout bounds the wait.
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                ended.set()  # read again at once: its notice may have come and gone
                continue
            if stored is None:
                # Redis lost it (flushed, restarted without persistence): run the task again.
                raise TaskInterrupted(f"SAQ job {job.key} has no record any more")
            if stored.status not in TERMINAL_STATUSES:
                aborting_since = (
                    (aborting_since or loop.time()) if stored.status == Status.ABORTING else None
                )
                if self._stalled(stored, aborting_since, loop.time()):
                    # SAQ lost it: its worker died and no sweep handed it on (SAQ issues #124
                    # and #277 are two ways in). Stop it where it may still run, and run the
                    # task again: at least once, rather than never.
                    log.warning(
                        "SAQ job %s stalled (%s); its task runs again", job.key, stored.status
                    )
                    with contextlib.suppress(Exception):
                        await self._queue.abort(stored, "stalled: given up by the engine")
                    raise TaskInterrupted(
                        f"SAQ job {job.key} stalled ({stored.status}): its worker is gone"
                    )
                continue
            if self._requeued_by_sweep(stored):
                # SAQ's sweep aborts a job it takes for stuck, then puts it back in the queue.
                # If its worker was alive after all (its loop blocked past the heartbeat), that
                # worker records "aborted" first: not the job's end, or the engine would run
                # the task again beside the requeued job. Past the grace, it is the end.
                swept_at = loop.time() if swept_at is None else swept_at
                if loop.time() - swept_at < SWEEP_GRACE_SECONDS:
                    continue
            return stored

    @staticmethod
    def _stalled(stored: Job, aborting_since: float | None, moment: float) -> bool:
        """Running but untouched, or aborting, for STALLED_SECONDS: a live worker touches its
        jobs every second, and a sweep settles a dead worker's job within about 10 s."""
        if stored.status == Status.ACTIVE:
            return saq_now() - stored.touched > STALLED_SECONDS * 1000
        if aborting_since is not None:
            return moment - aborting_since > STALLED_SECONDS
        return False

    def _requeued_by_sweep(self, stored: Job) -> bool:
        return (
            stored.status == Status.ABORTED
            and stored.error == self._queue.swept_error_message
            and stored.retryable
        )

    async def _fetch(self, job_id: str) -> Job | None:
        """The record of a job; reads asked for in the same turn of the loop share one MGET."""
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((job_id, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._read_records(batch))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_records(self, batch: list[tuple[str, asyncio.Future[Job | None]]]) -> None:
        try:
            # Bounded: a Redis that stopped answering fails the read (TimeoutError is an
            # OSError), and the waiters read again once it is back.
            async with asyncio.timeout(READ_SECONDS):
                records = await self._queue.redis.mget([job_id for job_id, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), record in zip(batch, records, strict=True):
            if not future.done():
                try:
                    future.set_result(self._queue.deserialize(record))
                except Exception as exc:  # a record SAQ cannot read
                    future.set_exception(exc)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        self._wake_all()


__all__ = ["JobAnswers"]
