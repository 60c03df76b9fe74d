"""The execution service: engine, executor, bus and the gRPC server, started and stopped as one.

Standard `grpc.health.v1.Health` and server reflection are served beside it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exec_service.authz import AuthInterceptor, method_roles
from exec_service.bus import EventBus, make_bus
from exec_service.engine import Engine, EngineConfig
from exec_service.executors import Executor, make_executor
from exec_service.grpc_metrics import GrpcMetrics
from exec_service.pruner import Pruner
from exec_service.rate_limit import StartRate
from exec_service.scheduler import Scheduler
from exec_service.servicer import WorkflowExecutionServicer
from models import api_keys, tracing
from models.access import Authenticator
from models.settings import Settings
from protos import execution_pb2, execution_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = execution_pb2.DESCRIPTOR.services_by_name["WorkflowExecution"].full_name
# Seconds in-flight calls get to finish on shutdown before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class ServerTls:
    """The gRPC server's certificate and key (PEM files), and with `client_ca`, mutual TLS:
    only clients with a certificate signed by that CA may connect."""

    cert: str
    key: str
    client_ca: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        with open(self.cert, "rb") as cert, open(self.key, "rb") as key:
            pair = (key.read(), cert.read())
        root = None
        if self.client_ca is not None:
            with open(self.client_ca, "rb") as ca:
                root = ca.read()
        return grpc.ssl_server_credentials(
            [pair], root_certificates=root, require_client_auth=root is not None
        )


class ExecutionService:
    def __init__(
        self,
        settings: Settings,
        executor: str,
        host: str,
        port: int,
        embedded_workers: int | None = None,
        tls: ServerTls | None = None,
        authenticator: Authenticator | None = None,
        local_socket: bool = False,
    ) -> None:
        self.settings = settings
        self.tls = tls
        # Shared with the HTTP plane in `workflow serve`: one cache of keys per process.
        self.authenticator = authenticator or api_keys.authenticator(
            settings.admin_key, settings.auth_enabled
        )
        # With TLS in `workflow serve`: where the HTTP plane reaches this service (a unix
        # socket in a private folder, so that it needs no certificate for itself).
        self.local_target: str | None = None
        self.executor_name = executor
        self.embedded_workers = embedded_workers
        self.address = f"{host}:{port}"
        self.port = port
        self.bus: EventBus | None = None
        self.executor: Executor | None = None
        self.engine: Engine | None = None
        self.server: grpc.aio.Server | None = None
        self.local_socket = local_socket
        self.pruner: Pruner | None = None
        self.scheduler: Scheduler | None = None
        self._local_folder: str | None = None

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
                max_running=settings.max_running,
                interruption_budget_seconds=settings.interruption_budget_seconds,
            ),
        )
        await self.engine.start()
        if settings.retention_seconds is not None:
            self.pruner = Pruner(settings.retention_seconds, settings.prune_every_seconds)
            self.pruner.start()
        self.scheduler = Scheduler(self.engine)
        self.scheduler.start()

        servicer = WorkflowExecutionServicer(
            self.engine, self.bus, self.authenticator, StartRate(settings.max_starts_per_second)
        )
        roles = method_roles(SERVICE_NAME, servicer)
        # Traces and metrics first: they see the calls the authentication refuses too.
        interceptors = [
            *tracing.grpc_server_interceptors(SERVICE_NAME),
            GrpcMetrics(),
            AuthInterceptor(self.authenticator, roles),
        ]
        server = grpc.aio.server(interceptors=interceptors)
        execution_pb2_grpc.add_WorkflowExecutionServicer_to_server(servicer, server)
        health_servicer = health.HealthServicer()
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if self.tls is None:
            self.port = server.add_insecure_port(self.address)
        else:
            self.port = server.add_secure_port(self.address, self.tls.credentials())
            if self.local_socket:
                self._local_folder = tempfile.mkdtemp(prefix="workflow-grpc-")
                self.local_target = f"unix:{self._local_folder}/execution.sock"
                server.add_insecure_port(self.local_target)
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
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.pruner is not None:
            await self.pruner.stop()
        if self.server is not None:
            await self.server.stop(SHUTDOWN_GRACE_SECONDS)
        if self.engine is not None:
            await self.engine.stop()
        if self.executor is not None:
            await self.executor.close()
        if self.bus is not None:
            await self.bus.close()
        if self._local_folder is not None:
            shutil.rmtree(self._local_folder, ignore_errors=True)
