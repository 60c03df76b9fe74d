"""Retention figures: how fast the pruner deletes, and what it costs running work.

    .venv/bin/python benchmarks/bench_prune.py [--executions 1000000] [--calm-seconds 30]

On a fresh PostgreSQL database (dropped at the end) and Redis namespace:
1. `workflow serve` (asyncio executor) makes the schema and a workflow of 10 tasks; this script
   then fills the database with `--executions` ended executions of it (10 task runs each),
   completed 30 days ago, by INSERT ... SELECT, and runs VACUUM ANALYZE.
2. Without pruning: p50 and p99 from ExecuteWorkflow to `completed` for a one-task workflow
   (one run after another for `--calm-seconds`, each watched through WatchExecution).
3. The server is restarted with WORKFLOW_RETENTION=1d, so its pruner starts deleting at once.
   While it does, the same latency is measured, one run after another, until the pruner is
   done; the p99 of the runs that ended during pruning is set beside (2). Pruning throughput
   is the rows deleted (executions and their task runs) over the seconds from the first
   deleted batch to the last (read from the lowest remaining execution id, an index lookup,
   every 0.2 s).

Target (issue 14): p99 during pruning at most 2x the p99 without.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_execution import (  # noqa: E402
    backend,
    machine,
    make_workflow,
    percentile,
    run_once,
    service,
)
from protos import execution_pb2_grpc as pb_grpc  # noqa: E402

TASKS_PER_EXECUTION = 10
FILL_CHUNK = 100_000


def postgres_url(database_url: str) -> str:
    return database_url.replace("postgres://", "postgresql://", 1)


async def fill(database_url: str, workflow_id: int, executions: int) -> None:
    """`executions` ended executions of the workflow, each with a run of each of its tasks."""
    connection = await asyncpg.connect(postgres_url(database_url))
    try:
        done = 0
        while done < executions:
            count = min(FILL_CHUNK, executions - done)
            async with connection.transaction():
                await connection.execute(
                    """
                    WITH made AS (
                        INSERT INTO executions (workflow_id, status, created_at, started_at,
                                                completed_at, version, triggered_by)
                        SELECT $1, 'completed', moment, moment, moment, 4, 'bench'
                        FROM (SELECT now() - interval '30 days' + g * interval '1 ms' AS moment
                              FROM generate_series(1, $2) AS g) AS moments
                        RETURNING id, completed_at
                    )
                    INSERT INTO task_runs (execution_id, task_id, name, "order", execution_type,
                                           action, parameters, max_attempts, status, attempts,
                                           interruptions, started_at, completed_at, output)
                    SELECT made.id, t.id, t.name, t."order", t.execution_type, t.action,
                           t.parameters, 1, 'completed', 1, 0, made.completed_at,
                           made.completed_at, '{"slept": 0}'
                    FROM made CROSS JOIN tasks AS t WHERE t.workflow_id = $1
                    """,
                    workflow_id,
                    count,
                )
            done += count
            print(f"  filled {done:,} executions", flush=True)
        await connection.execute("VACUUM ANALYZE executions")
        await connection.execute("VACUUM ANALYZE task_runs")
    finally:
        await connection.close()


async def latencies(target: str, workflow_id: int, seconds: float) -> list[float]:
    """One run after another for `seconds` (long enough to take in what a server does every
    few seconds anyway: lease rounds, autovacuum of its own new rows)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.WorkflowExecutionStub(channel)
        for _ in range(10):
            await run_once(stub, workflow_id)  # warm-up
        measured: list[float] = []
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            measured.append(await run_once(stub, workflow_id))
        return measured


async def lowest_id(connection: asyncpg.Connection) -> int | None:
    value = await connection.fetchval("SELECT min(id) FROM executions WHERE triggered_by='bench'")
    return int(value) if value is not None else None


async def while_pruning(
    database_url: str, target: str, workflow_id: int, first_id: int, total: int
) -> tuple[list[float], float, int]:
    """Latencies measured while the pruner works, the seconds it took, and the executions it
    deleted."""
    connection = await asyncpg.connect(postgres_url(database_url))
    began: float | None = None
    ended: float | None = None
    measured: list[float] = []
    try:
        progress = asyncio.Event()

        async def watch() -> None:
            nonlocal began, ended
            while True:
                lowest = await lowest_id(connection)
                moment = time.perf_counter()
                if began is None and (lowest is None or lowest > first_id):
                    began = moment
                    progress.set()
                if lowest is None:
                    ended = moment
                    return
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(progress.wait(), timeout=120)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.WorkflowExecutionStub(channel)
            while not watcher.done():
                seconds = await run_once(stub, workflow_id)
                if not watcher.done():  # only runs that ended while the pruner worked
                    measured.append(seconds)
        await watcher
    finally:
        await connection.close()
    assert began is not None
    assert ended is not None
    return measured, ended - began, total


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<28} p50 {percentile(values, 0.5) * 1000:7.2f} ms   "
        f"p99 {percentile(values, 0.99) * 1000:7.2f} ms   ({len(values)} runs)"
    )


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    async with backend("postgres-redis") as env:
        log = Path(tempfile.mkdtemp(prefix="bench-prune-")) / "servers.log"
        print(f"server log: {log}")
        with service(env, log, "asyncio", 1) as (url, target, _):
            big = make_workflow(url, TASKS_PER_EXECUTION)
            one = make_workflow(url, 1)
            print(f"filling {args.executions:,} ended executions of {TASKS_PER_EXECUTION} tasks")
            started = time.perf_counter()
            await fill(env["DATABASE_URL"], big, args.executions)
            print(f"  in {time.perf_counter() - started:.0f} s")
            connection = await asyncpg.connect(postgres_url(env["DATABASE_URL"]))
            first_id = await lowest_id(connection)
            await connection.close()
            assert first_id is not None
            calm = await latencies(target, one, args.calm_seconds)
        pruning_env = {**env, "WORKFLOW_RETENTION": "1d", "WORKFLOW_PRUNE_EVERY": "1h"}
        with service(pruning_env, log, "asyncio", 1) as (url, target, _):
            busy, seconds, deleted = await while_pruning(
                env["DATABASE_URL"], target, one, first_id, args.executions
            )
    rows = deleted * (1 + TASKS_PER_EXECUTION)
    print()
    print(line("no pruning", calm))
    print(line("while pruning", busy))
    print(
        f"pruning: {deleted:,} executions ({rows:,} rows with their task runs) in "
        f"{seconds:.1f} s: {deleted / seconds:,.0f} executions/s, {rows / seconds:,.0f} rows/s"
    )
    ratio = percentile(busy, 0.99) / percentile(calm, 0.99)
    print(f"p99 while pruning / without: {ratio:.2f}x (target <= 2x)")
    print(
        f"median while pruning / without: {statistics.median(busy) / statistics.median(calm):.2f}x"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument(
        "--calm-seconds",
        type=float,
        default=30.0,
        help="how long latency is measured without pruning",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
