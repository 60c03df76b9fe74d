"""The execution service's pruner: every WORKFLOW_PRUNE_EVERY, the ended executions older
than WORKFLOW_RETENTION are deleted (models.retention.prune, in batches)."""

from __future__ import annotations

import asyncio
import logging

from models.db_unavailable import round_failed
from models.outages import Outage
from models.retention import cutoff, prune

log = logging.getLogger(__name__)

# Between batches the pruner rests this many times as long as the batch took: a backlog of a
# million executions is cleared more slowly, and running work keeps its latency (the p99 of a
# one-task execution at most 2x while pruning, benchmarks/bench_prune.py).
PRUNE_REST = 2.0


class Pruner:
    def __init__(self, retention_seconds: float, every_seconds: float) -> None:
        self.retention_seconds = retention_seconds
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None
        self.outage = Outage(log, "the database (pruner)")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="execution-pruner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                deleted = await prune(cutoff(self.retention_seconds), rest=PRUNE_REST)
                self.outage.answered()
                if deleted:
                    log.info("pruned %d ended executions", deleted)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                waiting = "ended executions wait to be deleted"
                round_failed(exc, "pruning", self.outage, waiting, log)
            await asyncio.sleep(self.every_seconds)
