"""SAQ's Redis queue as the execution plane uses it: a sweep that hands on only the jobs whose
worker is gone, and fewer round trips per job.

Round trips: SAQ announces every status change of a job on the job's channel, after the write.
Only ends are listened for (the engine's JobAnswers, SAQ's own waits), so the other notices
(started, touched by a heartbeat, re-queued) are not sent: each reached every engine for
nothing. The notice of an end goes in the same transaction as the end itself.

SAQ's own sweep (0.26) can run a task twice (SAQ issues #124 and #277, open):
- It takes every job in the active list whose record does not say "active" for stuck. But a
  worker moves a job into that list first and marks it active a round trip later: a sweep in
  between aborts a job that is about to run.
- After aborting a job it re-queues it whatever happened meanwhile: also when the job's
  (live) worker completed it, and when the engine had aborted it on purpose.

This sweep differs in just those points: a job found in the active list still marked queued is
swept only when a later sweep of this process finds it unchanged UNCLAIMED_GRACE_SECONDS on
(its worker died between the two steps); a job being aborted is left to whoever aborts it
unless its worker is gone too; and after the abort, a job that ended on its own is left as it
ended. Everything else is SAQ's: the same lock, the same abort, the same retry.
"""

from __future__ import annotations

import contextlib
import logging
import time

from saq.job import TERMINAL_STATUSES, Job, Status
from saq.queue.redis import RedisQueue

log = logging.getLogger(__name__)

# How long a job may sit in the active list still marked queued before it counts as lost.
UNCLAIMED_GRACE_SECONDS = 10.0

# As SAQ's: take the sweep lock for `lock` seconds, then read every active job's record.
_CANDIDATES = """
local id_jobs = {}
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SETEX', KEYS[1], ARGV[1], 1)
    for i, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
        id_jobs[i] = {v, redis.call('GET', v)}
    end
end
return id_jobs
"""


class TaskQueue(RedisQueue):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._candidates = self.redis.register_script(_CANDIDATES)
        # Jobs seen in the active list still marked queued: id -> (what they looked like, when).
        self._unclaimed: dict[bytes, tuple[tuple[int, int], float]] = {}

    async def notify(self, job: Job) -> None:
        if job.status in TERMINAL_STATUSES:
            await super().notify(job)

    async def _finish(
        self,
        job: Job,
        status: Status,
        *,
        result: object = None,
        error: str | None = None,
    ) -> None:
        """SAQ's, with the notice in the transaction: one round trip instead of two."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self.namespace("active"), 1, job.id)
            pipe.zrem(self.namespace("incomplete"), job.id)
            if job.ttl > 0:
                pipe.setex(job.id, job.ttl, self.serialize(job))
            elif job.ttl == 0:
                pipe.set(job.id, self.serialize(job))
            else:
                pipe.delete(job.id)
            pipe.publish(job.id, job.status)
            await pipe.execute()

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        id_jobs = await self._candidates(
            keys=[self.namespace("sweep"), self.namespace("active")], args=[lock], client=self.redis
        )
        if not id_jobs:
            return []  # another worker holds the sweep lock, or nothing is active
        unclaimed: dict[bytes, tuple[tuple[int, int], float]] = {}
        swept: list[bytes] = []
        for job_id, job_bytes in id_jobs:
            job = self.deserialize(job_bytes)
            if job is None:
                await self._forget(job_id)
                swept.append(job_id)
            elif job.status in TERMINAL_STATUSES:
                # Ended, and only left in the list: aborting it would overwrite its answer.
                await self.redis.lrem(self.namespace("active"), 0, job_id.decode())
            elif job.status == Status.QUEUED:
                if self._lost_before_claim(job_id, job, unclaimed):
                    await self._hand_on(job, abort)
                    swept.append(job_id)
            elif job.status == Status.ABORTING:
                # Someone is aborting it (the engine, or another sweep between its two steps);
                # only if its worker is gone too does it fall to the sweep, to end it.
                if job.stuck:
                    await self.finish(job, Status.ABORTED, error=job.error)
                    swept.append(job_id)
            elif job.status != Status.ACTIVE or job.stuck:
                await self._hand_on(job, abort)
                swept.append(job_id)
        self._unclaimed = unclaimed
        return [job_id.decode() for job_id in swept]

    def _lost_before_claim(
        self,
        job_id: bytes,
        job: Job,
        unclaimed: dict[bytes, tuple[tuple[int, int], float]],
    ) -> bool:
        """A worker took the job but never marked it active: true once it has stayed so for
        UNCLAIMED_GRACE_SECONDS (a live worker marks it within a round trip)."""
        looks = (job.attempts, job.touched)
        seen = self._unclaimed.get(job_id)
        first_seen = seen[1] if seen is not None and seen[0] == looks else time.monotonic()
        if time.monotonic() - first_seen < UNCLAIMED_GRACE_SECONDS:
            unclaimed[job_id] = (looks, first_seen)
            return False
        return True

    async def _hand_on(self, job: Job, abort: float) -> None:
        """Abort the job where it may still run, then re-queue it unless it ended meanwhile."""
        log.info("Sweeping job %s", job.info(log.isEnabledFor(logging.DEBUG)))
        await self.abort(job, error=self.swept_error_message)
        with contextlib.suppress(TimeoutError):
            await job.refresh(abort)
        if job.status in (Status.COMPLETE, Status.FAILED):
            return  # its worker was alive and stored an answer: nothing to hand on
        if job.status == Status.ABORTED and job.error != self.swept_error_message:
            return  # aborted on purpose (by the engine), not by this sweep
        if job.status in (Status.ACTIVE, Status.QUEUED):
            # Its worker marked it again after the abort (a touch racing it): it is alive.
            # Not in the active list any more; should that worker die, the engine's watchdog
            # (an untouched active job) runs the task again.
            return
        if job.retryable:
            await self.retry(job, error=self.swept_error_message)
        elif job.status != Status.ABORTED:
            await self.finish(job, Status.ABORTED, error=self.swept_error_message)

    async def _forget(self, job_id: bytes) -> None:
        """A job in the active list with no record: drop it from the lists, as SAQ does."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self.namespace("active"), 0, job_id.decode())
            pipe.zrem(self.namespace("incomplete"), job_id)
            await pipe.execute()
        log.info("Sweeping missing job %s", job_id)
