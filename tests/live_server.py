"""Start the real commands (`cli.py serve`, `api`, `grpc`, `worker`) as subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
START_DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Process:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True)
class LiveServer(Process):
    url: str
    grpc_target: str


def environment(database_url: str, env: Mapping[str, str] | None) -> dict[str, str]:
    result = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Empty rather than absent, so that a `.env` file in the checkout cannot bring Redis back.
    result.update({"DATABASE_URL": database_url, "REDIS_URL": "", "PYTHONUNBUFFERED": "1"})
    result.update(env or {})
    return result


@contextmanager
def cli_process(arguments: Sequence[str], env: Mapping[str, str]) -> Iterator[Process]:
    """`cli.py ARGUMENTS` with this environment; stopped (SIGTERM, then SIGKILL) on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="cli-process-"))
    log_path = workdir / "process.log"
    # The log goes to a file: a pipe nobody reads would fill up and stall the process.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "cli.py"), *arguments],
            cwd=workdir,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Process(process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def live_server(database_url: str, env: Mapping[str, str] | None = None) -> Iterator[LiveServer]:
    """`workflow serve` on free ports with this database; no Redis unless `env` sets it."""
    port, grpc_port = free_port(), free_port()
    arguments = ["serve", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port)]
    with cli_process(arguments, environment(database_url, env)) as process:
        server = LiveServer(
            process.process,
            process.log_path,
            url=f"http://127.0.0.1:{port}",
            grpc_target=f"127.0.0.1:{grpc_port}",
        )
        wait_http_healthy(server, server.url)
        yield server


def wait_until(check: Callable[[], bool], process: Process, what: str) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"exited with {process.process.returncode}:\n{process.log()}")
        if check():
            return
        time.sleep(0.05)  # poll interval while the process boots
    raise TimeoutError(f"{what} not ready after {START_DEADLINE_SECONDS}s:\n{process.log()}")


def wait_http_healthy(process: Process, url: str) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, process, url)


def wait_grpc_serving(process: Process, target: str) -> None:
    def serving() -> bool:
        with grpc.insecure_channel(target) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    wait_until(serving, process, target)


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)  # poll interval
    raise AssertionError(f"timed out waiting for {what}")
