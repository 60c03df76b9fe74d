"""Announcement bytes per task (issue 16): what an execution publishes to Redis as it runs.

    .venv/bin/python benchmarks/bench_announcements.py [--tasks 10 100 1000]

Starts `workflow serve` (asyncio executor) on a fresh PostgreSQL database with Redis under a
fresh key prefix, subscribes to every announcement channel under that prefix, runs one
execution of N sequential no-op tasks for each N, and prints the bytes announced for it, in
all and per task. With whole snapshots in every announcement, bytes per task grew with N (a
10,000-task execution wrote 17.8 GB); with changes only, they stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import grpc
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_execution import (  # noqa: E402
    REDIS_URL,
    backend,
    machine,
    make_workflow,
    run_once,
    service,
)
from protos import execution_pb2_grpc as pb_grpc  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    async with backend("postgres-redis") as env:
        log = Path(tempfile.mkdtemp(prefix="bench-announce-")) / "servers.log"
        redis = Redis.from_url(REDIS_URL)
        pubsub = redis.pubsub()
        await pubsub.psubscribe(env["WORKFLOW_REDIS_PREFIX"] + "events:execution:*")
        counted: dict[bytes, int] = {}

        async def count() -> None:
            async for message in pubsub.listen():
                if message["type"] == "pmessage":
                    channel = message["channel"]
                    counted[channel] = counted.get(channel, 0) + len(message["data"])

        counter = asyncio.create_task(count())
        try:
            with service(env, log, "asyncio", 1) as (url, target, _):
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = pb_grpc.WorkflowExecutionStub(channel)
                    print(f"{'tasks':>6} {'bytes announced':>16} {'bytes per task':>15}")
                    for tasks in args.tasks:
                        workflow_id = make_workflow(url, tasks)
                        before = dict(counted)
                        seconds = await run_once(stub, workflow_id)
                        await asyncio.sleep(0.5)  # the last announcements reach Redis
                        new = {k: v for k, v in counted.items() if before.get(k) != v}
                        total = sum(new.values())
                        print(
                            f"{tasks:>6} {total:>16,} {total / tasks:>15,.0f}"
                            f"   ({seconds:.1f} s to run)"
                        )
        finally:
            counter.cancel()
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await redis.aclose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 100, 1000])
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
