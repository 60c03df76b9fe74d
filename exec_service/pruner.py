"""The execution service's pruner: every WORKFLOW_PRUNE_EVERY, the ended executions older
than WORKFLOW_RETENTION are deleted (models.retention.prune, in batches)."""

from __future__ import annotations

import asyncio
import logging

from models.retention import cutoff, prune

log = logging.getLogger(__name__)


class Pruner:
    def __init__(self, retention_seconds: float, every_seconds: float) -> None:
        self.retention_seconds = retention_seconds
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="execution-pruner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                deleted = await prune(cutoff(self.retention_seconds))
                if deleted:
                    log.info("pruned %d ended executions", deleted)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pruning failed; trying again next round")
            await asyncio.sleep(self.every_seconds)
