"""SAQ's Redis queue as the execution plane uses it: a sweep that hands on only the jobs whose
worker is gone, and fewer round trips per job.

Round trips: a worker of SAQ's makes four per job (take it, read it, mark it active, store
its end); here it makes one while jobs are waiting, three when it waits for them. Storing a
job's end takes the slot's next job in the same script when others wait (`_finish`), and
taking a job reads it. Marking it active waits for its first heartbeat, a second in: most
tasks end sooner, and their record goes from queued to ended (see `_update`).
And SAQ announces every status change of a job on the job's channel, after the write. Only
ends are listened for (the engine's JobAnswers, SAQ's own waits), so the other notices
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
(its worker died before marking it: our workers mark a job at its first heartbeat, a second
in, see `_update`); a job being aborted is left to whoever aborts it
unless its worker is gone too; and after the abort, a job that ended on its own is left as it
ended. And every write of the sweep is a compare-and-set on the record it decided from: SAQ's
are blind, so a sweep acting on a snapshot a few seconds old (its waits run past its lock, and
a second sweep may take the same jobs) overwrote a job completed meanwhile, and two sweeps
re-queued the same job twice. The candidates of one sweep are handled together, so a sweep
lasts one abort wait, not one per job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from saq.job import TERMINAL_STATUSES, Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now

from models.outages import Outage

log = logging.getLogger(__name__)

# How long a job slot waits before asking Redis again, while it does not answer.
DEQUEUE_PAUSE_SECONDS = 0.5
# Set in a worker's job slot (TaskWorker.process): the one place that asks for a job again as
# soon as it has finished one, so the only place where taking the next job ahead pays.
IN_JOB_SLOT: contextvars.ContextVar[bool] = contextvars.ContextVar("in_job_slot", default=False)
enqueue_log = logging.getLogger("saq")  # where SAQ notes each job it enqueues

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


def _keep_ended(record: str, lifetime: str) -> str:
    """Lua that stores an ended job's record (KEYS[1]) for its lifetime, as SAQ does: `lifetime`
    seconds, for good if 0, not at all (deleted) if negative."""
    return f"""
local ttl = tonumber({lifetime})
if ttl > 0 then
    redis.call('SET', KEYS[1], {record}, 'EX', ttl)
elseif ttl == 0 then
    redis.call('SET', KEYS[1], {record})
else
    redis.call('DEL', KEYS[1])
end
"""


def _take_next(queued: str, active: str, none: str) -> str:
    """Lua that moves the next waiting job into the active list and answers its id, its record
    and how many jobs are left waiting; `none` when none was waiting."""
    return f"""
local job_id = redis.call('LMOVE', {queued}, {active}, 'LEFT', 'RIGHT')
if not job_id then return {none} end
return {{job_id, redis.call('GET', job_id), redis.call('LLEN', {queued})}}
"""


# Abort a job only if its record is still what the sweep saw. KEYS: the job's id, its abort
# marker, queued, incomplete, active. ARGV: the record seen, the aborting record, the marker's
# lifetime, the marker's text, the status to announce.
_ABORT_IF_UNCHANGED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SETEX', KEYS[2], ARGV[3], ARGV[4])
redis.call('LREM', KEYS[3], 0, KEYS[1])
redis.call('ZREM', KEYS[4], KEYS[1])
redis.call('LREM', KEYS[5], 0, KEYS[1])
redis.call('PUBLISH', KEYS[1], ARGV[5])
return 1
"""

# Re-queue, or end, a job only if its record is still what the sweep read. KEYS: the job's id,
# queued, incomplete, active. ARGV: the record read, the new record, 'retry' or 'end', the
# incomplete score, '1' to push it to the queue now, the ended record's lifetime (0: none, -1:
# delete it), the status to announce.
_REPLACE_IF_UNCHANGED = f"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('LREM', KEYS[4], 0, KEYS[1])
if ARGV[3] == 'retry' then
    redis.call('SET', KEYS[1], ARGV[2])
    redis.call('LREM', KEYS[2], 0, KEYS[1])
    redis.call('ZADD', KEYS[3], ARGV[4], KEYS[1])
    if ARGV[5] == '1' then redis.call('RPUSH', KEYS[2], KEYS[1]) end
else
    redis.call('ZREM', KEYS[3], KEYS[1])
    {_keep_ended("ARGV[2]", "ARGV[6]")}
    redis.call('PUBLISH', KEYS[1], ARGV[7])
end
return 1
"""
# SAQ's enqueue, for many jobs in one call: each is stored and queued unless it is already
# incomplete or aborted. KEYS: incomplete, queued, then each job's id and its abort marker.
# ARGV: each job's record and its score in incomplete. Answers 1 (enqueued) or 0 per job.
_ENQUEUE_MANY = """
local added = {}
for i = 1, #ARGV / 2 do
    local job_id, score = KEYS[2 * i + 1], ARGV[2 * i]
    if not redis.call('ZSCORE', KEYS[1], job_id) and redis.call('EXISTS', KEYS[2 * i + 2]) == 0 then
        redis.call('SET', job_id, ARGV[2 * i - 1])
        redis.call('ZADD', KEYS[1], score, job_id)
        if score == '0' then redis.call('RPUSH', KEYS[2], job_id) end
        added[i] = 1
    else
        added[i] = 0
    end
end
return added
"""
# Jobs in one enqueue call at most: a script holds Redis up while it runs.
ENQUEUE_BATCH = 200
# How long one enqueue call may take, redis-py's retries included. An enqueue that lands after
# its caller gave up is refused by the abort marker the caller left, which must outlive this
# (saq_executor.ABORT_MARKER_SECONDS); past it, the call is given up and never retried.
ENQUEUE_SECONDS = 20.0

# Take the next queued job into the active list and read its record, in one round trip (SAQ
# takes two); also answer how many jobs are left waiting. KEYS: queued, active.
_TAKE = _take_next("KEYS[1]", "KEYS[2]", none="false")


# SAQ's end of a job (out of the active list and incomplete, its record kept for its lifetime,
# the notice of its end) and, if ARGV[4] is '1', the next waiting job taken as _TAKE takes it,
# in the same call. KEYS: the job's id, active, incomplete, queued. ARGV: the record, its
# lifetime (0: for good, -1: delete it), the status to announce, '1' to take the next job.
# Answers nil when not asked to take, an empty list when none was waiting.
_FINISH_AND_TAKE = f"""
redis.call('LREM', KEYS[2], 1, KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
{_keep_ended("ARGV[1]", "ARGV[2]")}
redis.call('PUBLISH', KEYS[1], ARGV[3])
if ARGV[4] ~= '1' then return false end
{_take_next("KEYS[4]", "KEYS[2]", none="{}")}
"""

# A job taken ahead by a worker that is stopping goes back to the head of the queue, if its
# record is still the one taken (one the engine aborted meanwhile stays out). KEYS: the job's
# id, active, queued. ARGV: the record taken.
_GIVE_BACK = """
redis.call('LREM', KEYS[2], 1, KEYS[1])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('LPUSH', KEYS[3], KEYS[1])
return 1
"""


def _if_still_ours(first: int, write: str) -> str:
    """A script that does `write` only if the job's record (KEYS[1]) is still one this worker
    read or wrote: one of ARGV[first], ARGV[first + 1], ... It answers 1 if it wrote."""
    return f"""
local current = redis.call('GET', KEYS[1])
for i = {first}, #ARGV do
    if current == ARGV[i] then
{write}
        return 1
    end
end
return 0
"""


# A heartbeat's write. KEYS: the job's id. ARGV: the new record, then the records it may
# replace.
_SET_IF_UNCHANGED = _if_still_ours(2, "        redis.call('SET', KEYS[1], ARGV[1])")

# SAQ's re-queue of a job its worker gives back (shutting down, or SAQ's own timeout). KEYS:
# the job's id, active, queued, incomplete. ARGV: the new record, the incomplete score, '1' to
# push it to the queue now, then the records it may replace.
_RETRY_IF_UNCHANGED = _if_still_ours(
    4,
    """        redis.call('LREM', KEYS[2], 1, KEYS[1])
        redis.call('LREM', KEYS[3], 1, KEYS[1])
        redis.call('ZADD', KEYS[4], ARGV[2], KEYS[1])
        if ARGV[3] == '1' then redis.call('RPUSH', KEYS[3], KEYS[1]) end
        redis.call('SET', KEYS[1], ARGV[1])""",
)
# Records a claim remembers at most (writes whose answers were lost, while Redis was away).
CLAIM_RECORDS = 8
# How often the sweep tries again when a job's record changed under its re-queue.
REPLACE_ATTEMPTS = 3
# How long the abort marker of a swept job lives (as SAQ's).
ABORT_MARKER_SECONDS = 5
# How long the sweep waits for Redis to confirm its subscription to a job's channel.
SUBSCRIBE_SECONDS = 5.0


def _is_end_notice(data: bytes | str) -> bool:
    """Whether a notice on a job's channel (its new status, as SAQ publishes it) is an end."""
    text = data.decode() if isinstance(data, bytes) else data
    return text.upper() in Status.__members__ and Status[text.upper()] in TERMINAL_STATUSES


@dataclasses.dataclass
class _Claim:
    """A job this process's worker took, and the records of it that Redis may hold: the one
    this worker last read or wrote, and any it wrote since without hearing back (the write may
    have landed, its answer lost with the connection; refusing those would stop the job's
    heartbeat for good, and a sweep would run the job again)."""

    records: list[bytes | str]
    # Until SAQ's worker first marks the job active (right after taking it), which is deferred.
    fresh: bool = True


class TaskQueue(RedisQueue):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._candidates = self.redis.register_script(_CANDIDATES)
        self._abort_if_unchanged = self.redis.register_script(_ABORT_IF_UNCHANGED)
        self._replace_if_unchanged = self.redis.register_script(_REPLACE_IF_UNCHANGED)
        self._take = self.redis.register_script(_TAKE)
        self._set_if_unchanged = self.redis.register_script(_SET_IF_UNCHANGED)
        self._retry_if_unchanged = self.redis.register_script(_RETRY_IF_UNCHANGED)
        # Jobs seen in the active list still marked queued: id -> (what they looked like, when).
        self._unclaimed: dict[bytes, tuple[tuple[int, int], float]] = {}
        # Jobs this process's worker runs, by id.
        self._claims: dict[str, _Claim] = {}
        # One warning per Redis outage, however many job slots fail to take a job in it.
        self.outage = Outage(log, "Redis (SAQ workers)")
        # Whether jobs were left waiting when this process last took one.
        self._backlog = True
        self._enqueue_many = self.redis.register_script(_ENQUEUE_MANY)
        self._finish_and_take = self.redis.register_script(_FINISH_AND_TAKE)
        self._give_back = self.redis.register_script(_GIVE_BACK)
        # Jobs taken ahead as the last one finished (id, record). Only a worker's job slots take
        # them (IN_JOB_SLOT), and not once the worker is stopping (TaskWorker.stop).
        self._taken_ahead: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.worker_stopping = False
        # Jobs to enqueue at the end of this turn of the loop, and the calls under way.
        self._to_enqueue: list[tuple[Job, asyncio.Future[bool]]] = []
        self._enqueuing: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly
        # The call under way that carries each waiting job, and the calls withdrawn.
        self._carriers: dict[asyncio.Future[bool], asyncio.Task[None]] = {}
        self._withdrawn: set[asyncio.Task[None]] = set()

    async def _enqueue(self, job: Job) -> Job | None:
        """SAQ's, except that the jobs enqueued in the same turn of the loop go to Redis in one
        script call: with hundreds of executions in flight, a call per job was a write and a
        read on both sides for every task, and Redis ran its script once per job."""
        added: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._submit([(job, added)])
        try:
            if not await added:
                return None
        except asyncio.CancelledError:
            self._withdraw(added)
            raise
        if enqueue_log.isEnabledFor(logging.INFO):  # SAQ's line, without building it for nothing
            enqueue_log.info("Enqueuing %s", job.info(enqueue_log.isEnabledFor(logging.DEBUG)))
        return job

    def _submit(self, jobs: list[tuple[Job, asyncio.Future[bool]]]) -> None:
        if not self._to_enqueue:
            asyncio.get_running_loop().call_soon(self._send_enqueues)
        self._to_enqueue += jobs

    def _send_enqueues(self) -> None:
        # Not the jobs whose caller gave up already (a cancelled task): they are not sent.
        waiting = [(job, added) for job, added in self._to_enqueue if not added.done()]
        self._to_enqueue = []
        for start in range(0, len(waiting), ENQUEUE_BATCH):
            batch = waiting[start : start + ENQUEUE_BATCH]
            task = asyncio.create_task(self._enqueue_batch(batch))
            for _, added in batch:
                self._carriers[added] = task
            self._enqueuing.add(task)
            task.add_done_callback(self._enqueuing.discard)

    def _withdraw(self, added: asyncio.Future[bool]) -> None:
        """A caller gave up (its task was cancelled) while its job's call was under way: stop
        that call, so that none of redis-py's retries lands the job later, after the caller's
        abort (SaqExecutor.run) looked for it; the call's other jobs go again. One that had
        landed already is refused the second time, as a job already waiting."""
        carrier = self._carriers.get(added)
        if carrier is not None and not carrier.done():
            self._withdrawn.add(carrier)
            carrier.cancel()

    async def _enqueue_batch(self, batch: list[tuple[Job, asyncio.Future[bool]]]) -> None:
        keys: list[str] = [self._incomplete, self._queued]
        args: list[bytes | str | int] = []
        for job, _ in batch:
            keys += [job.id, job.abort_id]
            args += [self.serialize(job), job.scheduled]
        try:
            async with self._op_sem, asyncio.timeout(ENQUEUE_SECONDS):
                answers = await self._enqueue_many(keys=keys, args=args, client=self.redis)
        except asyncio.CancelledError:
            this = asyncio.current_task()
            if this in self._withdrawn:  # one of its callers gave up: the others go again
                self._withdrawn.discard(this)
                self._submit([(job, added) for job, added in batch if not added.done()])
                return
            for _, added in batch:
                added.cancel()
            raise
        except Exception as exc:
            for _, added in batch:
                if not added.done():
                    added.set_exception(exc)
            return
        finally:
            for _, added in batch:
                if self._carriers.get(added) is asyncio.current_task():
                    del self._carriers[added]
        for (_, added), answer in zip(batch, answers, strict=True):
            if not added.done():
                added.set_result(bool(answer))

    async def notify(self, job: Job) -> None:
        if job.status in TERMINAL_STATUSES:
            await super().notify(job)

    async def dequeue(
        self,
        timeout: float = 0.0,  # noqa: ASYNC109 - SAQ's signature
        poll_interval: float = 0.0,
    ) -> Job | None:
        """The next job, or None; with Redis away, None after a pause. SAQ's worker takes a
        failed dequeue for an empty one and asks again at once: without the pause, every job
        slot would spin on a refused connection until Redis is back."""
        try:
            job = await self._dequeue(timeout, poll_interval)
        except (RedisError, OSError) as exc:
            self.outage.failed(exc, "workers wait for it")
            await asyncio.sleep(DEQUEUE_PAUSE_SECONDS)
            return None
        self.outage.answered()
        return job

    async def _dequeue(
        self,
        timeout: float,  # noqa: ASYNC109 - SAQ's
        poll_interval: float,
    ) -> Job | None:
        """SAQ's, in one round trip while jobs are waiting (SAQ's takes two, always).

        Whether jobs are waiting is known from the last job taken (either way answers how many
        are left): a worker keeps up with its queue, or it falls behind, for a while."""
        while self._taken_ahead:
            ahead_id, ahead = self._taken_ahead.popleft()
            job = self.deserialize(ahead)
            if job is not None:
                return job
            self._claims.pop(ahead_id.decode(), None)  # no record: the sweep's to drop
        if await self.version() < (6, 2, 0):
            return await super().dequeue(timeout, poll_interval)
        taken = None
        if self._backlog:
            async with self._op_sem:
                taken = await self._take(keys=[self._queued, self._active], client=self.redis)
        if taken:
            job_id, record, left = taken
        else:
            # None waiting: block until one is (a script cannot block), as SAQ does.
            wait: Any = timeout  # Redis takes fractions of a second; redis-py's stubs say int
            job_id = await self.redis.blmove(self._queued, self._active, wait, "LEFT", "RIGHT")
            if job_id is None:
                self._backlog = False
                return None
            async with self._op_sem, self.redis.pipeline(transaction=False) as pipe:
                pipe.get(job_id)
                pipe.llen(self._queued)
                record, left = await pipe.execute()
        self._backlog = left > 0
        job = self.deserialize(record)
        if job is not None:
            self._claims[job.id] = _Claim([record])
        return job

    async def _update(self, job: Job, status: Status | None = None, **kwargs: Any) -> None:
        """For a job this worker runs: marking it active as it starts is deferred to its first
        heartbeat, and every write is a compare-and-set on a record this worker read or wrote.

        Most tasks end within a second, before their first heartbeat: their record goes from
        queued to ended, a round trip fewer per job. A job
        taken but not marked active is the state a worker that died between SAQ's two steps
        leaves, which the sweep already hands on after UNCLAIMED_GRACE_SECONDS (and counts as
        an attempt). The compare-and-set keeps a heartbeat from overwriting the engine's
        abort, or a sweep's: SAQ's touch reads the status and writes the record a round trip
        later, blind."""
        claim = self._claims.get(job.id)
        if claim is None:
            await super()._update(job, status, **kwargs)
            return
        if claim.fresh and status == Status.ACTIVE:
            claim.fresh = False
            return
        claim.fresh = False
        job.status = Status.ACTIVE if status is None else status
        record = self.serialize(job)
        claim.records = [*claim.records[-(CLAIM_RECORDS - 1) :], record]  # may land unheard
        if await self._set_if_unchanged(keys=[job.id], args=[record, *claim.records]):
            claim.records = [record]
            await self.notify(job)
        else:
            claim.records.pop()  # refused: not written
            log.info("job %s changed under its worker (aborted or swept): not touched", job.id)

    async def _retry(self, job: Job, error: str | None) -> None:
        """SAQ's, as a compare-and-set for a job this worker runs: a job the engine aborted
        (its task cancelled, or timed out) while its worker was giving it back stays aborted,
        rather than going back to the queue and running again; one a sweep took is the
        sweep's to re-queue."""
        claim = self._claims.pop(job.id, None)
        if claim is None:
            await super()._retry(job, error)
            return
        delay = job.next_retry_delay()
        score = time.time() + delay if delay else job.scheduled
        keys = [job.id, self._active, self._queued, self._incomplete]
        args = [self.serialize(job), score, "0" if delay else "1", *claim.records]
        if not await self._retry_if_unchanged(keys=keys, args=args):
            log.info("job %s changed under its worker (aborted or swept): not re-queued", job.id)

    async def _finish(
        self,
        job: Job,
        status: Status,
        *,
        result: object = None,
        error: str | None = None,
    ) -> None:
        """SAQ's, with the notice in the same call: one round trip instead of two. And in a
        worker's job slot, while jobs are waiting, the slot's next job is taken in that call
        too (its next `dequeue` answers it without asking Redis): under load, one round trip
        per job instead of two."""
        self._claims.pop(job.id, None)
        take = (
            not self.worker_stopping
            and self._backlog
            and IN_JOB_SLOT.get()
            and await self.version() >= (6, 2, 0)
        )
        lifetime = job.ttl if job.ttl >= 0 else -1
        keys = [job.id, self._active, self._incomplete, self._queued]
        args = [self.serialize(job), lifetime, job.status, "1" if take else "0"]
        taken = await self._finish_and_take(keys=keys, args=args)
        if taken:
            job_id, record, left = taken
            self._backlog = left > 0
            self._taken_ahead.append((job_id, record))
            self._claims[job_id.decode()] = _Claim([record])
        elif take:
            self._backlog = False

    async def give_back(self) -> None:
        """Put the jobs taken ahead back at the head of the queue (the worker is stopping).

        A job slot cancelled by the stop while its finish-and-take call was under way may have
        taken a job whose answer it never read: that one waits for a sweep (10 s)."""
        # All at once: a second call meanwhile (a stop called twice) finds none to give back.
        taken, self._taken_ahead = self._taken_ahead, collections.deque()
        while taken:
            job_id, record = taken.pop()  # the last first: each goes to the head
            self._claims.pop(job_id.decode(), None)
            keys: list[bytes | str] = [job_id, self._active, self._queued]
            if not await self._give_back(keys=keys, args=[record]):
                log.info("job %s changed while taken ahead (aborted): not given back", job_id)

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        id_jobs = await self._candidates(
            keys=[self._sweep, self._active], args=[lock], client=self.redis
        )
        if not id_jobs:
            return []  # another worker holds the sweep lock, or nothing is active
        unclaimed: dict[bytes, tuple[tuple[int, int], float]] = {}
        handling: list[tuple[bytes, Awaitable[bool]]] = []
        swept: list[bytes] = []
        for job_id, job_bytes in id_jobs:
            if job_id.decode() in self._claims:
                continue  # this process runs it, and is alive: it is sweeping
            job = self.deserialize(job_bytes)
            if job is None:
                await self._forget(job_id)
                swept.append(job_id)
            elif job.status in TERMINAL_STATUSES:
                # Ended, and only left in the list: aborting it would overwrite its answer.
                await self.redis.lrem(self._active, 0, job_id.decode())
            elif job.status == Status.QUEUED:
                if self._lost_before_claim(job_id, job, unclaimed):
                    handling.append((job_id, self._hand_on(job, job_bytes, abort)))
            elif job.status == Status.ABORTING:
                # Someone is aborting it (the engine, or another sweep between its two steps);
                # only if its worker is gone too does it fall to the sweep, to end it.
                if job.stuck:
                    handling.append((job_id, self._replace(job, job_bytes, retry=False)))
            elif job.status != Status.ACTIVE or job.stuck:
                handling.append((job_id, self._hand_on(job, job_bytes, abort)))
        self._unclaimed = unclaimed
        # Together: each may wait up to `abort` seconds for a live worker to answer.
        results = await asyncio.gather(*(step for _, step in handling))
        swept += [job_id for (job_id, _), done in zip(handling, results, strict=True) if done]
        return [job_id.decode() for job_id in swept]

    def _lost_before_claim(
        self,
        job_id: bytes,
        job: Job,
        unclaimed: dict[bytes, tuple[tuple[int, int], float]],
    ) -> bool:
        """A worker took the job but never marked it active: true once it has stayed so for
        UNCLAIMED_GRACE_SECONDS (a live worker marks it at its first heartbeat, a second in,
        unless the job has ended before)."""
        looks = (job.attempts, job.touched)
        seen = self._unclaimed.get(job_id)
        first_seen = seen[1] if seen is not None and seen[0] == looks else time.monotonic()
        if time.monotonic() - first_seen < UNCLAIMED_GRACE_SECONDS:
            unclaimed[job_id] = (looks, first_seen)
            return False
        return True

    async def _hand_on(self, job: Job, seen: bytes, abort: float) -> bool:
        """Abort the job where it may still run, then re-queue it unless it ended meanwhile.
        False if its record changed since `seen` was read (its worker lives: nothing to do)."""
        aborting = dataclasses.replace(job, status=Status.ABORTING, error=self.swept_error_message)
        if job.status == Status.QUEUED:
            # Taken by a worker that died before it marked the job active (which it defers):
            # an attempt all the same, or a job that kills its worker at once would go round
            # the workers for ever.
            aborting.attempts += 1
        keys = [job.id, job.abort_id, self._queued, self._incomplete, self._active]
        args: list[Any] = [seen, self.serialize(aborting), ABORT_MARKER_SECONDS, aborting.error]
        # Listening before the abort, not after it as SAQ's Job.refresh does (read the record,
        # then subscribe): an end stored in between was never heard, and the sweep waited its
        # whole `abort` for nothing. redis-py 8.2 opens the subscription later than 8.1 did,
        # which made that window wide enough to lose a worker's answer every time.
        async with self._end_notice(job.id) as wait_for_end:
            if not await self._abort_if_unchanged(keys=keys, args=[*args, aborting.status]):
                return False
            log.info("Sweeping job %s", job.info(log.isEnabledFor(logging.DEBUG)))
            # A live worker answers the abort within a second.
            await wait_for_end(abort)
        for _ in range(REPLACE_ATTEMPTS):
            record: bytes | None = await self.redis.get(job.id)  # type: ignore[assignment]
            current = self.deserialize(record)
            if current is None or current.status not in (Status.ABORTING, Status.ABORTED):
                # Ended on its own (its worker was alive and stored an answer), or gone, or
                # marked again by a worker after the abort (alive: should it die, the engine's
                # watchdog of untouched active jobs runs the task again).
                return True
            if current.status == Status.ABORTED and current.error != self.swept_error_message:
                return True  # aborted on purpose (by the engine), not by this sweep
            if current.status == Status.ABORTED and not current.retryable:
                return True  # ended for good by its worker
            assert record is not None
            if await self._replace(current, record, retry=current.retryable):
                return True
        log.warning("job %s kept changing while swept; left as it is", job.id)
        return True

    @contextlib.asynccontextmanager
    async def _end_notice(self, job_id: str) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
        """Subscribes to the job's channel (confirmed by Redis before this yields) and gives a
        wait for the notice of its end, for at most the seconds it is given."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(job_id)
            # The confirmation: from here on, every notice on the channel reaches us.
            await pubsub.get_message(timeout=SUBSCRIBE_SECONDS)

            async def wait_for_end(seconds: float) -> None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        while True:
                            message = await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=None
                            )
                            if message is not None and _is_end_notice(message["data"]):
                                return

            yield wait_for_end
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def _replace(self, job: Job, seen: bytes, *, retry: bool) -> bool:
        """Re-queue the job (`retry`), or end it aborted, if its record is still `seen`."""
        if retry:
            delay = job.next_retry_delay()
            new = dataclasses.replace(
                job,
                status=Status.QUEUED,
                error=self.swept_error_message,
                completed=0,
                started=0,
                progress=0,
                touched=now(),
            )
            score = time.time() + delay if delay else job.scheduled
            args: list[Any] = [seen, self.serialize(new), "retry", score, "0" if delay else "1", 0]
        else:
            new = dataclasses.replace(job, status=Status.ABORTED, completed=now())
            args = [seen, self.serialize(new), "end", 0, "0", job.ttl]
        keys = [job.id, self._queued, self._incomplete, self._active]
        return bool(await self._replace_if_unchanged(keys=keys, args=[*args, new.status]))

    async def _forget(self, job_id: bytes) -> None:
        """A job in the active list with no record: drop it from the lists, as SAQ does."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._active, 0, job_id.decode())
            pipe.zrem(self._incomplete, job_id)
            await pipe.execute()
        log.info("Sweeping missing job %s", job_id)
