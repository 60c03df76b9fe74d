"""How long one large read holds the server's event loop (issue 16: "no request can block the
loop for more than ~100 ms").

    .venv/bin/python benchmarks/bench_loop_block.py [--workflows 100] [--tasks 1000]
        [--executions 20] [--rounds 3] [--database sqlite|postgres]

Starts `workflow serve` (asyncio executor, in-process cache) on a fresh database, creates
`--workflows` workflows of `--tasks` tasks each (the largest a workflow may have by default), and
runs `--executions` executions of one of them to the end. Then, for each read below, a thread
asks `/healthz` back to back while the read runs; a health answer that took long is time the
loop spent on the read and nothing else. Prints, per read, the read's own time, the longest
health answer during it and how many took over 100 ms (the baseline: health answers with no
read).

Reads: the GraphQL page of workflows with every task field (first and again: the cache is
then warm; then the same through a fragment, which the GraphQL executor answers), the REST page
of the same workflows (first and again), the GraphQL page of executions with their task runs,
and the REST answer of one execution.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_execution import machine  # noqa: E402
from tests.live_server import LiveServer, live_server  # noqa: E402

WORKFLOWS_QUERY = """query($limit: Int!) { workflows(limit: $limit) { id name description
  createdAt tasks { id name order executionType action parameters maxAttempts timeoutSeconds } }
}"""
# The same fields through a fragment: the GraphQL executor answers it, not the fast path.
WORKFLOWS_FRAGMENT_QUERY = """query($limit: Int!) { workflows(limit: $limit) { ...W } }
fragment W on Workflow { id name description createdAt
  tasks { id name order executionType action parameters maxAttempts timeoutSeconds } }"""
# A health answer slower than this waited on the read (the bound for the loop).
SLOW_SECONDS = 0.1
EXECUTIONS_QUERY = """query($limit: Int!) { executions(limit: $limit) { id status startedAt
  completedAt taskRuns { taskId name order status attempts output error } } }"""


class HealthProbe:
    """Asks /healthz back to back from a process of its own (a thread here would wait on this
    process's own reading of the large answers), keeping (start, seconds) of each answer.
    perf_counter is CLOCK_MONOTONIC, one clock for both processes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, float]] = []
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._ours, theirs = context.Pipe()
        self._process = context.Process(target=_probe, args=(url, self._stop, theirs))

    def __enter__(self) -> HealthProbe:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join()

    def collect(self) -> None:
        """The answers so far."""
        self._ours.send(None)
        self.answers = self._ours.recv()

    def during(self, start: float, end: float) -> list[float]:
        """Answers that were under way at some moment of [start, end]."""
        self.collect()
        return [took for began, took in self.answers if began <= end and began + took >= start]


def _probe(url: str, stop: Any, pipe: Any) -> None:
    answers: list[tuple[float, float]] = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        while not stop.is_set():
            started = time.perf_counter()
            http.get("/healthz")
            answers.append((started, time.perf_counter() - started))
            if pipe.poll():
                pipe.recv()
                pipe.send(answers)
            time.sleep(0.002)  # a client's pace, not a spin


def timed(probe: HealthProbe, read: Callable[[], httpx.Response]) -> tuple[float, list[float], int]:
    time.sleep(0.3)  # a few baseline answers between reads
    started = time.perf_counter()
    answer = read()
    ended = time.perf_counter()
    answer.raise_for_status()
    time.sleep(0.05)  # the answer under way when the read ended comes back
    return ended - started, probe.during(started, ended), len(answer.content)


def setup(server: LiveServer, args: argparse.Namespace) -> None:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as http:
        ids = []
        for number in range(args.workflows):
            tasks = [
                {
                    "name": f"task-{order}",
                    "order": order,
                    "execution_type": "async",
                    "parameters": {"duration": 0, "note": f"workflow {number} task {order}"},
                }
                for order in range(1, args.tasks + 1)
            ]
            made = http.post("/workflows/", json={"name": f"wide-{number}", "tasks": tasks})
            made.raise_for_status()
            ids.append(made.json()["id"])
        started = [
            http.post(f"/workflows/{ids[0]}/execute").json()["id"] for _ in range(args.executions)
        ]
        deadline = time.monotonic() + 600
        for execution_id in started:
            while http.get(f"/executions/{execution_id}").json()["status"] != "completed":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"execution {execution_id} did not complete")
                time.sleep(0.2)


def run(server: LiveServer, args: argparse.Namespace) -> None:
    http = httpx.Client(base_url=server.url, timeout=120, trust_env=False)

    def graphql(query: str, limit: int) -> Callable[[], httpx.Response]:
        body = {"query": query, "variables": {"limit": limit}}
        return lambda: http.post("/graphql", json=body)

    reads: list[tuple[str, Callable[[], httpx.Response]]] = [
        ("GraphQL workflows(limit: 100), first", graphql(WORKFLOWS_QUERY, 100)),
        ("GraphQL workflows(limit: 100), again", graphql(WORKFLOWS_QUERY, 100)),
        ("GraphQL workflows, fragment", graphql(WORKFLOWS_FRAGMENT_QUERY, 100)),
        ("REST /workflows/?limit=100, first", lambda: http.get("/workflows/?skip=1&limit=100")),
        ("REST /workflows/?limit=100, again", lambda: http.get("/workflows/?skip=1&limit=100")),
        ("GraphQL executions(limit: 100)", graphql(EXECUTIONS_QUERY, 100)),
        ("REST /executions/1", lambda: http.get("/executions/1")),
    ]
    with HealthProbe(server.url) as probe:
        time.sleep(1.0)
        probe.collect()
        baseline = [took for _, took in probe.answers]
        print(
            f"health answers with no read: {len(baseline)}, median "
            f"{statistics.median(baseline) * 1000:.1f} ms, longest {max(baseline) * 1000:.1f} ms"
        )
        print(f"{'read':40} {'bytes':>11} {'read ms':>9} {'longest health ms':>18} {'> 100 ms':>9}")
        for round_number in range(args.rounds):
            for name, read in reads:
                if round_number and name.endswith("first"):
                    continue  # only the first round is cold
                took, health, size = timed(probe, read)
                longest = max(health) * 1000 if health else 0.0
                slow = sum(1 for seconds in health if seconds > SLOW_SECONDS)
                print(f"{name:40} {size:>11,} {took * 1000:>9.0f} {longest:>18.0f} {slow:>9}")
    http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--executions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    print(machine())
    if args.database == "postgres":
        from tests.services import fresh_postgres_database

        async def hold() -> None:
            async with fresh_postgres_database() as url:
                await asyncio.to_thread(measure, url, args)

        asyncio.run(hold())
    else:
        with tempfile.TemporaryDirectory() as folder:
            measure(f"sqlite://{folder}/bench.sqlite3", args)


def measure(url: str, args: argparse.Namespace) -> None:
    with live_server(url) as server:
        started = time.monotonic()
        setup(server, args)
        print(
            f"{args.workflows} workflows of {args.tasks} tasks and {args.executions} executions "
            f"made in {time.monotonic() - started:.0f} s"
        )
        run(server, args)
    asyncio.run(in_process(url, args))


async def in_process(url: str, args: argparse.Namespace) -> None:
    """The same reads through the app in this process, on the same database, with a task on
    its loop that wakes every 5 ms: how late it wakes is how long the loop was held, the
    figure the issue bounds (a health answer needs several turns of the loop, so it waits
    for several slices of a read, not one)."""
    from dataclasses import replace

    from asgi_lifespan import LifespanManager

    from graphql_api.app import EmbeddedExecution, create_app
    from models.settings import Settings
    from tests.live_server import free_port

    settings = replace(Settings.from_env(), database_url=url, allowed_hosts=("bench",))
    app = create_app(settings, EmbeddedExecution(executor="asyncio", port=free_port()))
    held: list[float] = []

    async def watch() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            held.append(time.perf_counter() - started - 0.005)

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            watcher = asyncio.create_task(watch())
            reads = {
                "GraphQL workflows(limit: 100)": ("/graphql", WORKFLOWS_QUERY),
                "GraphQL workflows, fragment": ("/graphql", WORKFLOWS_FRAGMENT_QUERY),
                "GraphQL executions(limit: 100)": ("/graphql", EXECUTIONS_QUERY),
            }
            print(f"in process: {'read':40} {'read ms':>9} {'loop held ms':>13} {'> 100 ms':>9}")
            for round_number in range(args.rounds):
                for name, (path, query) in reads.items():
                    await asyncio.sleep(0.2)
                    held.clear()
                    body = {"query": query, "variables": {"limit": 100}}
                    started = time.perf_counter()
                    answer = await http.post(path, json=body)
                    took = time.perf_counter() - started
                    answer.raise_for_status()
                    longest = max(held, default=0.0) * 1000
                    slow = sum(1 for seconds in held if seconds > SLOW_SECONDS)
                    label = f"{name}, round {round_number + 1}"
                    print(f"in process: {label:40} {took * 1000:>9.0f} {longest:>13.0f} {slow:>9}")
            watcher.cancel()


if __name__ == "__main__":
    main()
