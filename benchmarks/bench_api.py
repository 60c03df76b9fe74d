"""Requests per second of the HTTP plane's reads, against the ceiling of a bare ASGI app.

    .venv/bin/python benchmarks/bench_api.py [--duration 10] [--connections 32]
                                             [--backend sqlite|postgres-redis] [--repeat 1]

Needs `wrk` (Debian/Ubuntu: `apt-get install wrk`); `--help` lists every option.

Rows, each served by its own uvicorn subprocess (one worker, no access log, log level warning,
otherwise uvicorn's defaults, as the API is served) and loaded by `wrk`:

  (a) ceiling: a raw ASGI app answering a constant small JSON body (benchmarks/ceiling_app.py);
  (b) REST `GET /workflows/{id}`, cache on (default settings);
  (c) GraphQL `POST /graphql`, the same workflow with its tasks, cache on;
  (d), (e) the same two with `WORKFLOW_CACHE_TTL=0`: every read goes to the database;
  (f), (g) with `--auth`: (b) and (c) with an API key (a viewer's) on every request.

Each row gets a short warm-up, then a measured run; the last column is its ratio to the ceiling.
The target is cached reads at 50% of the ceiling or more.

`sqlite` (the default) uses a temporary SQLite file and the in-process cache. `postgres-redis`
creates a fresh PostgreSQL database (dropped at the end) and uses Redis under a fresh key prefix
(its keys deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
CEILING_APP = "benchmarks.ceiling_app:app"
API_FACTORY = "graphql_api.app:create_app"
# One worker, no access log, warnings only; otherwise uvicorn's defaults (uvloop and httptools
# when installed), for the ceiling and the API alike. The API runs as `uvicorn --factory`:
# `workflow serve` has no way to turn its access log off.
SERVER_FLAGS = ["--workers", "1", "--no-access-log", "--log-level", "warning"]

DEFAULT_PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Environment the API reads; cleared from ours so that only what a row sets applies.
API_ENV = (
    "DATABASE_URL",
    "REDIS_URL",
    "WORKFLOW_REDIS_PREFIX",
    "WORKFLOW_CACHE_TTL",
    "WORKFLOW_ADMIN_KEY",
)

STARTUP_DEADLINE_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
WRK_SLACK_SECONDS = 30.0  # beyond a run's duration before wrk counts as hung
WRK_TIMEOUT = "5s"  # per request, inside wrk
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

GRAPHQL_QUERY = (
    '{ workflow(id: "%s") { id name description createdAt updatedAt tasks '
    "{ id name order executionType action parameters maxAttempts timeoutSeconds } } }"
)

WORKFLOW_BODY: dict[str, Any] = {
    "name": "benchmark workflow",
    "description": "created by benchmarks/bench_api.py",
    "tasks": [
        {
            "name": f"step {order}",
            "description": f"step {order} of 5",
            "order": order,
            "execution_type": "sync" if order % 2 else "async",
            "action": "noop",
            "parameters": {"duration": 0, "label": f"step {order}", "weight": order},
            "max_attempts": 3,
            "timeout_seconds": 30.0,
        }
        for order in range(1, 6)
    ],
}


class BenchError(Exception):
    pass


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every `finally` cleans up."""


@dataclass
class Result:
    label: str
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    cache: str
    cpu: CpuUse


# --- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def wrk_version(wrk: str) -> str:
    completed = subprocess.run(
        [wrk, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (completed.stdout + completed.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "unknown"


def machine_ticks() -> tuple[int, int]:
    """CPU clock ticks since boot over every core: (busy, total). Linux only.

    Busy is time in processes (user, nice, system) and time the hypervisor took (steal);
    interrupt time is left out: the benchmark's own loopback traffic is most of it.
    """
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split()[1:9]
    )
    busy = user + nice + system + steal
    return busy, busy + idle + iowait + irq + softirq


def process_ticks(pid: int) -> int:
    """CPU clock ticks (user + system) a process has used so far. Linux only."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def children_ticks() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * CLOCK_TICKS


def cpu_busy(seconds: float = 1.0) -> float | None:
    """The fraction of the machine's CPU time spent busy over `seconds` (Linux only)."""
    try:
        busy_before, total_before = machine_ticks()
        time.sleep(seconds)
        busy_after, total_after = machine_ticks()
    except (OSError, ValueError, IndexError):
        return None
    total = total_after - total_before
    return (busy_after - busy_before) / total if total else None


def process_wait_ns(pid: int) -> int:
    """Nanoseconds the process's threads have spent runnable but waiting for a CPU so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total


@dataclass
class CpuUse:
    """During a measured run: cores the server used, the fraction of the time its threads
    waited for a CPU, and cores used by everything but the server and wrk (approximate)."""

    server: float | None = None
    wait: float | None = None
    other: float | None = None


@contextlib.contextmanager
def cpu_accounting(server_pid: int) -> Iterator[CpuUse]:
    use = CpuUse()
    try:
        busy_before, _ = machine_ticks()
        server_before = process_ticks(server_pid)
        wait_before = process_wait_ns(server_pid)
    except (OSError, ValueError, IndexError):
        yield use
        return
    wrk_before = children_ticks()  # wrk is the only child reaped meanwhile
    started = time.monotonic()
    yield use
    elapsed = time.monotonic() - started
    with contextlib.suppress(OSError):
        # Threads that ended meanwhile take their counts along: never below 0.
        use.wait = max(0, process_wait_ns(server_pid) - wait_before) / 1e9 / elapsed
    try:
        busy_after, _ = machine_ticks()
        server_after = process_ticks(server_pid)
    except (OSError, ValueError, IndexError):
        return
    wrk_used = children_ticks() - wrk_before
    server_used = server_after - server_before
    use.server = server_used / CLOCK_TICKS / elapsed
    other = busy_after - busy_before - server_used - wrk_used
    use.other = max(0.0, other) / CLOCK_TICKS / elapsed


def print_machine(args: argparse.Namespace, wrk: str) -> None:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    backend = {
        "sqlite": "sqlite (temporary file) + in-process cache",
        "postgres-redis": "postgres-redis (fresh PostgreSQL database) + Redis cache",
    }[args.backend]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()}")
    print(f"python:  {platform.python_implementation()} {platform.python_version()}")
    print(
        f"server:  uvicorn {package_version('uvicorn')} ({loop}, {http}), 1 worker, "
        f"no access log; fastapi {package_version('fastapi')}, "
        f"strawberry {package_version('strawberry-graphql')}"
    )
    print(f"backend: {backend}")
    print(
        f"load:    {wrk_version(wrk)}, {args.threads} thread(s), {args.connections} connections, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per row"
        + (f", fastest of {args.repeat} runs" if args.repeat > 1 else "")
    )
    busy = cpu_busy()
    if busy is not None:
        print(f"before:  {busy:.0%} of the CPU busy with other work", end="")
        print(" (WARNING: numbers will be noisy)" if busy > 0.1 else "")
    print(flush=True)


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_GRACE_SECONDS)


@contextlib.contextmanager
def server(
    label: str, app: list[str], env: dict[str, str], workdir: Path
) -> Iterator[tuple[str, int]]:
    """A uvicorn subprocess serving `app`, ready (/healthz 200): yields its URL and pid."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    command = [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *SERVER_FLAGS],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(label, url, process, log_path)
        yield url, process.pid
    finally:
        stop(process)


def wait_ready(label: str, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(
                f"{label}: the server exited with {process.returncode}:\n{tail(log_path)}"
            )
        try:
            response = httpx.get(f"{url}/healthz", timeout=2.0)
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        else:
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        time.sleep(0.1)
    raise BenchError(
        f"{label}: /healthz not ready after {STARTUP_DEADLINE_SECONDS:g} s ({last}):\n"
        f"{tail(log_path)}"
    )


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the API: data, checks, metrics --------------------------------------------------------


def create_workflow(url: str, headers: dict[str, str] | None = None) -> int:
    response = httpx.post(f"{url}/workflows/", json=WORKFLOW_BODY, timeout=10.0, headers=headers)
    if response.status_code != 200:
        raise BenchError(f"POST /workflows/ answered {response.status_code}: {response.text}")
    workflow_id: int = response.json()["id"]
    return workflow_id


ADMIN_KEY = "bench-api-admin-key"


def make_viewer_key(url: str) -> str:
    """A viewer key made through the API (with the bootstrap admin key)."""
    mutation = 'mutation { createApiKey(name: "bench-viewer", role: VIEWER) { key } }'
    response = httpx.post(
        f"{url}/graphql",
        json={"query": mutation},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10.0,
    )
    key: str = response.json()["data"]["createApiKey"]["key"]
    return key


def graphql_body(workflow_id: int) -> str:
    return json.dumps({"query": GRAPHQL_QUERY % workflow_id})


def check_rest(url: str, workflow_id: int, headers: dict[str, str] | None = None) -> None:
    response = httpx.get(f"{url}/workflows/{workflow_id}", timeout=10.0, headers=headers)
    data = response.json() if response.status_code == 200 else None
    if not data or data.get("id") != workflow_id or len(data.get("tasks", [])) != 5:
        raise BenchError(f"GET /workflows/{workflow_id}: {response.status_code} {response.text}")


def check_graphql(url: str, workflow_id: int, headers: dict[str, str] | None = None) -> None:
    response = httpx.post(
        f"{url}/graphql",
        content=graphql_body(workflow_id),
        headers={"content-type": "application/json", **(headers or {})},
        timeout=10.0,
    )
    data = response.json() if response.status_code == 200 else {}
    workflow = (data.get("data") or {}).get("workflow") or {}
    if data.get("errors") or workflow.get("id") != str(workflow_id) or len(workflow["tasks"]) != 5:
        raise BenchError(f"POST /graphql: {response.status_code} {response.text}")


def cache_counters(url: str, headers: dict[str, str] | None = None) -> tuple[int, int]:
    text = httpx.get(f"{url}/metrics", timeout=10.0, headers=headers).text
    # Prometheus writes counters as floats ("12.0").
    found = re.findall(r"^(workflow_cache_\w+_total) ([0-9.e+]+)$", text, re.MULTILINE)
    counts = {name: int(float(value)) for name, value in found}
    return counts.get("workflow_cache_hits_total", 0), counts.get("workflow_cache_misses_total", 0)


def cache_backend(url: str) -> str:
    backend: str = httpx.get(f"{url}/healthz", timeout=10.0).json()["cache_backend"]
    return backend


# --- wrk -----------------------------------------------------------------------------------


def lua_post(body: str) -> str:
    # A long bracket string: no escaping; pick a level the body cannot close.
    level = "=" * 3
    while f"]{level}]" in body:
        level += "="
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [{level}[{body}]{level}]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def lua_headers(headers: dict[str, str]) -> str:
    """wrk script lines that send `headers` with every request (the API key)."""
    return "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items())


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> tuple[float, float | None, float | None, int, int]:
    """Requests/s, p50 and p99 in ms (when printed), requests, errors (non-2xx/3xx + socket)."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rps is None:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    percentiles = {
        int(pct): float(value) * _UNIT_MS[unit]
        for pct, value, unit in re.findall(
            r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE
        )
    }
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(count) for count in sockets.groups())
    return (
        float(rps.group(1)),
        percentiles.get(50),
        percentiles.get(99),
        int(total.group(1)) if total else 0,
        errors,
    )


def wrk_run(
    wrk: str,
    args: argparse.Namespace,
    url: str,
    seconds: float,
    script: Path | None,
    headers: dict[str, str] | None = None,
) -> str:
    command = [
        wrk,
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
    ]
    if script is not None:
        command.append(f"--script={script}")
    for name, value in (headers or {}).items():
        command.append(f"--header={name}: {value}")
    try:
        completed = subprocess.run(
            [*command, url],
            capture_output=True,
            text=True,
            timeout=seconds + WRK_SLACK_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + WRK_SLACK_SECONDS:g} s") from None
    if completed.returncode != 0:
        raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed.stdout


def measure(
    wrk: str,
    args: argparse.Namespace,
    label: str,
    url: str,
    server_pid: int,
    script: Path | None = None,
    metrics_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> Result:
    if args.warmup > 0:
        wrk_run(wrk, args, url, args.warmup, script, headers)
    best: Result | None = None
    for _ in range(args.repeat):
        before = cache_counters(metrics_url, headers) if metrics_url else (0, 0)
        with cpu_accounting(server_pid) as cpu:
            output = wrk_run(wrk, args, url, args.duration, script, headers)
        cache = "-"
        if metrics_url:
            after = cache_counters(metrics_url, headers)
            hits, misses = after[0] - before[0], after[1] - before[1]
            if cache_backend(metrics_url) == "none":
                cache = "off"
            elif hits + misses:
                cache = f"{100 * hits / (hits + misses):.0f}% hit"
        rps, p50, p99, requests, errors = parse_wrk(output)
        if args.verbose:
            print(f"--- wrk: {label}\n{output}", flush=True)
        print(f"  measured {label}: {rps:,.0f} req/s ({requests:,} requests)", flush=True)
        # Interference only ever slows a run down: the fastest of several is the least disturbed.
        if best is None or rps > best.rps:
            best = Result(label, rps, p50, p99, requests, errors, cache, cpu)
    assert best is not None
    return best


# --- backends ------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in API_ENV}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


async def _pg_execute(admin_url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncio.wait_for(asyncpg.connect(admin_url), 10)
    try:
        await asyncio.wait_for(connection.execute(statement), 30)
    finally:
        await connection.close()


def pg_execute(admin_url: str, statement: str) -> None:
    asyncio.run(_pg_execute(admin_url, statement))


def pg_database_url(admin_url: str, database: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{database}"


def drop_redis_keys(redis_url: str, prefix: str) -> int:
    from redis import Redis

    client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


@contextlib.contextmanager
def backend_env(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, str]]:
    """The API's environment for the chosen backend; everything it creates is removed after."""
    env = base_env()
    if args.backend == "sqlite":
        env["DATABASE_URL"] = f"sqlite://{workdir / 'bench.sqlite3'}"
        yield env
        return
    suffix = secrets.token_hex(4)
    database = f"bench_{suffix}"
    prefix = f"bench-{suffix}:"
    try:
        pg_execute(args.pg_admin_url, f'CREATE DATABASE "{database}"')
    except Exception as exc:
        raise BenchError(
            f"cannot create database {database} via {args.pg_admin_url}: {exc}"
        ) from exc
    print(f"created database {database}; Redis prefix {prefix}", flush=True)
    try:
        env["DATABASE_URL"] = pg_database_url(args.pg_admin_url, database)
        env["REDIS_URL"] = args.redis_url
        env["WORKFLOW_REDIS_PREFIX"] = prefix
        yield env
    finally:
        try:
            pg_execute(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            print(f"dropped database {database}", flush=True)
        except Exception as exc:
            print(f"WARNING: could not drop database {database}: {exc}", file=sys.stderr)
        try:
            drop_redis_keys(args.redis_url, prefix)
        except Exception as exc:
            print(f"WARNING: could not delete Redis keys {prefix}*: {exc}", file=sys.stderr)


# --- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, wrk: str) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        workdir = Path(tmp)
        with backend_env(args, workdir) as env:
            with server("ceiling", [CEILING_APP], base_env(), workdir) as (url, pid):
                results.append(measure(wrk, args, "(a) ceiling: bare ASGI JSON", f"{url}/", pid))
            variants = [("cached", "bc"), ("uncached", "de")]
            if args.auth:
                variants.append(("cached, with a key", "fg"))
            for tag, letters in variants:
                api_env = dict(env)
                if tag == "uncached":
                    api_env["WORKFLOW_CACHE_TTL"] = "0"
                headers: dict[str, str] = {}
                if tag == "cached, with a key":
                    api_env["WORKFLOW_ADMIN_KEY"] = ADMIN_KEY
                app = ["--factory", API_FACTORY]
                with server(f"API ({tag})", app, api_env, workdir) as (url, pid):
                    if tag == "cached, with a key":
                        # A viewer key from the database, as clients hold: each request is
                        # checked by its hash (cached in the process, as in production).
                        headers = {"Authorization": f"Bearer {make_viewer_key(url)}"}
                        workflow_id = create_workflow(url, {"Authorization": f"Bearer {ADMIN_KEY}"})
                    else:
                        workflow_id = create_workflow(url)
                    check_rest(url, workflow_id, headers)
                    check_graphql(url, workflow_id, headers)
                    backend = cache_backend(url)
                    print(
                        f"API {tag}: pid {pid}, cache backend {backend}, workflow {workflow_id}",
                        flush=True,
                    )
                    script = workdir / f"graphql-{letters}.lua"
                    script.write_text(lua_post(graphql_body(workflow_id)) + lua_headers(headers))
                    results.append(
                        measure(
                            wrk,
                            args,
                            f"({letters[0]}) REST GET /workflows/{{id}}, {tag}",
                            f"{url}/workflows/{workflow_id}",
                            pid,
                            metrics_url=url,
                            headers=headers,
                        )
                    )
                    results.append(
                        measure(
                            wrk,
                            args,
                            f"({letters[1]}) GraphQL workflow(id), {tag}",
                            f"{url}/graphql",
                            pid,
                            script=script,
                            metrics_url=url,
                            headers=headers,
                        )
                    )
    return results


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: list[Result]) -> None:
    ceiling = results[0].rps
    width = max(len(result.label) for result in results)
    print()
    print(
        f"{'row':<{width}}  {'req/s':>9}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'errors':>6}  {'cache':>8}  {'srv CPU':>7}  {'wait':>5}  {'other':>5}  "
        f"{'vs ceiling':>10}"
    )
    for result in results:
        ratio = result.rps / ceiling if ceiling else 0.0
        print(
            f"{result.label:<{width}}  {result.rps:>9,.0f}  {fmt(result.p50_ms):>7}  "
            f"{fmt(result.p99_ms):>7}  {result.errors:>6}  {result.cache:>8}  "
            f"{fmt(result.cpu.server):>7}  {fmt(result.cpu.wait):>5}  {fmt(result.cpu.other):>5}  "
            f"{ratio:>10.1%}"
        )
    cached = [r for r in results if r.label.endswith(", cached")]
    keyed = [r for r in results if r.label.endswith(", with a key")]
    for plain, with_key in zip(cached, keyed, strict=False):
        share = with_key.rps / plain.rps if plain.rps else 0.0
        verdict = "meets" if share >= 0.9 else "BELOW"
        print(f"target (with a key >= 90% of without): {verdict}: {with_key.label} at {share:.1%}")
    print()
    print(
        "srv CPU: cores the server process used; wait: fraction of the run its threads were\n"
        "runnable but had no CPU; other: cores used by every process but the server and wrk\n"
        "(PostgreSQL and Redis included) and hypervisor steal, from tick counts, approximate.\n"
        "A wait or other well above 0 (on sqlite, or on the ceiling row) means other work\n"
        "disturbed the measurement: rerun, or use --repeat."
    )
    for result in cached:
        ratio = result.rps / ceiling if ceiling else 0.0
        verdict = "meets" if ratio >= 0.5 else "BELOW"
        print(f"target (cached >= 50% of ceiling): {verdict}: {result.label} at {ratio:.1%}")
    if any(result.errors for result in results):
        print("WARNING: some requests failed (see the errors column); those rows are suspect.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured row")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument(
        "--backend", choices=["sqlite", "postgres-redis"], default="sqlite", help="storage"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="wrk threads (default 1: wrk shares the machine with the server)",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per row")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="also (f), (g): the cached rows with an API key on every request",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measured runs per row; the fastest is reported (for a machine shared with others)",
    )
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("-v", "--verbose", action="store_true", help="print wrk's full output")
    args = parser.parse_args(argv)
    if min(args.duration, args.connections, args.threads, args.repeat) < 1:
        parser.error("--duration, --connections, --threads and --repeat must be at least 1")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "error: the load generator `wrk` is not installed.\n"
            "  Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y wrk\n"
            "  macOS:         brew install wrk",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    print_machine(args, wrk)
    try:
        results = run(args, wrk)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated):
        print("interrupted", file=sys.stderr)
        return 130
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
