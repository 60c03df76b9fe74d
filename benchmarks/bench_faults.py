"""Fault figures (issue 16): what clients and tasks see when Redis or PostgreSQL goes away.

    .venv/bin/python benchmarks/bench_faults.py [--rows saq:redis asyncio:redis asyncio:postgres]
        [--seconds 60] [--fault-at 20] [--fault-for 10] [--loops 20]

Each row starts a PostgreSQL cluster and a Redis server of its own (tests/faults/own_services.py:
`initdb` as the unprivileged postgres user, a redis-server that keeps nothing on disk), then
`workflow serve --executor E` on them, and a counting HTTP server in this process that answers
every request 200 after 0.2 s. `--loops` client loops each start an execution of a workflow of 5
`http` tasks aimed at the counting server (each call's path names its execution and task), and
follow it over REST until it ends, for `--seconds`; 503 answers are retried after half a second.
At `--fault-at` seconds the row's service goes away for `--fault-for` seconds: Redis is killed
(and comes back empty), PostgreSQL is stopped with `pg_ctl stop -m fast`; then it is started
again on the same port.

Prints per row: executions ended by status; task calls made more than once, and how many of
those had their first call answered before the fault began; the client's answers by status
code during the fault; seconds from the service's return to the first execution started after
it that completed. Targets: 0 failed, 0 answered calls repeated, 0 answers of 500, recovery at
most 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_execution import machine  # noqa: E402
from tests.faults.own_services import CountingServer, own_postgres, own_redis  # noqa: E402
from tests.live_server import cli_process, environment, free_port, wait_http_healthy  # noqa: E402

TASKS = 5
TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class Client:
    fault: tuple[float, float] = (0.0, 0.0)  # monotonic start and end of the fault
    codes_during: collections.Counter[int] = field(default_factory=collections.Counter)
    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    # execution id -> (monotonic time it was started, monotonic time it was seen ended)
    executions: dict[int, tuple[float, float | None]] = field(default_factory=dict)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    async def call(self, http: httpx.AsyncClient, method: str, path: str) -> httpx.Response | None:
        moment = time.monotonic()
        try:
            answer = await http.request(method, path, json={} if method == "POST" else None)
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.5)
            return None
        self.codes[answer.status_code] += 1
        if self.fault[0] <= moment <= self.fault[1]:
            self.codes_during[answer.status_code] += 1
        if answer.status_code != 200:
            await asyncio.sleep(0.5)  # 503: as Retry-After says, sooner
            return None
        return answer

    async def loop(self, http: httpx.AsyncClient, workflow_id: int, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            made = await self.call(http, "POST", f"/workflows/{workflow_id}/execute")
            if made is None:
                continue
            execution_id = made.json()["id"]
            self.executions[execution_id] = (time.monotonic(), None)
            while True:
                read = await self.call(http, "GET", f"/executions/{execution_id}")
                if read is not None and read.json()["status"] in TERMINAL:
                    self.executions[execution_id] = (
                        self.executions[execution_id][0],
                        time.monotonic(),
                    )
                    break
                await asyncio.sleep(0.1)  # poll interval


async def row(executor: str, fault: str, args: argparse.Namespace) -> None:
    calls = CountingServer()
    await calls.start()
    port = calls.port
    client = Client()
    with own_postgres() as postgres, own_redis() as redis, tempfile.TemporaryDirectory():
        http_port, grpc_port = free_port(), free_port()
        env = environment(
            postgres.url,
            {
                "REDIS_URL": redis.url,
                "WORKFLOW_HTTP_ALLOW": "127.0.0.1",
            },
        )
        arguments = ["serve", "--port", str(http_port), "--grpc-port", str(grpc_port)]
        arguments += ["--executor", executor]
        with cli_process(arguments, env) as process:
            url = f"http://127.0.0.1:{http_port}"
            await asyncio.to_thread(wait_http_healthy, process, url)
            limits = httpx.Limits(max_connections=args.loops * 2, keepalive_expiry=2)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
                tasks = [
                    {
                        "name": f"t{n}",
                        "order": n,
                        "action": "http",
                        "parameters": {
                            "url": f"http://127.0.0.1:{port}/{{{{ execution.id }}}}/t{n}"
                        },
                    }
                    for n in range(TASKS)
                ]
                made = await http.post("/workflows/", json={"name": "calls", "tasks": tasks})
                made.raise_for_status()
                workflow_id = made.json()["id"]
                began = time.monotonic()
                client.fault = (began + args.fault_at, began + args.fault_at + args.fault_for)
                stop_at = began + args.seconds
                loops = asyncio.gather(
                    *(client.loop(http, workflow_id, stop_at) for _ in range(args.loops))
                )
                await asyncio.sleep(args.fault_at)
                await asyncio.to_thread(redis.kill if fault == "redis" else postgres.stop)
                await asyncio.sleep(args.fault_for)
                await asyncio.to_thread(redis.start if fault == "redis" else postgres.start)
                back = time.monotonic()
                await asyncio.wait_for(loops, args.seconds + 120)
                statuses: collections.Counter[str] = collections.Counter()
                for execution_id in client.executions:
                    read = await http.get(f"/executions/{execution_id}")
                    statuses[read.json()["status"]] += 1
    await calls.close()
    report(executor, fault, args, calls, client, statuses, back)


def report(
    executor: str,
    fault: str,
    args: argparse.Namespace,
    calls: CountingServer,
    client: Client,
    statuses: collections.Counter[str],
    back: float,
) -> None:
    fault_began = client.fault[0]
    repeated = {path: times for path, times in calls.started.items() if len(times) > 1}
    answered_first = sum(
        1 for path in repeated if calls.answered.get(path) and calls.answered[path][0] < fault_began
    )
    after = [ended for started, ended in client.executions.values() if started >= back and ended]
    recovery = f"{min(after) - back:.1f} s" if after else "none completed"
    print(f"\n{executor} executor, {fault} down {args.fault_for:g} s at {args.fault_at:g} s:")
    print(f"  executions ended: {dict(statuses)}")
    print(
        f"  task calls made more than once: {len(repeated)} "
        f"(first call answered before the fault: {answered_first})"
    )
    print(f"  answers during the fault: {dict(sorted(client.codes_during.items()))}")
    print(f"  answers in all: {dict(sorted(client.codes.items()))}")
    if client.errors:
        print(f"  client errors: {dict(client.errors)}")
    print(f"  recovery (service back -> first new execution completed): {recovery}")


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(
        f"load: {args.loops} loops, executions of {TASKS} http tasks of 0.2 s, "
        f"{args.seconds:g} s per row"
    )
    for spec in args.rows:
        executor, fault = spec.split(":")
        await row(executor, fault, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["saq:redis", "asyncio:redis", "asyncio:postgres", "saq:postgres"],
        help="EXECUTOR:FAULT pairs (executor asyncio or saq; fault redis or postgres)",
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fault-at", type=float, default=20.0)
    parser.add_argument("--fault-for", type=float, default=10.0)
    parser.add_argument("--loops", type=int, default=20)
    args = parser.parse_args(argv)
    for spec in args.rows:
        executor, _, fault = spec.partition(":")
        if executor not in {"asyncio", "saq"} or fault not in {"redis", "postgres"}:
            parser.error(f"bad row {spec!r}: EXECUTOR:FAULT, e.g. saq:redis")
    return args


if __name__ == "__main__":
    if os.geteuid() == 0 and not Path("/usr/sbin/runuser").exists():
        sys.exit("running as root needs runuser (util-linux) to start PostgreSQL as postgres")
    asyncio.run(main(parse_args()))
