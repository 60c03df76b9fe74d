"""Start the real server as a subprocess (`cli.py serve`) and wait until it is healthy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
START_DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LiveServer:
    url: str
    grpc_target: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def live_server(database_url: str, env: Mapping[str, str] | None = None) -> Iterator[LiveServer]:
    """`workflow serve` on a free port with this database; no Redis unless `env` sets it."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Empty rather than absent, so that a `.env` file in the checkout cannot bring Redis back.
    environment.update({"DATABASE_URL": database_url, "REDIS_URL": "", "PYTHONUNBUFFERED": "1"})
    environment.update(env or {})
    workdir = Path(tempfile.mkdtemp(prefix="live-server-"))
    log_path = workdir / "server.log"
    grpc_port = free_port()
    command = [sys.executable, str(REPO / "cli.py"), "serve", "--host", "127.0.0.1"]
    # The log goes to a file: a pipe nobody reads would fill up and stall the server.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--grpc-port", str(grpc_port)],
            cwd=workdir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(
        url=f"http://127.0.0.1:{port}",
        grpc_target=f"127.0.0.1:{grpc_port}",
        process=process,
        log_path=log_path,
    )
    try:
        _wait_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(server: LiveServer) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            response = httpx.get(f"{server.url}/healthz", timeout=1, trust_env=False)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)  # poll interval while the server boots
    raise TimeoutError(f"not healthy after {START_DEADLINE_SECONDS}s:\n{server.log()}")
