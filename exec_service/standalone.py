"""`workflow grpc`: the execution service alone, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from exec_service.server import ExecutionService, ServerTls
from models.db import start_database, stop_database
from models.settings import Settings

log = logging.getLogger(__name__)


async def run_execution_service(
    settings: Settings, executor: str, host: str, port: int, tls: ServerTls | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await start_database(settings.database_url)
    service = ExecutionService(settings, executor, host, port, tls=tls)
    try:
        await service.start()
        await stop.wait()
        log.info("shutting down: running executions are handed over, not lost")
    finally:
        await service.stop()
        await stop_database()
