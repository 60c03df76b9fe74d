"""Servers of a test's own: Redis and PostgreSQL on free ports, which a test may stop, kill and
start again on the same port (so that clients reconnect), and a counting HTTP server."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.live_server import free_port

START_SECONDS = 10.0


class OwnRedis:
    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        # Nothing kept on disk: a restart comes back empty, the harder case for its clients.
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)  # poll while it starts
        raise TimeoutError(f"redis-server on {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def own_redis() -> Iterator[OwnRedis]:
    folder = Path(tempfile.mkdtemp(prefix="own-redis-"))
    server = OwnRedis(free_port(), folder)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(folder, ignore_errors=True)


class OwnPostgres:
    """A PostgreSQL cluster of a test's own (`initdb` into a temporary folder, as the
    unprivileged `postgres` user when the tests run as root), stopped and started with
    `pg_ctl` on its own port."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.data = folder / "data"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        binary = shutil.which(command[0])
        if binary is None:
            raise RuntimeError(f"{command[0]} is not installed (Debian package postgresql)")
        # PostgreSQL refuses to run as root.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, binary, *command[1:]], check=True, capture_output=True, timeout=60)

    def create(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """As `pg_ctl stop -m fast`: sessions are ended, the server goes down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    folder = Path(tempfile.mkdtemp(prefix="own-postgres-"))
    server = OwnPostgres(free_port(), folder)
    server.create()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


class CountingServer:
    """An HTTP server in this process that answers every request 200 after 0.2 s, recording
    when each path was called and when each answer was sent: the `http` tasks of the fault
    tests and benchmark name their execution and task in the path, so a task called twice
    shows as a path called twice."""

    def __init__(self) -> None:
        self.started: dict[str, list[float]] = collections.defaultdict(list)
        self.answered: dict[str, list[float]] = collections.defaultdict(list)
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def calls(self) -> collections.Counter[str]:
        return collections.Counter({path: len(times) for path, times in self.started.items()})

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode()
            self.started[path].append(time.monotonic())
            await asyncio.sleep(0.2)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                b"connection: close\r\n\r\n{}"
            )
            await writer.drain()
            self.answered[path].append(time.monotonic())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
