"""RayExecutor on its own: actions run as Ray tasks on the session's local Ray."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray

from exec_service import actions
from exec_service.actions.builtin import ActionError
from exec_service.executors import make_executor
from exec_service.executors.ray_executor import RayExecutor
from exec_service.types import TaskRequest
from tests.ray_cluster import NUM_CPUS, ensure_ray
from tests.recorder import recorder


def request(action: str, **parameters: Any) -> TaskRequest:
    return {
        "execution_id": 1,
        "run_id": 1,
        "task_id": 1,
        "action": action,
        "parameters": parameters,
        "attempt": 1,
        "timeout_seconds": None,
    }


def free_cpus() -> float:
    resources: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
    return resources.get("CPU", 0.0)


@pytest.fixture(scope="module")
async def executor() -> AsyncIterator[RayExecutor]:
    ensure_ray()
    ray_executor = RayExecutor()
    await ray_executor.start()  # shares the session's Ray...
    yield ray_executor
    await ray_executor.close()  # ...and leaves it running
    assert ray.is_initialized()


def test_make_executor_builds_it() -> None:
    built = make_executor("ray")
    assert isinstance(built, RayExecutor)
    assert built.name == "ray"


async def test_noop_returns_an_empty_output(executor: RayExecutor) -> None:
    assert await executor.run(request("noop")) == {}
    assert await executor.run(request("noop", duration=0.1)) == {}


async def test_an_action_failure_comes_back_with_its_message(executor: RayExecutor) -> None:
    with pytest.raises(ActionError) as raised:
        await executor.run(request("noop", duration=-1))
    assert str(raised.value) == "noop: parameters.duration must be a number of seconds >= 0"
    with pytest.raises(ActionError) as unknown:
        await executor.run(request("no-such-action"))
    assert str(unknown.value) == "unknown action 'no-such-action'"


async def test_actions_registered_here_are_not_seen_by_ray_workers(
    executor: RayExecutor,
) -> None:
    async def local_only(parameters: dict[str, Any]) -> dict[str, Any]:
        return {"ran": "here"}

    actions.register("local-only", local_only)
    try:
        with pytest.raises(ActionError, match="unknown action 'local-only'"):
            await executor.run(request("local-only"))
    finally:
        del actions.available()["local-only"]


async def test_http_calls_a_real_endpoint(executor: RayExecutor) -> None:
    with recorder() as server:
        # Twice: a worker runs each task in a fresh event loop, which the shared http client
        # must not outlive.
        for _ in range(2):
            output = await executor.run(request("http", url=server.url("ray")))
            assert output["status_code"] == 200
            assert output["body"]["label"] == "ray"
        assert server.count("ray") == 2
        with pytest.raises(ActionError, match="answered 503"):
            await executor.run(request("http", url=server.url("down", status=503)))


async def test_a_cancelled_task_stops_and_the_next_one_runs(executor: RayExecutor) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(executor.run(request("noop", duration=30)), timeout=0.5)
    assert time.monotonic() - started < 5
    # The Ray task is gone too (force-cancelled, its worker killed): its CPU comes back.
    deadline = time.monotonic() + 10
    while free_cpus() != NUM_CPUS:
        assert time.monotonic() < deadline, f"{free_cpus()} CPUs free"
        await asyncio.sleep(0.1)
    assert await executor.run(request("noop")) == {}


async def test_tasks_run_concurrently(executor: RayExecutor) -> None:
    started = time.monotonic()
    outputs = await asyncio.gather(
        *(executor.run(request("noop", duration=1)) for _ in range(NUM_CPUS))
    )
    assert outputs == [{}] * NUM_CPUS
    assert time.monotonic() - started < 1.9


# A fresh process (Ray is not running in it yet), connecting to the session's Ray: start()
# must leave that process's SIGTERM handler in place (ray.init on the main thread replaces it
# with one that calls sys.exit).
SIGTERM_CHECK = """
import asyncio, signal, sys
from exec_service.executors.ray_executor import RayExecutor

received = []
def handler(signum, frame):
    received.append(signum)

signal.signal(signal.SIGTERM, handler)

async def main():
    executor = RayExecutor(address=sys.argv[1])
    await executor.start()
    assert signal.getsignal(signal.SIGTERM) is handler, signal.getsignal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)
    assert received == [signal.SIGTERM], received
    request = {"execution_id": 1, "run_id": 1, "task_id": 1, "action": "noop",
               "parameters": {}, "attempt": 1, "timeout_seconds": None}
    assert await executor.run(request) == {}
    await executor.close()

asyncio.run(main())
print("sigterm handler kept")
"""


async def test_start_keeps_the_sigterm_handler(executor: RayExecutor) -> None:
    before = signal.getsignal(signal.SIGTERM)
    await RayExecutor().start()
    assert signal.getsignal(signal.SIGTERM) is before

    address = ray.get_runtime_context().gcs_address
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SIGTERM_CHECK,
        address,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "sigterm handler kept"
    # Ray's C++ crash handler does not see a SIGTERM (it printed a stack on every stop).
    assert "SIGTERM received" not in stderr.decode(), stderr.decode()
