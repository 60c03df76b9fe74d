"""Runs actions as Ray tasks: on a local Ray this process starts, or on a Ray cluster.

`RayExecutor(address=...)` (or the RAY_ADDRESS environment variable, which Ray reads itself)
connects to a running cluster; without either, start() launches a local Ray bounded to
`num_cpus` CPUs (2 by default), without its dashboard.

Each attempt is a call on a pool of async Ray actors (`ActionRunner`), one per CPU: Ray
refuses `async def` remote functions, and an async actor runs many I/O-bound actions at once on
its own event loop, so the async tasks of a stage run together whatever the CPU count. An
action's exception comes back as a value (`{"ok": False, "error": ...}`) and is raised here as
ActionError with the message the engine would have written itself, so Ray never retries it (the
engine does its own retries). Ray's own restarts cover system failures: an actor whose process
dies is restarted and its pending calls retried, up to 3 times; after that the attempt ends in
TaskInterrupted (run again by the engine, not counted against max_attempts).

Cancellation: when the engine cancels `run()` (timeout, user cancel, a sibling's failure), the
call is cancelled with `ray.cancel`, which raises CancelledError inside the action's coroutine
in the actor.

Actions are resolved in the Ray worker, another process: the built-ins and actions installed
under the `workflow.actions` entry-point group (in the workers' environment) are available;
actions added in this process with `exec_service.actions.register` are NOT (the workers never
see that call). On a cluster, every node needs `workflow-engine` (and any entry-point action
packages) installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any

import ray
import ray.exceptions

from exec_service import actions
from exec_service.actions.builtin import describe, failed, failure
from exec_service.executors import TaskInterrupted
from exec_service.types import TaskRequest
from models import tracing

log = logging.getLogger(__name__)

DEFAULT_NUM_CPUS = 2


# Ray gave the task up for reasons outside it, after its own retries: the engine runs it again
# without counting it against max_attempts, as it does when SAQ gives a job up.
_INTERRUPTIONS: tuple[type[Exception], ...] = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.RayActorError,
)


class ActionRunner:
    """Runs actions in a Ray actor process, on the actor's own event loop."""

    async def run(self, request: TaskRequest) -> dict[str, Any]:
        """One attempt; never raises for the action's own failure."""
        if "trace_context" not in request or not _tracing_here():
            return await self._run(request)
        # A child of the engine's attempt span, whose context the request carries.
        with tracing.task_run_span(request, "ray") as span:
            answer = await self._run(request)
            tracing.answered(span, answer)
            return answer

    async def _run(self, request: TaskRequest) -> dict[str, Any]:
        try:
            action = actions.get(request["action"])
            output = await action(dict(request["parameters"]))
        except Exception as exc:
            return failure(exc)
        return {"ok": True, "output": output}

    async def ping(self) -> bool:
        """Ready: the action registry (entry points, imports) is loaded here, now, so that
        the first tasks do not pay for it and finish out of step with their group."""
        actions.available()
        await actions.get("noop")({})
        return True


def _tracing_here() -> bool:
    """Tracing in this actor's process, set up at its first traced call from the OTEL_*
    variables its executor handed it. Never a reason to fail a task: without the extra here,
    it says so once and runs untraced."""
    global _TRACING_PROBLEM
    if _TRACING_PROBLEM:
        return False
    try:
        return tracing.configure("workflow-ray-actor")
    except (tracing.TracingUnavailable, ValueError) as error:
        _TRACING_PROBLEM = True
        log.warning("this Ray actor runs tasks untraced: %s", error)
        return False


_TRACING_PROBLEM = False


# Restarted when its process dies, with the calls it had pending retried (system failures);
# an action's exception is an answer, never retried by Ray.
_RemoteActionRunner = ray.remote(max_restarts=-1, max_task_retries=3)(ActionRunner)
# Calls one actor runs at once (on its event loop): far more than a stage has tasks.
ACTOR_CONCURRENCY = 1000


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address = address
        # Bounds a local Ray only; a cluster has the resources it has.
        self.num_cpus = num_cpus if num_cpus is not None else DEFAULT_NUM_CPUS
        self._owns_ray = False
        self._pool: list[Any] = []
        self._next = 0

    async def start(self) -> None:
        if not ray.is_initialized():
            await self._start_ray()
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        size = max(1, int(resources.get("CPU", self.num_cpus)))
        # num_cpus=0: an actor that mostly awaits I/O should not hold a CPU from other work.
        options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": ACTOR_CONCURRENCY}
        if tracing.TRACER is not None:
            # The actors export where this process does, however the cluster was started.
            options["runtime_env"] = {"env_vars": tracing.environment()}
        self._pool = [_RemoteActionRunner.options(**options).remote() for _ in range(size)]
        await asyncio.gather(*(actor.ping.remote() for actor in self._pool))

    async def _start_ray(self) -> None:
        previous = signal.getsignal(signal.SIGTERM)
        # ray.init blocks for seconds. On the main thread it would also replace the SIGTERM
        # handler with one that calls sys.exit; from a worker thread it leaves it alone.
        await asyncio.to_thread(self._init)
        self._owns_ray = True
        if threading.current_thread() is threading.main_thread() and previous is not None:
            # Set again even when Python still shows it: Ray's C++ core installs a crash
            # handler of its own below Python's (absl's failure signal handler, on SIGSEGV,
            # SIGABRT... and SIGTERM), which printed a stack trace, twice, on every normal
            # stop before handing the signal on. It keeps the crash signals.
            signal.signal(signal.SIGTERM, previous)

    def _init(self) -> None:
        quiet: dict[str, Any] = {
            "ignore_reinit_error": True,
            "log_to_driver": False,
            "configure_logging": True,
            "logging_level": logging.ERROR,
        }
        if self.address is not None or os.environ.get("RAY_ADDRESS"):
            ray.init(address=self.address, **quiet)
            log.info("connected to Ray at %s", self.address or os.environ["RAY_ADDRESS"])
        else:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, **quiet)
            log.info("started a local Ray with %s CPUs", self.num_cpus)

    async def run(self, request: TaskRequest) -> dict[str, Any]:
        if not ray.is_initialized():
            # .remote() would start Ray by itself, on this thread, taking over SIGTERM.
            raise RuntimeError("RayExecutor.run() before start()")
        if not self._pool:
            raise RuntimeError("RayExecutor.run() before start()")
        actor = self._pool[self._next % len(self._pool)]
        self._next += 1
        ref = actor.run.remote(tracing.carry(request) if tracing.TRACER else request)
        try:
            result: dict[str, Any] = await ref
        except asyncio.CancelledError:
            # Raises CancelledError in the action, in the actor. Whatever happens here, the
            # cancellation goes on: the engine relies on it.
            try:
                ray.cancel(ref)
            except Exception:
                log.warning("could not cancel Ray task %s", ref.task_id().hex(), exc_info=True)
            raise
        except _INTERRUPTIONS as exc:
            raise TaskInterrupted(f"Ray gave the task up: {describe(exc)}") from exc
        if not result["ok"]:
            raise failed(result)
        output: dict[str, Any] = result["output"]
        return output

    async def close(self) -> None:
        for actor in self._pool:
            ray.kill(actor)
        self._pool = []
        if self._owns_ray:
            self._owns_ray = False
            await asyncio.to_thread(ray.shutdown)
