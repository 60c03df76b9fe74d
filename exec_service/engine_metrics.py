"""The engine's gauges, read when scraped: executions running here, and pending ones.

Running is the number of runners of this process's engines: nothing is counted on the way.
Pending is the database's count, which every engine sharing the database sees alike. A scrape
never waits for the database: it answers the last count, and when that is older than
PENDING_REFRESH_SECONDS it asks the engine's event loop to count again (one query, only while
someone scrapes). So the value is the one read at the previous scrape, or earlier.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exec_service import actions
from models import executions as store
from models.metrics import OTHER

if TYPE_CHECKING:
    from exec_service.engine import Engine

log = logging.getLogger(__name__)

PENDING_REFRESH_SECONDS = 5.0


def action_label(name: str) -> str:
    """An action's name as a label value: one of the installed actions, else `other` (the
    set stays bounded whatever a queue or a stored task says)."""
    return name if name in actions.available() else OTHER


class EngineCollector(Collector):
    def __init__(self) -> None:
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._counted_at = -PENDING_REFRESH_SECONDS
        self._counting = False

    def started(self, engine: Engine) -> None:
        self._engines.add(engine)
        self._loop = asyncio.get_running_loop()

    def stopped(self, engine: Engine) -> None:
        self._engines.discard(engine)
        if not self._engines:
            self._loop = None

    def collect(self) -> Iterator[Metric]:
        engines = list(self._engines)
        if not engines:
            return  # no engine in this process (`workflow api`): nothing to say
        yield GaugeMetricFamily(
            "workflow_executions_running",
            "Executions whose runner is in this process.",
            value=sum(len(engine.runners) for engine in engines),
        )
        self._refresh_soon()
        yield GaugeMetricFamily(
            "workflow_executions_pending",
            "Executions waiting for room on an engine (the database's count, as of the "
            f"previous scrape; at most every {PENDING_REFRESH_SECONDS:g} s).",
            value=self._pending,
        )

    def _refresh_soon(self) -> None:
        """Count again on the engine's loop, if due (callable from any thread: the metrics
        server of `--metrics-port` scrapes on a thread of its own)."""
        loop = self._loop
        moment = time.monotonic()
        if loop is None or self._counting or moment - self._counted_at < PENDING_REFRESH_SECONDS:
            return
        self._counting = True
        self._counted_at = moment
        try:
            loop.call_soon_threadsafe(self._start_count)
        except RuntimeError:  # the loop has closed meanwhile
            self._counting = False

    def _start_count(self) -> None:
        task = asyncio.get_running_loop().create_task(self._count(), name="metrics-pending")
        _counts.add(task)
        task.add_done_callback(_counts.discard)

    async def _count(self) -> None:
        try:
            self._pending = await store.count_pending()
        except Exception as exc:
            # (A database outage is the engine's to report.) The last count stays.
            log.debug("counting pending executions failed: %s", exc)
        finally:
            self._counting = False


# The counts under way (the loop keeps only weak references to its tasks).
_counts: set[asyncio.Task[None]] = set()

ENGINES = EngineCollector()
REGISTRY.register(ENGINES)
