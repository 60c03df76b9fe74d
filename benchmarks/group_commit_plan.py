"""The plan and time PostgreSQL gives the group-commit statement (models/batched_changes.py).

    .venv/bin/python benchmarks/group_commit_plan.py [--executions 60000] [--sizes 2 250]

Creates a scratch database as bench_execution.py does (dropped at the end) with `--executions`
executions of ten task runs each, most of them ended and 300 in progress under one owner, then
runs the statement as the engine's pool does (a generic plan) on a batch of each size, inside a
transaction it rolls back, and prints the plan PostgreSQL chose with its timings
(auto_explain). What to look for:
every table reached through its primary key, and no scan of the change list once per change
(the fence's nested loop took 53 of 70 ms at 250 changes before the fix)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_execution import backend  # noqa: E402
from models.batched_changes import STATEMENT, Change, _arguments  # noqa: E402
from models.db import start_database, stop_database  # noqa: E402

OWNER = "plan-owner"
IN_FLIGHT = 300


class Rollback(Exception):
    pass


async def fill(connection: asyncpg.Connection, executions: int) -> None:
    await connection.execute(
        "INSERT INTO workflows (name, description, created_at, updated_at) "
        "VALUES ('plan', '', now(), now())"
    )
    workflow = await connection.fetchval("SELECT id FROM workflows")
    await connection.execute(
        "INSERT INTO executions (workflow_id, status, version, created_at, lease_owner) "
        "SELECT $1, CASE WHEN g > $2 - $3 THEN 'in_progress' ELSE 'completed' END, 1, now(), "
        "CASE WHEN g > $2 - $3 THEN $4 ELSE 'gone' END FROM generate_series(1, $2) g",
        workflow,
        executions,
        IN_FLIGHT,
        OWNER,
    )
    await connection.execute(
        "INSERT INTO task_runs (execution_id, task_id, max_attempts, attempts, interruptions, "
        '"order", name, status, execution_type, action, parameters) '
        "SELECT e.id, t, 1, 0, 0, t, 't', CASE WHEN e.status = 'in_progress' AND t = 0 "
        "THEN 'running' WHEN e.status = 'in_progress' THEN 'pending' ELSE 'completed' END, "
        "'sync', 'noop', '{}' FROM executions e, generate_series(0, 9) t"
    )
    await connection.execute("ANALYZE")


async def explain(connection: asyncpg.Connection, size: int) -> None:
    rows = await connection.fetch(
        "SELECT e.id, min(r.id) AS run FROM executions e JOIN task_runs r "
        "ON r.execution_id = e.id AND r.status = 'running' "
        "WHERE e.status = 'in_progress' GROUP BY e.id ORDER BY e.id LIMIT $1",
        size,
    )
    loop = asyncio.get_running_loop()
    finish = {"status": "completed", "output": "{}", "error": None}
    batch = [
        Change(row["id"], OWNER, row["run"], ("running",), finish, {}, loop.create_future())
        for row in rows
    ]
    notices: list[str] = []
    connection.add_log_listener(lambda _, message: notices.append(str(message.message)))
    try:
        async with connection.transaction():
            await connection.fetch(STATEMENT, *_arguments(OWNER, batch))
            await asyncio.sleep(0.1)  # notices arrive after the answer
            raise Rollback
    except Rollback:
        pass
    plan = [line for line in notices[-1].splitlines() if not line.startswith("Query Text")]
    print(f"--- a batch of {len(batch)} changes")
    print("\n".join(plan))


async def main(args: argparse.Namespace) -> None:
    async with backend("postgres-redis") as env:  # a scratch database, as the benchmark's
        url = env["DATABASE_URL"]
        await start_database(url)  # the schema, by the migrations
        await stop_database()
        connection = await asyncpg.connect(url)
        await fill(connection, args.executions)
        await connection.execute(
            "SET plan_cache_mode = force_generic_plan; LOAD 'auto_explain'; "
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on; "
            "SET auto_explain.log_level = notice"
        )
        for size in args.sizes:
            await explain(connection, size)
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--executions", type=int, default=60_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 250])
    asyncio.run(main(parser.parse_args()))
