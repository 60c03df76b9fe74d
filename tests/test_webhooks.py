"""Signed webhooks (contract section 9): a good signature starts the trigger's workflow with the
body as input; a wrong, missing or tampered one is 401; a redelivery answers the same execution;
an unknown trigger is 404; a body that is not a JSON object is 422. On the shared app (an open
service), and on a server process with keys, where the route needs no API key."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.executions import make_workflow, wait_until_done
from tests.live_server import live_server

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

CREATE = (
    "mutation($id: ID!, $name: String!) "
    "{ createTrigger(workflowId: $id, name: $name) { id name path secret } }"
)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def make_trigger(client: httpx.AsyncClient, workflow_id: int) -> dict[str, Any]:
    variables = {"id": str(workflow_id), "name": "github"}
    answer = await client.post("/graphql", json={"query": CREATE, "variables": variables})
    trigger: dict[str, Any] = answer.json()["data"]["createTrigger"]
    return trigger


async def deliver(
    client: httpx.AsyncClient, path: str, body: bytes, **headers: str
) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return await client.post(path, content=body, headers=headers)


async def test_a_signed_delivery_starts_the_workflow_with_its_body(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    task = {"name": "echo", "order": 1, "action": "echo", "parameters": {"ref": "{{ input.ref }}"}}
    workflow_id = await make_workflow(client, [task])
    trigger = await make_trigger(client, workflow_id)
    assert trigger["path"] == f"/hooks/{trigger['id']}"
    body = json.dumps({"ref": "main", "commits": 3}).encode()
    answer = await deliver(
        client, trigger["path"], body, **{"X-Workflow-Signature": sign(trigger["secret"], body)}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "pending"
    execution_id = answer.json()["execution_id"]
    final = await wait_until_done(stub, execution_id)
    assert final.status == "completed"
    assert json.loads(final.input_json) == {"ref": "main", "commits": 3}
    assert final.triggered_by == f"trigger:{trigger['id']}"
    assert json.loads(final.output_json) == {"echo": {"ref": "main"}}
    # The secret is never shown again.
    listed = await client.post("/graphql", json={"query": "{ triggers { id name path } }"})
    assert trigger["secret"] not in listed.text


async def test_signatures_redeliveries_and_refusals(client: httpx.AsyncClient) -> None:
    workflow_id = await make_workflow(client, [])
    trigger = await make_trigger(client, workflow_id)
    path, secret = trigger["path"], trigger["secret"]
    body = b'{"n": 1}'
    good = sign(secret, body)
    # One digit changed (never to the digit it was: 1 run in 16 ended in 0 and was accepted).
    changed = good[:-1] + ("1" if good.endswith("0") else "0")
    for signature in (None, "sha256=" + "0" * 64, sign("another secret", body), changed):
        headers = {"X-Workflow-Signature": signature} if signature else {}
        refused = await deliver(client, path, body, **headers)
        assert (refused.status_code, refused.json()) == (401, {"detail": "Invalid signature"})
    # Tampered: the signature of another body.
    tampered = await deliver(client, path, b'{"n": 2}', **{"X-Workflow-Signature": good})
    assert tampered.status_code == 401
    assert (await client.get(f"/workflows/{workflow_id}/executions")).json() == []

    first = await deliver(
        client, path, body, **{"X-Workflow-Signature": good, "X-Workflow-Delivery": "d-1"}
    )
    again = await deliver(
        client, path, body, **{"X-Workflow-Signature": good, "X-Workflow-Delivery": "d-1"}
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["execution_id"] == again.json()["execution_id"]

    for not_an_object in (b"[1, 2]", b'"text"', b"{nope", b'{"a": NaN}'):
        signed = {"X-Workflow-Signature": sign(secret, not_an_object)}
        assert (await deliver(client, path, not_an_object, **signed)).status_code == 422
    unknown = await deliver(client, "/hooks/2147483000", body, **{"X-Workflow-Signature": good})
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Trigger not found"})
    deleted = await client.post(
        "/graphql",
        json={
            "query": "mutation($id: ID!) { deleteTrigger(id: $id) }",
            "variables": {"id": trigger["id"]},
        },
    )
    assert deleted.json()["data"]["deleteTrigger"] is True
    assert (await deliver(client, path, body, **{"X-Workflow-Signature": good})).status_code == 404


@pytest.mark.slow
def test_the_route_needs_no_api_key_where_keys_exist(tmp_path: Any) -> None:
    admin = {"Authorization": "Bearer hooks-admin-key"}
    env = {"WORKFLOW_ADMIN_KEY": "hooks-admin-key"}
    with live_server(f"sqlite://{tmp_path}/hooks.sqlite3", env) as server:
        body = {"name": "w", "tasks": [{"name": "t", "order": 1}]}
        workflow_id = httpx.post(f"{server.url}/workflows/", json=body, headers=admin).json()["id"]
        variables = {"id": str(workflow_id), "name": "ci"}
        made = httpx.post(
            f"{server.url}/graphql", json={"query": CREATE, "variables": variables}, headers=admin
        ).json()["data"]["createTrigger"]
        payload = b'{"ok": true}'
        answer = httpx.post(
            server.url + made["path"],
            content=payload,
            headers={
                "content-type": "application/json",
                "X-Workflow-Signature": sign(made["secret"], payload),
            },
        )
        assert answer.status_code == 202, answer.text
        shown = httpx.get(
            f"{server.url}/executions/{answer.json()['execution_id']}", headers=admin
        ).json()
        assert shown["triggered_by"] == f"trigger:{made['id']}"
        # Only the route is open: the API itself still needs a key.
        assert httpx.get(f"{server.url}/executions/1").status_code == 401
