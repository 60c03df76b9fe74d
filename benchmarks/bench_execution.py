"""Execution-plane figures: how fast the engine runs no-op tasks.

    .venv/bin/python benchmarks/bench_execution.py [--backend postgres-redis|sqlite]
        [--executor asyncio|saq|ray] [--workers 1 2 4] [--seconds 10] [--raw-saq] [--repeat 1]
        [--templates off|on|both]

Starts the servers as subprocesses on a fresh database and drives them over gRPC from this
process, as a client would: for `asyncio`, `workflow serve`; for `saq`, `workflow grpc
--use-saq` beside `workflow api` and N `workflow worker` processes (concurrency 10 each); for
`ray`, `workflow grpc --use-ray` with a local Ray of N CPUs (N actors). `--workers` lists the
N to measure. `--raw-saq` also measures SAQ alone: N plain SAQ workers running a job that does
nothing, 3,000 jobs enqueued at once and timed until all are done. Prints:

  (a) wall time of one execution of 40 sequential no-op tasks, ExecuteWorkflow to the final
      message of WatchExecution (best and median of 5);
  (b) sustained no-op task completions per second with 200 executions of 10 tasks kept in
      flight for --seconds;
  (c) p50 and p99 from ExecuteWorkflow to `completed` for a one-task workflow (300 runs, one
      at a time), observed through WatchExecution.

`--templates on` gives every task one template (the previous task's status), which the engine
renders as the task starts; `--templates both` measures each figure without and then with it,
on the same servers.

During (b), and during raw SAQ's run, it reads from /proc the CPU time each group of processes
spent (the servers by role, all PostgreSQL and Redis server processes, this client) and prints
it per task. With `--raw-saq`, each row also prints raw SAQ's no-op jobs/s, its ratio to (b),
and the ratio of CPU per task (ours) to CPU per job (raw SAQ's); on a machine whose cores are
all busy, as on a 2-core one, the second says what each design costs and the first how the
cores were shared. With `--repeat N`, each row is measured N times, alternating with raw SAQ,
and the median ratios are printed too (single runs on a shared 2-core machine move by 20% or
more).

`postgres-redis` (the default) creates a PostgreSQL database (dropped at the end) and uses
Redis under a fresh key prefix; `sqlite` uses a temporary file and the in-process bus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this folder is on the path and the repository itself is not.
sys.path.insert(0, str(REPO))

from benchmarks.cpu_usage import CpuMeter, named, with_descendants  # noqa: E402
from protos import execution_pb2 as pb  # noqa: E402
from protos import execution_pb2_grpc as pb_grpc  # noqa: E402

PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
START_DEADLINE_SECONDS = 60.0
TERMINAL = {"completed", "failed", "cancelled"}
# How a row names its variant when --templates measures both.
TEMPLATED = {False: "", True: " [templated]"}


def machine() -> str:
    model = "unknown cpu"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def this_process() -> set[int]:
    """This client alone: the servers it started are its children, counted on their own."""
    return {os.getpid()}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def backend(name: str) -> AsyncIterator[dict[str, str]]:
    """The environment of a fresh database (and Redis namespace) for the service."""
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield {"DATABASE_URL": f"sqlite://{folder}/bench.sqlite3", "REDIS_URL": ""}
        return
    database = f"bench_{secrets.token_hex(4)}"
    prefix = f"bench-{secrets.token_hex(4)}:"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    try:
        yield {
            "DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}",
            "REDIS_URL": REDIS_URL,
            "WORKFLOW_REDIS_PREFIX": prefix,
        }
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        await delete_keys(prefix)


async def delete_keys(name: str) -> None:
    """Every Redis key under `name`, and SAQ's keys of queues named with it (under `saq:`)."""
    redis = Redis.from_url(REDIS_URL)
    for pattern in (name, f"saq:{name}", f"saq:job:{name}"):
        async for key in redis.scan_iter(match=pattern + "*"):
            await redis.delete(key)
    await redis.aclose()


def spawn(arguments: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(arguments, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_healthy(url: str, processes: list[subprocess.Popen[bytes]], log_path: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while True:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError(f"a server exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("server did not become healthy")
        time.sleep(0.1)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def service(
    env: dict[str, str], log_path: Path, executor: str, workers: int
) -> Iterator[tuple[str, str, dict[str, list[int]]]]:
    """The servers for one row, as subprocesses; yields (HTTP URL, gRPC target, process ids by
    role)."""
    http_port, grpc_port = free_port(), free_port()
    environment = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    environment.pop("RAY_ADDRESS", None)
    cli = [sys.executable, str(REPO / "cli.py")]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if executor == "asyncio":
            serve = ["serve", "--port", str(http_port), "--grpc-port", str(grpc_port)]
            processes.append(spawn([*cli, *serve], environment, log_path))
        else:
            flag = "--use-saq" if executor == "saq" else "--use-ray"
            grpc_env = {**environment, "WORKFLOW_RAY_CPUS": str(workers)}
            grpc_args = ["grpc", "--port", str(grpc_port), flag]
            processes.append(spawn([*cli, *grpc_args], grpc_env, log_path))
            api_env = {**environment, "GRPC_TARGET": f"127.0.0.1:{grpc_port}"}
            processes.append(spawn([*cli, "api", "--port", str(http_port)], api_env, log_path))
            for _ in range(workers if executor == "saq" else 0):
                worker = ["worker", "--concurrency", "10"]
                processes.append(spawn([*cli, *worker], environment, log_path))
        url = f"http://127.0.0.1:{http_port}"
        wait_healthy(url, processes, log_path)
        pids = [process.pid for process in processes]
        if executor == "asyncio":
            roles = {"serve": pids}
        else:
            roles = {"grpc": pids[:1], "api": pids[1:2], "workers": pids[2:]}
        yield url, f"127.0.0.1:{grpc_port}", roles
    finally:
        stop(processes)


def task_parameters(n: int, templated: bool) -> dict[str, Any]:
    """A no-op task's parameters; templated, with one template: the previous task's status
    (the first task: the execution's id), rendered by the engine as the task starts."""
    if not templated:
        return {}
    source = f"{{{{ tasks.t{n - 1}.status }}}}" if n else "{{ execution.id }}"
    return {"duration": 0, "seen": source}


def make_workflow(url: str, tasks: int, templated: bool = False) -> int:
    body = {
        "name": f"{tasks} no-op tasks",
        "tasks": [
            {"name": f"t{n}", "order": n, "parameters": task_parameters(n, templated)}
            for n in range(tasks)
        ],
    }
    response = httpx.post(f"{url}/workflows/", json=body, timeout=30)
    response.raise_for_status()
    workflow_id: int = response.json()["id"]
    return workflow_id


async def run_once(stub: Any, workflow_id: int) -> float:
    """Seconds from ExecuteWorkflow to the terminal message of WatchExecution."""
    started = time.perf_counter()
    answer = await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id=workflow_id))
    request = pb.GetWorkflowStatusRequest(execution_id=answer.execution_id)
    async for update in stub.WatchExecution(request):
        if update.status in TERMINAL:
            if update.status != "completed":
                raise RuntimeError(f"execution {answer.execution_id} ended {update.status}")
            break
    return time.perf_counter() - started


async def sequential_forty(stub: Any, url: str, templated: bool) -> list[float]:
    workflow_id = make_workflow(url, 40, templated)
    await run_once(stub, workflow_id)  # warm-up
    return [await run_once(stub, workflow_id) for _ in range(5)]


async def wait_done(stub: Any, execution_id: int) -> None:
    request = pb.GetWorkflowStatusRequest(execution_id=execution_id)
    async for update in stub.WatchExecution(request):
        if update.status in TERMINAL:
            return


async def throughput(
    stub: Any, url: str, seconds: float, meter: CpuMeter, templated: bool, in_flight: int = 200
) -> tuple[float, int]:
    """No-op task completions per second, `in_flight` executions of 10 tasks at all times, and
    the number of tasks completed (`meter` runs meanwhile)."""
    workflow_id = make_workflow(url, 10, templated)
    completed = 0
    stop_at = time.perf_counter() + seconds

    async def lane() -> None:
        nonlocal completed
        while time.perf_counter() < stop_at:
            answer = await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id=workflow_id))
            await wait_done(stub, answer.execution_id)
            completed += 10

    began = time.perf_counter()
    meter.start()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    meter.stop()
    return completed / (time.perf_counter() - began), completed


async def latencies(stub: Any, url: str, templated: bool, runs: int = 300) -> list[float]:
    workflow_id = make_workflow(url, 1, templated)
    for _ in range(10):
        await run_once(stub, workflow_id)  # warm-up
    return [await run_once(stub, workflow_id) for _ in range(runs)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def workers_up(queue: Any) -> None:
    """Wait until a worker runs a job. SAQ's own sweep may abort the first one, enqueued as a
    worker starts (SAQ issues #124, #277): then try again."""
    from saq.queue.base import JobError

    for _ in range(5):
        with contextlib.suppress(JobError):
            await queue.apply("noop", timeout=30)
            return
    raise RuntimeError("no raw SAQ worker ran a job")


async def raw_saq(workers: int, jobs: int = 3000) -> tuple[float, float]:
    """No-op SAQ jobs per second with `workers` plain SAQ worker processes: `jobs` enqueued at
    once, timed until the queue has none left incomplete; and the CPU ms spent per job."""
    from saq.queue.redis import RedisQueue

    name = f"saq-bench-{secrets.token_hex(4)}"
    env = {**os.environ, "SAQ_BENCH_REDIS_URL": REDIS_URL, "SAQ_BENCH_QUEUE": name}
    saq_cli = str(Path(sys.executable).parent / "saq")
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "saq.log"
        processes = [
            spawn([saq_cli, "benchmarks.saq_noop.settings"], env, log_path) for _ in range(workers)
        ]
        queue = RedisQueue(Redis.from_url(REDIS_URL, max_connections=1024), name=name)
        await queue.connect()
        try:
            await workers_up(queue)
            meter = CpuMeter(
                {
                    "workers": with_descendants(*(process.pid for process in processes)),
                    "Redis": named("redis-server"),
                    "client": this_process,
                }
            )
            began = time.perf_counter()
            meter.start()
            await asyncio.gather(*(queue.enqueue("noop") for _ in range(jobs)))
            while await queue.count("incomplete"):  # noqa: ASYNC110 - SAQ has no "drained" event
                await asyncio.sleep(0.02)
            meter.stop()
            rate = jobs / (time.perf_counter() - began)
            print(f"raw SAQ CPU per job, ms: {meter.per_unit_ms(jobs)}")
            return rate, meter.total_ms(jobs)
        finally:
            await queue.disconnect()
            stop(processes)
            await delete_keys(name)


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    counts = args.workers if args.executor != "asyncio" else [1]
    for workers in counts:
        label = "" if args.executor == "asyncio" else f", {workers} worker(s)"
        ratios, cpu_ratios = [], []
        for run in range(args.repeat):
            round_label = f", run {run + 1} of {args.repeat}" if args.repeat > 1 else ""
            print(
                f"\nbackend: {args.backend}, executor: {args.executor}{label}{round_label}",
                flush=True,
            )
            ours, our_cpu = await measure(args, workers)
            if args.raw_saq:
                rate, raw_cpu = await raw_saq(workers)
                ratios.append(rate / ours)
                cpu_ratios.append(our_cpu / raw_cpu)
                print(f"raw SAQ, {workers} worker process(es): {rate:,.0f} no-op jobs/s")
                print(f"raw SAQ / (b): {rate / ours:.2f}  (target <= 2)")
                print(
                    f"CPU per task, ours / raw SAQ's per job: {our_cpu / raw_cpu:.2f}", flush=True
                )
        if len(ratios) > 1:
            # Ours and raw SAQ alternate, so that a machine slowing down mid-way weighs on both.
            print(f"raw SAQ / (b), median of {len(ratios)}: {statistics.median(ratios):.2f}")
            print(f"CPU ours / raw SAQ, median: {statistics.median(cpu_ratios):.2f}")


async def measure(args: argparse.Namespace, workers: int) -> tuple[float, float]:
    """Print (a), (b) and (c) for one row; return (b) and the CPU ms all processes spent per
    task during (b)."""
    async with backend(args.backend) as env:
        env["WORKFLOW_LEASE_SECONDS"] = "10"
        with (
            tempfile.TemporaryDirectory() as folder,
            service(env, Path(folder) / "server.log", args.executor, workers) as (
                url,
                target,
                roles,
            ),
        ):
            async with grpc.aio.insecure_channel(target) as channel:
                health: Any = health_pb2_grpc.HealthStub(channel)
                # Ready when the execution service answers (a local Ray takes seconds to start).
                await health.Check(
                    health_pb2.HealthCheckRequest(service=""), wait_for_ready=True, timeout=60
                )
                stub = pb_grpc.WorkflowExecutionStub(channel)
                groups = {role: with_descendants(*pids) for role, pids in roles.items() if pids}
                groups |= {
                    "PostgreSQL": named("postgres"),
                    "Redis": named("redis-server"),
                    "client": this_process,
                }
                variants = {"off": [False], "on": [True], "both": [False, True]}[args.templates]
                # With both, each figure is taken without and with templates in turn, on the
                # same servers: side by side, so that the machine's drift weighs on both.
                for templated in variants:
                    forty = await sequential_forty(stub, url, templated)
                    print(
                        f"(a){TEMPLATED[templated]} 40 sequential no-op tasks: "
                        f"best {min(forty) * 1000:.0f} ms, "
                        f"median {statistics.median(forty) * 1000:.0f} ms  (target <= 200 ms)"
                    )
                results = []
                for templated in variants:
                    meter = CpuMeter(groups)
                    rate, tasks = await throughput(stub, url, args.seconds, meter, templated)
                    print(
                        f"(b){TEMPLATED[templated]} sustained no-op completions, 200 "
                        f"executions x 10 tasks in flight: {rate:,.0f} tasks/s  "
                        "(target >= 1,000/s)"
                    )
                    print(f"    CPU per task during (b), ms: {meter.per_unit_ms(tasks)}")
                    results.append((rate, meter.total_ms(tasks)))
                for templated in variants:
                    one = await latencies(stub, url, templated)
                    print(
                        f"(c){TEMPLATED[templated]} ExecuteWorkflow -> completed, one task: "
                        f"p50 {percentile(one, 0.5) * 1000:.1f} ms, "
                        f"p99 {percentile(one, 0.99) * 1000:.1f} ms  (target p50 <= 10 ms)"
                    )
                return results[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["postgres-redis", "sqlite"], default="postgres-redis")
    parser.add_argument("--executor", choices=["asyncio", "saq", "ray"], default="asyncio")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--raw-saq", action="store_true")
    parser.add_argument(
        "--templates",
        choices=["off", "on", "both"],
        default="off",
        help="one template per task (the previous task's status); both: without, then with",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each row this many times (figures vary)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
