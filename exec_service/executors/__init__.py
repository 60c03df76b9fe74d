"""Executors run one attempt of a task and return its output. One interface, several backends
(in-process asyncio, SAQ workers over Redis, a Ray cluster), chosen by name at start; each is
imported only when chosen, with a hint when its extra is not installed.

The engine cancels the awaiting coroutine to stop a task (timeout, cancel, a sibling's
failure); an executor that runs tasks elsewhere turns that cancellation into its own.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from exec_service.types import TaskRequest


class TaskInterrupted(Exception):
    """The attempt ended without an answer for reasons outside the task (the worker running it
    died, the queue gave up on it). The engine runs it again without counting it against
    `max_attempts`, as it does for an attempt cut short by its own process dying."""


class Executor(Protocol):
    name: str

    async def start(self) -> None: ...
    async def run(self, request: TaskRequest) -> dict[str, Any]: ...
    async def close(self) -> None: ...


EXECUTORS = ("asyncio", "saq", "ray")


def _missing(extra: str, error: ImportError) -> RuntimeError:
    return RuntimeError(
        f"the {extra} executor needs its extra: pip install 'workflow-engine[{extra}]' ({error})"
    )


def make_executor(
    name: str,
    redis_url: str | None = None,
    prefix: str = "wf:",
    embedded_workers: int | None = None,
) -> Executor:
    """The executor called `name`. `saq` needs `redis_url`; with `embedded_workers` it runs a
    worker of that concurrency in this process too (`workflow serve --executor saq`)."""
    if name == "asyncio":
        from exec_service.executors.asyncio_executor import AsyncioExecutor

        return AsyncioExecutor()
    if name == "ray":
        try:
            from exec_service.executors.ray_executor import RayExecutor
        except ImportError as error:
            raise _missing("ray", error) from None
        # A local Ray's CPUs (its actor pool size); a cluster (RAY_ADDRESS) has its own.
        return RayExecutor(num_cpus=int(os.environ.get("WORKFLOW_RAY_CPUS") or 2))
    if name == "saq":
        if not redis_url:
            raise RuntimeError("the saq executor needs Redis: set REDIS_URL")
        try:
            from exec_service.executors.saq_executor import SaqExecutor
        except ImportError as error:
            raise _missing("saq", error) from None
        return SaqExecutor(redis_url, prefix, embedded_workers)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
