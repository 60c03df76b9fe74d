"""Executors run one attempt of a task and return its output. One interface, several backends
(in-process asyncio now; SAQ workers and Ray next), chosen by name at start.

The engine cancels the awaiting coroutine to stop a task (timeout, cancel, a sibling's
failure); an executor that runs tasks elsewhere turns that cancellation into its own.
"""

from __future__ import annotations

from typing import Any, Protocol

from exec_service.types import TaskRequest


class Executor(Protocol):
    name: str

    async def start(self) -> None: ...
    async def run(self, request: TaskRequest) -> dict[str, Any]: ...
    async def close(self) -> None: ...


EXECUTORS = ("asyncio",)


def make_executor(name: str) -> Executor:
    if name == "asyncio":
        from exec_service.executors.asyncio_executor import AsyncioExecutor

        return AsyncioExecutor()
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
