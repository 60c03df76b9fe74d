"""Data between tasks (contract section 9): input, templates, `when`, output, retry of a run.

The behaviour runs on every executor (asyncio on SQLite and on PostgreSQL with Redis; SAQ and
Ray on PostgreSQL with Redis): the engine renders templates as a task starts, so the workers
receive plain parameters.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest

from protos import execution_pb2 as pb
from tests.conftest import EXECUTION_BACKENDS
from tests.executions import by_name, make_workflow, wait_until_done
from tests.recorder import Recorder, recorder

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

pytestmark = pytest.mark.parametrize("backend", EXECUTION_BACKENDS, indirect=True)


def echo(name: str, order: int, parameters: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": name, "order": order, "action": "echo", "parameters": parameters, **fields}


async def start(
    stub: WorkflowExecutionAsyncStub, workflow_id: int, input: dict[str, Any] | None = None
) -> int:
    request = pb.ExecuteWorkflowRequest(
        workflow_id=workflow_id, input_json=json.dumps(input) if input is not None else ""
    )
    return int((await stub.ExecuteWorkflow(request)).execution_id)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Recorder]:
    with recorder() as running:
        yield running


async def test_outputs_and_input_flow_into_later_tasks(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    tasks = [
        echo("first", 1, {"id": "{{ input.n }}", "greeting": "hi {{ input.name }}"}),
        echo("side", 2, {"flag": True}, execution_type="async"),
        echo("side-b", 3, {"list": ["{{ input.n * 2 }}"]}, execution_type="async"),
        echo(
            "second",
            4,
            {
                "next": "{{ tasks.first.output.id + 1 }}",
                "url": "https://example.com/items/{{ tasks.first.output.id }}?x={{ input.name }}",
                "whole": "{{ tasks.first.output }}",
                "status": "{{ tasks['side-b'].status }}",
                "execution": "{{ execution.id }}/{{ execution.workflow_id }}",
                "plain": 7,
            },
        ),
    ]
    workflow_id = await make_workflow(client, tasks)
    execution_id = await start(stub, workflow_id, {"n": 41, "name": "bob"})
    final = await wait_until_done(stub, execution_id)
    assert final.status == "completed", final.error
    runs = by_name(final)
    first = {"id": 41, "greeting": "hi bob"}
    assert json.loads(runs["first"].output_json) == first
    assert json.loads(runs["side-b"].output_json) == {"list": [82]}
    second = {
        "next": 42,
        "url": "https://example.com/items/41?x=bob",
        "whole": first,
        "status": "completed",
        "execution": f"{execution_id}/{workflow_id}",
        "plain": 7,
    }
    assert json.loads(runs["second"].output_json) == second
    # The parameters as rendered are kept with the run.
    assert json.loads(runs["second"].parameters_json) == second
    assert json.loads(final.input_json) == {"n": 41, "name": "bob"}
    assert json.loads(final.output_json) == {
        "first": first,
        "side": {"flag": True},
        "side-b": {"list": [82]},
        "second": second,
    }
    # The same over REST and GraphQL.
    shown = (await client.get(f"/executions/{execution_id}")).json()
    assert shown["input"] == {"n": 41, "name": "bob"}
    assert shown["output"]["second"] == second
    assert shown["tasks"][-1]["parameters"] == second
    assert (shown["triggered_by"], shown["retry_of"]) == ("anonymous", None)
    query = (
        "query($id: ID!) "
        "{ execution(id: $id) { input output triggeredBy taskRuns { parameters } } }"
    )
    answer = await client.post(
        "/graphql", json={"query": query, "variables": {"id": str(execution_id)}}
    )
    execution = answer.json()["data"]["execution"]
    assert execution["input"] == {"n": 41, "name": "bob"}
    assert execution["output"]["first"] == first
    assert execution["triggeredBy"] == "anonymous"
    assert execution["taskRuns"][-1]["parameters"] == second


async def test_when_false_skips_the_task_and_the_run_goes_on(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    tasks = [
        echo("check", 1, {"ok": "{{ input.ok }}"}),
        echo("only-if-ok", 2, {"ran": True}, when="tasks.check.output.ok"),
        echo("unless-ok", 3, {"ran": True}, when="not tasks.check.output.ok"),
        echo("after", 4, {"seen": "{{ tasks['only-if-ok'].status }}"}),
    ]
    workflow_id = await make_workflow(client, tasks)
    final = await wait_until_done(stub, await start(stub, workflow_id, {"ok": False}))
    assert final.status == "completed", final.error
    runs = by_name(final)
    assert (runs["only-if-ok"].status, runs["only-if-ok"].attempts) == ("skipped", 0)
    assert runs["unless-ok"].status == "completed"
    assert json.loads(runs["after"].output_json) == {"seen": "skipped"}
    assert set(json.loads(final.output_json)) == {"check", "unless-ok", "after"}


async def test_a_failing_template_fails_the_task_at_once(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    tasks = [
        echo("first", 1, {"a": 1}),
        echo("second", 2, {"b": "{{ tasks.first.output.missing }}"}, max_attempts=3),
        echo("third", 3, {}),
    ]
    final = await wait_until_done(stub, await start(stub, await make_workflow(client, tasks)))
    assert final.status == "failed"
    runs = by_name(final)
    assert runs["second"].status == "failed"
    assert runs["second"].attempts == 0  # not retried: it would fail the same way
    assert runs["second"].error.startswith("template: b: ")
    assert "missing" in runs["second"].error
    assert runs["third"].status == "skipped"
    assert "template:" in final.error


async def test_a_retry_runs_only_what_did_not_complete(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub, endpoint: Recorder
) -> None:
    label = secrets.token_hex(4)
    tasks = [
        echo("first", 1, {"token": "{{ input.token }}"}),
        {
            "name": "call",
            "order": 2,
            "action": "http",
            # Fails its first call (one attempt): the run fails there; the retry's call passes.
            "parameters": {"url": endpoint.url(label, fail=1)},
        },
        echo("last", 3, {"from_first": "{{ tasks.first.output.token }}"}),
    ]
    workflow_id = await make_workflow(client, tasks)
    failed = await wait_until_done(stub, await start(stub, workflow_id, {"token": "t-1"}))
    assert failed.status == "failed"
    first_output = by_name(failed)["first"].output_json

    retried = await stub.RetryExecution(
        pb.GetWorkflowStatusRequest(execution_id=failed.execution_id)
    )
    assert retried.execution_id != failed.execution_id
    final = await wait_until_done(stub, retried.execution_id)
    assert final.status == "completed", final.error
    runs = by_name(final)
    # Carried over: completed at once, same output, never run again.
    assert (runs["first"].status, runs["first"].attempts) == ("completed", 0)
    assert runs["first"].output_json == first_output
    assert (runs["call"].status, runs["call"].attempts) == ("completed", 1)
    assert endpoint.count(label) == 2  # once in the failed run, once in the retry
    # A carried-over output feeds templates as if the task had just run.
    assert json.loads(runs["last"].output_json) == {"from_first": "t-1"}
    assert final.retry_of == failed.execution_id
    assert json.loads(final.input_json) == {"token": "t-1"}


async def test_a_cancelled_run_can_be_retried_over_rest(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    tasks = [
        echo("first", 1, {"n": "{{ input.n }}"}),
        {"name": "slow", "order": 2, "parameters": {"duration": 30}},
        echo("last", 3, {"n": "{{ tasks.first.output.n }}"}),
    ]
    workflow_id = await make_workflow(client, tasks)
    started = await client.post(f"/workflows/{workflow_id}/execute", json={"input": {"n": 5}})
    assert started.status_code == 200, started.text
    execution_id = started.json()["id"]
    async for update in stub.WatchExecution(pb.GetWorkflowStatusRequest(execution_id=execution_id)):
        if by_name(update)["slow"].status == "running":
            break
    cancelled = await client.post(f"/executions/{execution_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    # Change the workflow: the retry runs the old snapshot, not this.
    task_id = cancelled.json()["tasks"][1]["task_id"]
    changed = {"name": "slow", "order": 2, "parameters": {"duration": 60}}
    await client.put(f"/workflows/{workflow_id}/tasks/{task_id}", json=changed)

    retry = await client.post(f"/executions/{execution_id}/retry")
    assert retry.status_code == 200, retry.text
    body = retry.json()
    assert (body["retry_of"], body["input"]) == (execution_id, {"n": 5})
    assert body["tasks"][0]["status"] == "completed"
    assert body["tasks"][1]["parameters"] == {"duration": 30}
    await stub.CancelExecution(pb.CancelExecutionRequest(execution_id=body["id"]))


async def test_only_failed_or_cancelled_runs_are_retried(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    workflow_id = await make_workflow(client, [echo("only", 1, {})])
    done = await wait_until_done(stub, await start(stub, workflow_id))
    assert done.status == "completed"
    request = pb.GetWorkflowStatusRequest(execution_id=done.execution_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RetryExecution(request)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    rest = await client.post(f"/executions/{done.execution_id}/retry")
    assert rest.status_code == 409
    assert "only failed or cancelled" in rest.json()["detail"]
    mutation = "mutation($id: ID!) { retryExecution(id: $id) { id } }"
    answer = await client.post(
        "/graphql", json={"query": mutation, "variables": {"id": str(done.execution_id)}}
    )
    assert answer.json()["errors"][0]["extensions"]["code"] == "CONFLICT"
    missing = await client.post("/executions/2147483000/retry")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Execution not found"})
