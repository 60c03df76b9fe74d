"""The gRPC surface: stubs generated from the proto as committed, the proto as the contract
says, standard health checking and server reflection."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
from fastapi import FastAPI
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from models import executions
from protos import execution_pb2
from tests.live_server import REPO

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """Compiles the proto afresh and compares descriptors (not text, which names the version
    of the compiler): a stub generated from an older proto fails here."""
    descriptor_set = tmp_path / "execution.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"--descriptor_set_out={descriptor_set}",
            "protos/execution.proto",
        ],
        check=True,
        cwd=REPO,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    for message in fresh.message_type:
        for field in message.field:
            field.ClearField("json_name")  # protoc fills it in descriptor sets only
    committed = descriptor_pb2.FileDescriptorProto.FromString(
        execution_pb2.DESCRIPTOR.serialized_pb
    )
    assert fresh == committed, "protos/execution_pb2.py is stale: run scripts/gen-protos"
    service = fresh.service[0]
    grpc_stubs = (REPO / "protos" / "execution_pb2_grpc.py").read_text()
    for method in service.method:
        assert f"/execution.WorkflowExecution/{method.name}" in grpc_stubs


def test_the_proto_is_the_contract() -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    execution_pb2.DESCRIPTOR.CopyToProto(proto)
    assert proto.package == "execution"
    service = proto.service[0]
    assert service.name == "WorkflowExecution"
    methods = {m.name: (m.input_type, m.output_type, m.server_streaming) for m in service.method}
    assert methods == {
        "ExecuteWorkflow": (
            ".execution.ExecuteWorkflowRequest",
            ".execution.ExecuteWorkflowResponse",
            False,
        ),
        "GetWorkflowStatus": (
            ".execution.GetWorkflowStatusRequest",
            ".execution.WorkflowStatusResponse",
            False,
        ),
        "WatchExecution": (
            ".execution.GetWorkflowStatusRequest",
            ".execution.WorkflowStatusResponse",
            True,
        ),
        "CancelExecution": (
            ".execution.CancelExecutionRequest",
            ".execution.WorkflowStatusResponse",
            False,
        ),
        # Version 2: new RPCs beside the original ones.
        "RetryExecution": (
            ".execution.GetWorkflowStatusRequest",
            ".execution.ExecuteWorkflowResponse",
            False,
        ),
    }
    fields = {
        message.name: [(f.name, f.number, f.type, f.label) for f in message.field]
        for message in proto.message_type
    }
    t = descriptor_pb2.FieldDescriptorProto
    one, many = t.LABEL_OPTIONAL, t.LABEL_REPEATED
    i32, string, message = t.TYPE_INT32, t.TYPE_STRING, t.TYPE_MESSAGE
    assert fields["ExecuteWorkflowRequest"] == [
        ("workflow_id", 1, i32, one),
        ("idempotency_key", 2, string, one),
        ("input_json", 3, string, one),
    ]
    assert fields["ExecuteWorkflowResponse"] == [
        ("execution_id", 1, i32, one),
        ("status", 2, string, one),
    ]
    assert fields["GetWorkflowStatusRequest"] == [("execution_id", 1, i32, one)]
    assert fields["CancelExecutionRequest"] == [("execution_id", 1, i32, one)]
    assert fields["WorkflowStatusResponse"] == [
        ("execution_id", 1, i32, one),
        ("workflow_id", 2, i32, one),
        ("status", 3, string, one),
        ("started_at", 4, string, one),
        ("completed_at", 5, string, one),
        ("tasks", 6, message, many),
        ("error", 7, string, one),
        ("output_json", 8, string, one),
        ("input_json", 9, string, one),
        ("triggered_by", 10, string, one),
        ("retry_of", 11, i32, one),
    ]
    assert fields["TaskStatus"] == [
        ("task_id", 1, i32, one),
        ("name", 2, string, one),
        ("order", 3, i32, one),
        ("status", 4, string, one),
        ("attempts", 5, i32, one),
        ("started_at", 6, string, one),
        ("completed_at", 7, string, one),
        ("error", 8, string, one),
        ("output_json", 9, string, one),
        ("parameters_json", 10, string, one),
    ]


@pytest.fixture
async def channel(app: FastAPI) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{app.state.exec_service.port}")


async def test_health(channel: grpc.aio.Channel, stub: WorkflowExecutionAsyncStub) -> None:
    # The health and reflection stubs are typed for sync channels only.
    health: Any = health_pb2_grpc.HealthStub(channel)
    for service in ("", "execution.WorkflowExecution"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    await channel.close()


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for answer in reflection.ServerReflectionInfo(requests()):
        names = {service.name for service in answer.list_services_response.service}
        break
    await channel.close()
    assert {"execution.WorkflowExecution", "grpc.health.v1.Health"} <= names


def test_a_watch_rebuilds_only_the_task_entries_that_changed() -> None:
    from exec_service.servicer import TaskStatuses, status_response

    def run(task_id: int, **values: Any) -> dict[str, Any]:
        base = {"task_id": task_id, "name": f"t{task_id}", "order": task_id, "status": "pending"}
        base |= {"attempts": 0, "started_at": None, "completed_at": None, "error": None}
        return base | {"output": None, "parameters": {}} | values

    def snapshot(*runs: dict[str, Any]) -> dict[str, Any]:
        execution = {"id": 7, "workflow_id": 3, "status": "in_progress", "started_at": "s"}
        execution |= {"completed_at": None, "error": None, "tasks": list(runs)}
        return execution | {"input": None, "triggered_by": "anonymous", "retry_of": None}

    entries = TaskStatuses()
    first = snapshot(run(1, status="running", attempts=1), run(2))
    assert status_response(first, entries) == status_response(first)
    # The first task completes (a fresh dict, as every announcement is decoded anew).
    done = run(1, status="completed", attempts=1, output={"n": 1}, completed_at="c")
    second = snapshot(done, run(2))
    message = status_response(second, entries)
    assert message == status_response(second)
    assert (message.tasks[0].status, message.tasks[0].output_json) == ("completed", '{"n": 1}')
    assert message.tasks[1].status == "pending"


async def test_watching_an_execution_that_runs_here_starts_without_reading_it(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read = executions.get_execution

    async def counted(execution_id: int) -> dict[str, Any]:
        reads.append(execution_id)
        return await read(execution_id)

    monkeypatch.setattr(executions, "get_execution", counted)
    body = {"name": "slow", "tasks": [{"name": "wait", "order": 1, "parameters": {"duration": 1}}]}
    workflow = (await client.post("/workflows/", json=body)).json()
    started = await stub.ExecuteWorkflow(
        execution_pb2.ExecuteWorkflowRequest(workflow_id=workflow["id"])
    )
    request = execution_pb2.GetWorkflowStatusRequest(execution_id=started.execution_id)
    messages = [message async for message in stub.WatchExecution(request)]
    assert reads == []  # its runner here had the state; the database was not asked
    seen = [(message.status, message.tasks[0].status) for message in messages]
    assert ("in_progress", "running") in seen  # the first message, or one soon after
    assert seen[-2:] == [("in_progress", "completed"), ("completed", "completed")]
    # An execution that does not run here (it ended) is read from the database.
    messages = [message async for message in stub.WatchExecution(request)]
    assert reads == [started.execution_id]
    assert [message.status for message in messages] == ["completed"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.mark.parametrize(
    ("method", "payload", "detail"),
    [
        # execution_id = 2**32 + 1: protobuf alone reads it as 1.
        ("GetWorkflowStatus", b"\x08" + _varint(2**32 + 1), "execution_id: 4294967297 is out"),
        ("CancelExecution", b"\x08" + _varint(2**31), "execution_id: 2147483648 is out"),
        ("WatchExecution", b"\x08" + _varint(2**40), "execution_id: 1099511627776 is out"),
        ("RetryExecution", b"\x08" + _varint(2**32 - 1), "execution_id: 4294967295 is out"),
        ("ExecuteWorkflow", b"\x08" + _varint(2**33), "workflow_id: 8589934592 is out"),
        # An int32 within range, negative (ten bytes, as protobuf sends it): the servicer's rule.
        ("GetWorkflowStatus", b"\x08" + _varint(2**64 - 5), "must be a positive integer"),
        # Strings that are not UTF-8 (a lone surrogate, encoded): named, not "error parsing".
        ("ExecuteWorkflow", b"\x08\x01\x12\x03\xed\xa0\x80", "idempotency_key: must be valid"),
        ("ExecuteWorkflow", b"\x08\x01\x1a\x02\xc3\x28", "input_json: must be valid UTF-8"),
        ("GetWorkflowStatus", b"\xff\xff\xff", "malformed request"),
        ("ExecuteWorkflow", b"\x12\x50abc", "malformed request"),  # a string longer than sent
    ],
)
async def test_ids_out_of_int32_and_garbage_bytes_are_invalid_arguments(
    channel: grpc.aio.Channel, method: str, payload: bytes, detail: str
) -> None:
    path = f"/execution.WorkflowExecution/{method}"

    async def send() -> None:
        if method == "WatchExecution":
            stream: Any = channel.unary_stream(path)
            async for _ in stream(payload, timeout=5):
                pass
        else:
            single: Any = channel.unary_unary(path)
            await single(payload, timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = refused.value.details() or ""
    assert detail in message
    assert "DecodeError" not in message
    assert "google.protobuf" not in message
    await channel.close()


@pytest.mark.parametrize("execution_id", [0, -1, -(2**31)])
async def test_watch_and_retry_refuse_ids_that_are_not_ids(
    stub: WorkflowExecutionAsyncStub, execution_id: int
) -> None:
    """As ExecuteWorkflow, GetWorkflowStatus and CancelExecution do (tests/test_execution.py)."""
    request = execution_pb2.GetWorkflowStatusRequest(execution_id=execution_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RetryExecution(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.WatchExecution(request):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
