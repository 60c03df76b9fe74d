"""The execution service's scheduler: it takes each due schedule tick (models.schedules.
take_tick, exactly once across every service that shares the database) and has the engine
start the execution the tick made.

It sleeps until the earliest tick, but never longer than POLL_SECONDS, so that a schedule made
or changed through another process is seen within that time.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from exec_service.engine import Engine
from models import schedules
from models.db_unavailable import round_failed
from models.executions import now
from models.metrics import EXECUTIONS_STARTED
from models.outages import Outage

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# Schedules taken per look; more due at once are taken on the next, straight after.
BATCH = 100


class Scheduler:
    def __init__(self, engine: Engine, poll_seconds: float = POLL_SECONDS) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None
        self.outage = Outage(log, "the database (scheduler)")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="schedule-ticks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run_due(self) -> datetime | None:
        """Take every due tick; answer the next tick after them (None: no enabled schedule)."""
        while True:
            moment = now()
            upcoming = await schedules.next_ticks(BATCH)
            due = [schedule for schedule in upcoming if schedule.next_run_at <= moment]
            made = 0
            for schedule in due:
                execution_id = await schedules.take_tick(schedule, moment, self.engine.owner)
                if execution_id is not None:
                    made += 1
                    EXECUTIONS_STARTED.labels("schedule").inc()
                    log.info(
                        "schedule %d started execution %d",
                        schedule.id,
                        execution_id,
                        extra={"execution_id": execution_id, "workflow_id": schedule.workflow_id},
                    )
            if made:
                self.engine.start_pending()
            if len(due) < len(upcoming):
                return upcoming[len(due)].next_run_at
            if len(upcoming) < BATCH:
                # All were due and taken (or moved on by another service): look once more.
                return None if not upcoming else moment

    async def _loop(self) -> None:
        while True:
            try:
                earliest = await self.run_due()
                self.outage.answered()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                round_failed(exc, "taking schedule ticks", self.outage, "ticks wait for it", log)
                earliest = None
            wait = self.poll_seconds
            if earliest is not None:
                wait = min(wait, max(0.0, (earliest - now()).total_seconds()))
            await asyncio.sleep(wait)
