"""How fast one caller may start executions (issue 16): WORKFLOW_MAX_STARTS_PER_SECOND, a
token bucket per caller on each execution service; past it, REST 429 with Retry-After,
GraphQL RATE_LIMITED, gRPC RESOURCE_EXHAUSTED. On a server process of its own (a rate of 2)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from exec_service.rate_limit import StartRate
from models.errors import TooManyRequests
from protos import execution_pb2 as pb
from protos.execution_pb2_grpc import WorkflowExecutionStub
from tests.live_server import LiveServer, live_server


def test_a_bucket_refills_at_its_rate_and_keeps_names_apart() -> None:
    rate = StartRate(per_second=10, burst=2)
    rate.take("a")
    rate.take("a")
    with pytest.raises(TooManyRequests, match="at most 10 a second"):
        rate.take("a")
    rate.take("b")  # another caller has its own
    time.sleep(0.15)  # more than a tenth of a second: one token back
    rate.take("a")
    unlimited = StartRate(per_second=0)
    for _ in range(1000):
        unlimited.take("a")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("rate") / "db.sqlite3"
    with live_server(f"sqlite://{path}", {"WORKFLOW_MAX_STARTS_PER_SECOND": "2"}) as running:
        yield running


def test_starts_past_the_rate_are_refused_on_every_surface(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        workflow_id = http.post("/workflows/", json={"name": "r", "tasks": []}).json()["id"]
        answers = [http.post(f"/workflows/{workflow_id}/execute", json={}) for _ in range(4)]
        codes = [answer.status_code for answer in answers]
        assert codes[:2] == [200, 200], [answer.text for answer in answers]
        refused = answers[codes.index(429)]
        assert refused.headers["retry-after"] == "1"
        assert "Too many executions started by 'anonymous'" in refused.json()["detail"]
        mutation = "mutation($w: ID!) { executeWorkflow(workflowId: $w) { id } }"
        graphql = http.post(
            "/graphql", json={"query": mutation, "variables": {"w": str(workflow_id)}}
        ).json()
        assert graphql["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = WorkflowExecutionStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id=workflow_id))
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        time.sleep(1.1)  # the bucket refills at 2 a second
        again = http.post(f"/workflows/{workflow_id}/execute", json={})
        assert again.status_code == 200, again.text
