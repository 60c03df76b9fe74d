"""Runs actions in this process, on its event loop."""

from __future__ import annotations

from typing import Any

from exec_service import actions
from exec_service.actions.builtin import close_http_client
from exec_service.types import TaskRequest


class AsyncioExecutor:
    name = "asyncio"

    async def start(self) -> None:
        return None

    async def run(self, request: TaskRequest) -> dict[str, Any]:
        action = actions.get(request["action"])
        return await action(dict(request["parameters"]))

    async def close(self) -> None:
        await close_http_client()
