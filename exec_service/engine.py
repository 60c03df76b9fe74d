"""The engine: the state machine of an execution, in one place.

Tasks run in ascending (order, task id). A sync task is a stage of its own; consecutive async
tasks form one stage and run together; a stage starts when the one before it has finished.
A task that raises, times out or answers badly is retried with exponential backoff until
`max_attempts`; then it is `failed`, its running siblings are `cancelled`, the tasks not yet
started are `skipped`, and the execution is `failed` with its error.

Each execution has one owner at a time: the engine that holds its lease. Every state change is
a fenced, committed write (models.executions.apply_change), then an announcement on the bus.
An engine that dies stops renewing; another claims the execution and resumes it at its first
unfinished task; completed tasks are never run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson

from exec_service.actions.builtin import PermanentActionError, describe
from exec_service.bus import CONTROL_CHANNEL, RESYNC, EventBus, execution_channel
from exec_service.engine_metrics import ENGINES, action_label
from exec_service.executors import Executor, TaskInterrupted
from exec_service.types import ExecutionEvent, TaskRequest
from models import executions as store
from models import tracing
from models.db_unavailable import database_unavailable, round_failed
from models.executions import RunChange, now
from models.inputs import DEFAULT_TASK_TIMEOUT_SECONDS
from models.logs import EXECUTION_ID, TASK_ID, WORKFLOW_ID
from models.metrics import (
    EXECUTIONS_ENDED,
    EXECUTIONS_STARTED,
    LEASE_TAKEOVERS,
    TASK_ATTEMPTS,
    TASK_DURATION,
    TASK_INTERRUPTIONS,
)
from models.outages import Outage
from models.stages import stages as grouped
from models.statuses import (
    CANCELLED,
    COMPLETED,
    EXECUTION_TERMINAL,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
)
from models.tables import Execution, TaskRun
from models.templates import TemplateFailed, evaluate_when, has_templates, render_parameters
from models.templates import context as template_context
from models.workflows import iso

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

# An action's output is stored with its run and sent to every watcher: keep it bounded.
MAX_OUTPUT_BYTES = 1024 * 1024
# While the database does not answer, a state change is tried again after this long,
# doubling up to the cap.
DATABASE_RETRY_FIRST_SECONDS = 0.1
DATABASE_RETRY_MAX_SECONDS = 2.0
# Claims per lease round: a process that comes back to a backlog takes it over in steps.
CLAIM_BATCH = 100
# Trace contexts of executions queued by a request here, kept until they start (with tracing
# on); the oldest are forgotten past this many (started elsewhere, they never come back).
MAX_ORIGINS = 10_000


@dataclass(frozen=True)
class EngineConfig:
    lease_seconds: float = 10.0
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    # A task whose attempt was cut short (its process died, its queue lost it) runs again
    # after a pause that doubles from the first to the cap; it fails once those pauses would
    # pass the budget (about 64 interruptions for an hour: a process that keeps dying is
    # given time to be mended, without spinning).
    interruption_first_seconds: float = 1.0
    interruption_max_seconds: float = 60.0
    interruption_budget_seconds: float = 3600.0
    # Executions this engine runs at once; more are accepted as `pending` and start, oldest
    # first, as others end (here or on any engine sharing the database).
    max_running: int = 1000


def interruption_pause(config: EngineConfig, interruptions: int) -> float:
    """The pause before a task runs again after its `interruptions`-th interruption."""
    exponent = min(interruptions - 1, 32)
    pause: float = config.interruption_first_seconds * 2.0**exponent
    return min(pause, config.interruption_max_seconds)


def interruption_wait(config: EngineConfig, interruptions: int) -> float:
    """The pauses a task has waited out after this many interruptions."""
    return sum(interruption_pause(config, n) for n in range(1, interruptions + 1))


class TaskFailed(Exception):
    def __init__(self, run: TaskRun, error: str) -> None:
        super().__init__(error)
        self.run = run
        self.error = error


class Fenced(Exception):
    """A write was refused: this engine no longer owns the execution, or it has ended."""


def owner_id() -> str:
    """This process's name on the leases it holds: host, pid, and a random part."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


def stages(runs: Sequence[TaskRun]) -> list[list[TaskRun]]:
    """Sync tasks alone, consecutive async tasks together, in (order, task id) order."""
    return grouped(
        runs, lambda run: (run.order, run.task_id), lambda run: run.execution_type == "async"
    )


def _check_output(output: Any) -> dict[str, Any]:
    """The output as JSON holds it (what the database stores and every reader sees: keys as
    text, tuples as lists), or an error for what JSON cannot hold."""
    if not isinstance(output, dict):
        raise TypeError(f"the action returned {type(output).__name__}, not a JSON object")
    # Raises on what JSON cannot hold (NaN, odd keys) and on text that is not UTF-8.
    text = json.dumps(output, allow_nan=False, ensure_ascii=False)
    size = len(text.encode())
    if size > MAX_OUTPUT_BYTES:
        raise ValueError(f"the action's output is {size} bytes; the limit is {MAX_OUTPUT_BYTES}")
    stored: dict[str, Any] = json.loads(text)
    return stored


class Runner:
    """Runs one execution this engine owns; lives as one asyncio task."""

    def __init__(self, engine: Engine, execution: Execution, runs: list[TaskRun]) -> None:
        self.engine = engine
        self.execution = execution
        self.runs = runs
        self._by_id = {run.id: run for run in runs}
        # Each run as events show it, rebuilt only when that run changes.
        self._run_dicts = {run.id: store.run_dict(run) for run in runs}
        self._write_lock = asyncio.Lock()
        self._stages = stages(runs)

    async def run(self) -> None:
        if self.execution.status in EXECUTION_TERMINAL:
            return
        # A run left failed by a process that died before it could finish the execution.
        for run in self.runs:
            if run.status == FAILED:
                await self._fail(TaskFailed(run, run.error or "failed"), cancelled=[])
                return
        for stage in self._stages:
            # Skipped here means its `when` was false (a skip after a failure ends the run).
            todo = [run for run in stage if run.status not in (COMPLETED, SKIPPED)]
            if todo:
                failure, cancelled = await self._run_stage(todo)
                if failure is not None:
                    await self._fail(failure, cancelled)
                    return
        await self._write([], {"status": COMPLETED, "completed_at": now()})
        EXECUTIONS_ENDED.labels(COMPLETED).inc()
        log.debug("execution %s completed", self.execution.id)

    async def _run_stage(self, todo: list[TaskRun]) -> tuple[TaskFailed | None, list[TaskRun]]:
        if len(todo) == 1:
            try:
                await self._run_task(todo[0])
            except TaskFailed as failure:
                return failure, []
            return None, []
        children = {asyncio.create_task(self._run_task(run)): run for run in todo}
        pending = set(children)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failures: list[TaskFailed] = []
                for task in done:
                    error = task.exception()
                    if isinstance(error, TaskFailed):
                        failures.append(error)
                    elif error is not None:
                        raise error  # fenced, or a bug: stop the whole runner
                if failures:
                    return failures[0], [children[task] for task in pending]
            return None, []
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _run_task(self, run: TaskRun) -> None:
        # For every log line while it runs (the runner's own task runs single tasks: reset).
        token = TASK_ID.set(run.task_id)
        try:
            await self._run_task_attempts(run)
        finally:
            TASK_ID.reset(token)

    async def _run_task_attempts(self, run: TaskRun) -> None:
        config = self.engine.config
        parameters = cast(dict[str, Any], run.parameters)
        rendered: dict[str, Any] | None = None
        templated = has_templates(parameters)
        if run.condition is not None or templated:
            # From the committed outputs of earlier stages: a take-over renders the same.
            try:
                context = self._template_context(run)
                if run.condition is not None and not evaluate_when(run.condition, context):
                    skipped = RunChange(run.id, (PENDING,), {"status": SKIPPED})
                    await self._write([skipped], task=run)
                    return
                if templated:
                    rendered = parameters = render_parameters(parameters, context)
            except TemplateFailed as exc:
                raise TaskFailed(run, exc.message) from None  # the same on every attempt
        # Resumed after an interruption (a take-over): pause first, as after one here.
        interrupted = run.interruptions > 0
        while True:
            if interrupted:
                waited = interruption_wait(config, run.interruptions)
                if waited > config.interruption_budget_seconds:
                    raise TaskFailed(
                        run,
                        f"interrupted {run.interruptions} times: the process running it kept "
                        "stopping before it finished (WORKFLOW_INTERRUPTION_BUDGET)",
                    )
                pause = interruption_pause(config, run.interruptions)
                # INFO: an outage interrupts many tasks at once, and warns once itself.
                log.info(
                    "task %s of execution %s was interrupted (%d so far); it runs again in %g s",
                    run.task_id,
                    self.execution.id,
                    run.interruptions,
                    pause,
                    extra={"execution_id": self.execution.id, "task_id": run.task_id},
                )
                await asyncio.sleep(pause)
                interrupted = False
            attempt = run.attempts + 1
            await self._write(
                [
                    RunChange(
                        run.id,
                        (PENDING, RUNNING),
                        {
                            "status": RUNNING,
                            "attempts": attempt,
                            "started_at": run.started_at or now(),
                            "error": run.error,
                        }
                        | ({"rendered": rendered} if rendered is not None else {}),
                    )
                ],
                task=run,
            )
            # Not asyncio.wait_for: on Python 3.11 that starts a task for every attempt. A task
            # without a timeout of its own gets the default: nothing holds a slot for ever.
            timeout = run.timeout_seconds or DEFAULT_TASK_TIMEOUT_SECONDS
            deadline = asyncio.timeout(timeout)
            action = action_label(run.action)
            request = self._request(run, attempt, parameters, timeout)
            # Tracing off, this look at a None is all it costs (models/tracing.py).
            span = tracing.attempt_started(request) if tracing.TRACER is not None else None
            started = time.perf_counter()
            try:
                async with deadline:
                    if span is None:
                        output = await self.engine.executor.run(request)
                    else:
                        with tracing.current(span):
                            output = await self.engine.executor.run(request)
                output = _check_output(output)
            except TimeoutError as exc:
                # The task's own timeout, or a TimeoutError the action raised itself.
                error = f"timed out after {timeout:g}s" if deadline.expired() else describe(exc)
                outcome = "timed_out" if deadline.expired() else "failed"
                cause: BaseException | str = error if deadline.expired() else exc
            except asyncio.CancelledError:
                # Cancelled (by a user, or a sibling's failure), or this engine is stopping and
                # hands the execution over: the task runs again elsewhere.
                outcome = "interrupted" if self.engine.stopping else "cancelled"
                TASK_ATTEMPTS.labels(action, outcome).inc()
                if span is not None:
                    tracing.attempt_ended(span, outcome)
                raise
            except TaskInterrupted as exc:
                # Not the task's fault: run it again, as after a crash of this process.
                TASK_ATTEMPTS.labels(action, "interrupted").inc()
                if span is not None:
                    tracing.attempt_ended(span, "interrupted", exc)
                TASK_INTERRUPTIONS.labels("executor").inc()
                # The call did not count: `attempts` stays at the attempts that got an answer
                # (never above max_attempts), and the run waits out its pause as pending, as
                # after a take-over, so a crash in the pause does not count it twice.
                values = {
                    "status": PENDING,
                    "attempts": attempt - 1,
                    "interruptions": run.interruptions + 1,
                    "error": str(exc),
                }
                await self._write([RunChange(run.id, (RUNNING,), values)], task=run)
                interrupted = True
                continue
            except PermanentActionError as exc:
                self._attempt_ended(action, "failed", started, span, exc)
                raise TaskFailed(run, describe(exc)) from None  # another attempt cannot help
            except Exception as exc:
                error = describe(exc)
                outcome = "failed"
                cause = exc
            else:
                self._attempt_ended(action, "completed", started, span)
                done = {"status": COMPLETED, "completed_at": now(), "output": output, "error": None}
                await self._write([RunChange(run.id, (RUNNING,), done)], task=run)
                return
            self._attempt_ended(action, outcome, started, span, cause)
            failures = attempt  # interrupted calls are taken back out of `attempts`
            if failures >= run.max_attempts:
                raise TaskFailed(run, error)
            await self._write([RunChange(run.id, (RUNNING,), {"error": error})], task=run)
            delay = min(config.retry_base_seconds * 2 ** (failures - 1), config.retry_max_seconds)
            log.info(
                "task %s attempt %d of %d failed (%s); next in %.2g s",
                run.task_id,
                attempt,
                run.max_attempts,
                error,
                delay,
            )
            await asyncio.sleep(delay)

    @staticmethod
    def _attempt_ended(
        action: str,
        outcome: str,
        started: float,
        span: Span | None,
        error: BaseException | str | None = None,
    ) -> None:
        """An attempt that got an answer: counted, timed, and its span ended."""
        TASK_ATTEMPTS.labels(action, outcome).inc()
        TASK_DURATION.labels(action).observe(time.perf_counter() - started)
        if span is not None:
            tracing.attempt_ended(span, outcome, error)

    def _template_context(self, run: TaskRun) -> dict[str, Any]:
        earlier = []
        for stage in self._stages:
            if run in stage:
                break
            earlier += [(other.name, other.status, other.output) for other in stage]
        return template_context(
            self.execution.id, self.execution.workflow_id, self.execution.input, earlier
        )

    def _request(
        self, run: TaskRun, attempt: int, parameters: dict[str, Any], timeout: float
    ) -> TaskRequest:
        return {
            "execution_id": self.execution.id,
            "run_id": run.id,
            "task_id": run.task_id,
            "action": run.action,
            "parameters": parameters,
            "attempt": attempt,
            "timeout_seconds": timeout,
        }

    async def _fail(self, failure: TaskFailed, cancelled: list[TaskRun]) -> None:
        moment = now()
        failed = failure.run
        changes = [
            RunChange(
                failed.id,
                (PENDING, RUNNING, FAILED),
                {"status": FAILED, "completed_at": moment, "error": failure.error},
            )
        ]
        for run in cancelled:
            if run.status == RUNNING:
                values = {"status": CANCELLED, "completed_at": moment}
                changes.append(RunChange(run.id, (RUNNING,), values))
        for run in self.runs:
            if run.status == PENDING and run is not failed:
                changes.append(RunChange(run.id, (PENDING,), {"status": SKIPPED}))
        error = f"Task '{failed.name}' (id {failed.task_id}) failed: {failure.error}"
        await self._write(
            changes, {"status": FAILED, "completed_at": moment, "error": error}, task=failed
        )
        EXECUTIONS_ENDED.labels(FAILED).inc()
        log.info("execution %s failed: %s", self.execution.id, error)

    async def _write(
        self,
        changes: list[RunChange],
        execution: dict[str, Any] | None = None,
        task: TaskRun | None = None,
    ) -> None:
        """Commit a change (fenced by the lease), mirror it here, then announce it.

        Shielded: a cancellation (a sibling failed, the user cancelled, shutdown) must not land
        between the commit and the mirror, or this runner would act on a state it never saw.
        """
        commit = asyncio.ensure_future(self._commit(changes, execution, task))
        self.engine.track(commit)
        await asyncio.shield(commit)

    async def _commit(
        self,
        changes: list[RunChange],
        execution: dict[str, Any] | None,
        task: TaskRun | None,
    ) -> None:
        async with self._write_lock:
            version = await self._apply(changes, execution)
            if version is None:
                raise Fenced(self.execution.id)
            for change in changes:
                run = self._by_id[change.run_id]
                for name, value in change.values.items():
                    setattr(run, name, value)
                self._run_dicts[run.id] = store.run_dict(run)
            for name, value in (execution or {}).items():
                setattr(self.execution, name, value)
            self.execution.version = version
            # What changed, not the whole execution: announcing every task at every change
            # made a sequential execution's announcements grow with the square of its tasks.
            event: ExecutionEvent = {
                "execution_id": self.execution.id,
                "version": version,
                "task_id": task.task_id if task is not None else None,
                "task_status": task.status if task is not None else None,
                "at": iso(now()) or "",
                "execution": self._head(),
                "changed": [self._run_dicts[change.run_id] for change in changes],
            }
            payload = orjson.dumps(event)
        await self.engine.bus.publish(execution_channel(self.execution.id), payload, event)

    async def _apply(
        self, changes: list[RunChange], execution: dict[str, Any] | None
    ) -> int | None:
        """store.apply_change, tried again while the database does not answer: the change (a
        task's end, say) is known only here, and dropping it would run the task again. A try
        whose answer was lost may have been written: the next try is then refused by the
        fence, and the runner stops, as after a take-over. Given up when the engine stops."""
        delay = DATABASE_RETRY_FIRST_SECONDS
        while True:
            try:
                version = await store.apply_change(
                    self.execution.id, self.engine.owner, changes, execution
                )
            except Exception as exc:
                if self.engine.stopping or not database_unavailable(exc):
                    raise
                self.engine.database_outage.failed(exc, "state changes wait for it")
                await asyncio.sleep(delay)
                delay = min(delay * 2, DATABASE_RETRY_MAX_SECONDS)
                continue
            self.engine.database_outage.answered()
            return version

    def _head(self) -> dict[str, Any]:
        """The execution's own fields as of the last commit: the snapshot without its tasks
        and its input (which never changes)."""
        head = store.execution_dict(self.execution, ())
        del head["tasks"], head["input"]
        return head

    def snapshot(self) -> dict[str, Any]:
        """store.execution_dict as of the last commit, from the runs' dicts kept since their
        last change."""
        snapshot = store.execution_dict(self.execution, ())
        snapshot["tasks"] = [self._run_dicts[run.id] for run in self.runs]
        return snapshot


class Engine:
    """Owns executions through leases and runs each with a Runner."""

    def __init__(
        self, executor: Executor, bus: EventBus, config: EngineConfig | None = None
    ) -> None:
        self.executor = executor
        self.bus = bus
        self.config = config or EngineConfig()
        self.owner = owner_id()
        self.runners: dict[int, asyncio.Task[bool]] = {}
        self._live: dict[int, Runner] = {}  # the runners of `runners` that have started
        self._spawned_at: dict[int, float] = {}
        self._commits: set[asyncio.Future[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._control_ready = asyncio.Event()
        # Whether executions may be waiting `pending` (made here at capacity, or elsewhere):
        # while they may, new ones queue behind them, so that they start in arrival order.
        self._backlog = True
        self._starting: asyncio.Task[None] | None = None
        self._reserved = 0
        self.stopping = False
        # Executions running here whose workflow has a concurrency limit.
        self._limited: set[int] = set()
        # One warning per database outage, however many writes wait in it.
        self.database_outage = Outage(log, "the database (engine)")
        # With tracing on: the context of the request that queued each execution waiting here.
        self._origins: dict[int, Context] = {}

    async def start(self) -> None:
        ENGINES.started(self)
        self._background = [
            asyncio.create_task(self._lease_loop(), name="engine-leases"),
            asyncio.create_task(self._control_loop(), name="engine-control"),
        ]
        await self._control_ready.wait()

    async def stop(self) -> None:
        """Stop every runner without writing, and hand their executions over at once."""
        self.stopping = True
        ENGINES.stopped(self)
        starting = [self._starting] if self._starting is not None else []
        for task in [*self._background, *starting, *self.runners.values()]:
            task.cancel()
        await asyncio.gather(
            *self._background, *starting, *self.runners.values(), return_exceptions=True
        )
        # Writes already under way finish (they are shielded) before the leases are handed over.
        await asyncio.gather(*self._commits, return_exceptions=True)
        self.runners.clear()
        try:
            await store.release_leases(self.owner)
        except Exception:
            log.exception("releasing leases failed; they expire by themselves")

    async def execute(
        self,
        workflow_id: int,
        idempotency_key: str | None,
        input: dict[str, Any] | None = None,
        triggered_by: str | None = None,
    ) -> tuple[int, bool]:
        # Decided, and the room taken, before the first await: requests that arrive together
        # must not all see the same free room.
        queued = self._backlog or self._busy() >= self.config.max_running
        if not queued:
            self._reserved += 1
        try:
            new = await store.create_execution(
                workflow_id,
                idempotency_key,
                self.owner,
                self.config.lease_seconds,
                input=input,
                triggered_by=triggered_by,
                pending=queued,
            )
        finally:
            if not queued:
                self._reserved -= 1
        if new.created:
            source = "trigger" if (triggered_by or "").startswith("trigger:") else "api"
            EXECUTIONS_STARTED.labels(source).inc()
        if new.created and (queued or new.waiting):
            if tracing.TRACER is not None:
                self._remember_origin(new.id)
            self._backlog = True
            self.start_pending()
        elif new.created and new.execution is not None:
            self.spawn(new.id, (new.execution, new.runs), from_request=True)
        return new.id, new.created

    def _remember_origin(self, execution_id: int) -> None:
        """The current request's trace context, for the execution it queued: its run goes on
        in that trace when it starts here (models/tracing.py)."""
        if len(self._origins) >= MAX_ORIGINS:
            del self._origins[next(iter(self._origins))]
        self._origins[execution_id] = tracing.current_context()

    def _busy(self) -> int:
        """Executions running here, and those about to (room taken, not yet spawned)."""
        return len(self.runners) + self._reserved

    def start_pending(self) -> None:
        """Start waiting executions, oldest first, while this engine has room (one round at a
        time; a round asked for during one runs after it)."""
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start_pending(), name="engine-pending")

    async def _start_pending(self) -> None:
        try:
            while True:
                room = self.config.max_running - self._busy()
                if room <= 0:
                    return
                claimed = await store.claim_pending(self.owner, self.config.lease_seconds, room)
                for execution_id, limited in claimed:
                    if limited:
                        self._limited.add(execution_id)
                    self.spawn(execution_id)
                    await self._announce(execution_id)
                if len(claimed) < room:
                    self._backlog = False  # none left waiting (new ones come here first)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("starting pending executions failed; the next lease round tries again")

    async def _announce(self, execution_id: int) -> dict[str, Any]:
        """Tell watchers the execution's state as the database has it now (a change made
        outside a runner: a pending execution started, or a cancel); answer that state."""
        snapshot = await store.get_execution(execution_id)
        event: ExecutionEvent = {
            "execution_id": execution_id,
            "version": snapshot["version"],
            "task_id": None,
            "task_status": None,
            "at": iso(now()) or "",
            "execution": snapshot,
        }
        await self.bus.publish(execution_channel(execution_id), orjson.dumps(event), event)
        return snapshot

    async def retry(self, execution_id: int, triggered_by: str | None = None) -> int:
        """Start a new execution of a failed or cancelled one, from where it failed. Raises
        NotFound, or Conflict when it is not failed or cancelled."""
        # As a new execution: it waits when this engine is full or others already wait.
        queued = self._backlog or self._busy() >= self.config.max_running
        new = await store.retry_execution(
            execution_id, self.owner, self.config.lease_seconds, triggered_by, pending=queued
        )
        EXECUTIONS_STARTED.labels("retry").inc()
        if new.waiting:
            if tracing.TRACER is not None:
                self._remember_origin(new.id)
            self._backlog = True
            self.start_pending()
        else:
            loaded = (new.execution, new.runs) if new.execution is not None else None
            self.spawn(new.id, loaded, from_request=True)
        return new.id

    async def cancel(self, execution_id: int) -> dict[str, Any]:
        """Cancel wherever it runs. Raises NotFound. Returns the execution as it now is."""
        if await store.cancel(execution_id):
            EXECUTIONS_ENDED.labels(CANCELLED).inc()
            log.info("execution %s cancelled", execution_id, extra={"execution_id": execution_id})
            snapshot = await self._announce(execution_id)
            # The owner (maybe another process) stops its tasks; its writes are fenced anyway.
            await self.bus.publish(CONTROL_CHANNEL, json.dumps({"cancel": execution_id}).encode())
            self._stop_runner(execution_id)
            return snapshot
        return await store.get_execution(execution_id)

    def current(self, execution_id: int) -> dict[str, Any] | None:
        """The execution as its runner here last committed it, if it runs here: what a read of
        the database would answer, without the read. (Should another engine have taken it over
        meanwhile, it is the state as this one left it; the watchers here re-read once this
        runner stops, see RedisBus.release.)"""
        runner = self._live.get(execution_id)
        return runner.snapshot() if runner is not None else None

    def track(self, commit: asyncio.Future[None]) -> None:
        self._commits.add(commit)
        commit.add_done_callback(self._commits.discard)

    def spawn(
        self,
        execution_id: int,
        loaded: tuple[Execution, list[TaskRun]] | None = None,
        from_request: bool = False,
    ) -> None:
        """Run the execution here; `loaded` is its state as just written, if the caller has it
        (else the runner reads it). `from_request`: started by the call being answered (its
        trace goes on into the run, as it does for one it queued here; others, claimed from
        elsewhere, taken over or started by a schedule, start a trace of their own)."""
        if execution_id in self.runners:
            return
        origin = None
        if tracing.TRACER is not None:
            origin = self._origins.pop(execution_id, None)
            if origin is None and from_request:
                origin = tracing.current_context()
        task = asyncio.create_task(
            self._run(execution_id, loaded, origin), name=f"execution-{execution_id}"
        )
        self.runners[execution_id] = task
        self._spawned_at[execution_id] = asyncio.get_running_loop().time()
        # Announced from here while the runner lives (claimed before a watcher asks, released
        # however the task ends): watchers here need no Redis subscription for it.
        channel = execution_channel(execution_id)
        self.bus.claim(channel)

        def forget(_: asyncio.Task[bool]) -> None:
            # Ended here: its watchers here have had the last announcement already.
            ended = not task.cancelled() and task.exception() is None and task.result()
            self.bus.release(channel, ended=ended)
            if self.runners.get(execution_id) is task:
                del self.runners[execution_id]
                del self._spawned_at[execution_id]
                if execution_id in self._limited:
                    # Its workflow's limit has room now: another of its executions may start.
                    self._limited.discard(execution_id)
                    self.start_pending()
                elif self._backlog:
                    self.start_pending()  # its room goes to the oldest waiting execution

        task.add_done_callback(forget)

    def _stop_runner(self, execution_id: int) -> None:
        # From now on its state is not the execution's (cancelled, ended, or no longer ours):
        # watchers that start meanwhile read the database.
        self._live.pop(execution_id, None)
        task = self.runners.get(execution_id)
        if task is not None:
            task.cancel()

    async def _run(
        self,
        execution_id: int,
        loaded: tuple[Execution, list[TaskRun]] | None,
        origin: Context | None = None,
    ) -> bool:
        """True when the execution reached its end here. `origin`: the trace it belongs to."""
        try:
            if loaded is None:
                loaded = await store.load_for_run(execution_id)
            if loaded is None:
                return False
            execution, runs = loaded
            if execution.lease_owner != self.owner:
                return False
            # Every log line of this runner (its own task and those it starts) says which.
            EXECUTION_ID.set(execution_id)
            WORKFLOW_ID.set(execution.workflow_id)
            runner = self._live[execution_id] = Runner(self, execution, runs)
            try:
                if tracing.TRACER is None:
                    await runner.run()
                else:
                    with tracing.execution_span(
                        execution_id, execution.workflow_id, origin
                    ) as span:
                        await runner.run()
                        span.set_attribute("workflow.execution.status", execution.status)
            finally:
                if self._live.get(execution_id) is runner:
                    del self._live[execution_id]
            return True
        except Fenced:
            log.info(
                "execution %s moved on without us (cancelled or taken over)",
                execution_id,
                extra={"execution_id": execution_id},
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease lapses and another round (here or elsewhere) resumes it.
            log.exception(
                "execution %s stopped unexpectedly",
                execution_id,
                extra={"execution_id": execution_id},
            )
        return False

    async def _lease_loop(self) -> None:
        interval = self.config.lease_seconds / 3
        while True:
            try:
                round_started = asyncio.get_running_loop().time()
                owned = await store.renew_leases(self.owner, self.config.lease_seconds)
                for execution_id, spawned in list(self._spawned_at.items()):
                    # Runners spawned during the query are not in `owned` yet: leave them be.
                    if execution_id not in owned and spawned < round_started:
                        self._stop_runner(execution_id)  # ended, or no longer ours
                for execution_id in owned - set(self.runners):
                    self.spawn(execution_id)  # ours, but its runner died: resume it
                self.database_outage.answered()
                # After a database outage, every owner's leases may have lapsed meanwhile: for
                # one lease period, their owners renew them (above, in their own rounds) before
                # anyone takes them over, and a task still running there does not run twice.
                claimed = []
                if not self.database_outage.failed_within(self.config.lease_seconds):
                    claimed = await store.claim_expired(
                        self.owner, self.config.lease_seconds, CLAIM_BATCH
                    )
                for execution_id in claimed:
                    LEASE_TAKEOVERS.inc()
                    log.info(
                        "took over execution %s",
                        execution_id,
                        extra={"execution_id": execution_id},
                    )
                    self.spawn(execution_id)
                # Executions left pending by another engine (or one that died) start here too.
                # (Without raising the backlog flag: new executions keep their fast path.)
                self.start_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                renewed_later = "leases are renewed once it is back"
                round_failed(exc, "lease round", self.database_outage, renewed_later, log)
            await asyncio.sleep(interval)

    async def _control_loop(self) -> None:
        async with self.bus.subscribe(CONTROL_CHANNEL) as subscription:
            self._control_ready.set()
            while True:
                payload = await subscription.get()
                if not isinstance(payload, bytes) or payload == RESYNC:
                    continue  # (cancel requests are published as JSON, never as objects)
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self._stop_runner(int(json.loads(payload)["cancel"]))
