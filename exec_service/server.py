"""The execution service: engine, executor, bus and the gRPC server, started and stopped as one.

Standard `grpc.health.v1.Health` and server reflection are served beside it.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exec_service.bus import EventBus, make_bus
from exec_service.engine import Engine, EngineConfig
from exec_service.executors import Executor, make_executor
from exec_service.servicer import WorkflowExecutionServicer
from models.settings import Settings
from protos import execution_pb2, execution_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = execution_pb2.DESCRIPTOR.services_by_name["WorkflowExecution"].full_name
# Seconds in-flight calls get to finish on shutdown before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 5.0


class ExecutionService:
    def __init__(
        self,
        settings: Settings,
        executor: str,
        host: str,
        port: int,
        embedded_workers: int | None = None,
    ) -> None:
        self.settings = settings
        self.executor_name = executor
        self.embedded_workers = embedded_workers
        self.address = f"{host}:{port}"
        self.port = port
        self.bus: EventBus | None = None
        self.executor: Executor | None = None
        self.engine: Engine | None = None
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        settings = self.settings
        self.bus = make_bus(settings.redis_url, settings.redis_prefix)
        await self.bus.start()
        self.executor = make_executor(
            self.executor_name, settings.redis_url, settings.redis_prefix, self.embedded_workers
        )
        await self.executor.start()
        self.engine = Engine(
            self.executor,
            self.bus,
            EngineConfig(
                lease_seconds=settings.lease_seconds,
                retry_base_seconds=settings.retry_base_seconds,
            ),
        )
        await self.engine.start()

        server = grpc.aio.server()
        execution_pb2_grpc.add_WorkflowExecutionServicer_to_server(
            WorkflowExecutionServicer(self.engine, self.bus), server
        )
        health_servicer = health.HealthServicer()
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = server.add_insecure_port(self.address)
        await server.start()
        self.server = server
        log.info(
            "execution service on port %s (executor %s, bus %s, owner %s)",
            self.port,
            self.executor_name,
            self.bus.name,
            self.engine.owner,
        )

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(SHUTDOWN_GRACE_SECONDS)
        if self.engine is not None:
            await self.engine.stop()
        if self.executor is not None:
            await self.executor.close()
        if self.bus is not None:
            await self.bus.close()
