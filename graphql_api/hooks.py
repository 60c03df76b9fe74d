"""`POST /hooks/{id}`: a signed webhook delivery starts the trigger's workflow.

Outside API-key authentication: the trigger's secret is the credential. The body is the
execution's input (a JSON object), `X-Workflow-Signature: sha256=<hex HMAC-SHA256 of the raw
body under the secret>` proves the sender knows the secret (compared in constant time), and
`X-Workflow-Delivery`, when sent, is the idempotency key: a redelivery answers the same
execution. The execution records `triggered_by = "trigger:<id>"`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from graphql_api.exec_client import ExecutionClient
from models import triggers
from models.errors import Invalid, NotFound, Unavailable
from models.inputs import INPUT_MAX_BYTES, execution_input, idempotency_key

router = APIRouter(include_in_schema=False)
# A delivery's body at most: it becomes the execution's input.
HOOK_BODY_MAX_BYTES = INPUT_MAX_BYTES


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@router.post("/hooks/{trigger_id}", status_code=202)
async def deliver(trigger_id: int, request: Request) -> JSONResponse:
    trigger = await triggers.find(trigger_id)
    if trigger is None:
        raise NotFound(triggers.TRIGGER_NOT_FOUND)
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > HOOK_BODY_MAX_BYTES:
            return JSONResponse(
                {"detail": f"A delivery is at most {HOOK_BODY_MAX_BYTES} bytes"}, status_code=413
            )
    body = bytes(received)
    signature = request.headers.get("x-workflow-signature")
    if not triggers.signature_matches(trigger.secret, body, signature):
        return JSONResponse({"detail": "Invalid signature"}, status_code=401)
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise Invalid("Invalid input: the body must be a JSON object") from None
    data = execution_input(value, "body")
    if data is None:
        raise Invalid("Invalid input: the body must be a JSON object")
    key = idempotency_key(request.headers.get("x-workflow-delivery"), "X-Workflow-Delivery")
    client: ExecutionClient = request.app.state.exec_client
    if client.trigger_authorization is None and await request.app.state.authenticator.required():
        raise Unavailable(
            "Webhooks need WORKFLOW_SERVICE_KEY on `workflow api` (an admin key) to reach the "
            "execution service"
        )
    execution_id = await client.execute(
        trigger.workflow_id,
        key,
        data,
        authorization=client.trigger_authorization,
        on_behalf_of=f"trigger:{trigger.id}",
    )
    return JSONResponse({"execution_id": execution_id, "status": "pending"}, status_code=202)
