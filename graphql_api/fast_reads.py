"""The hottest read, `GET /workflows/{id}`, answered before the framework's routing.

Cached workflow reads are the API's most frequent request; FastAPI's routing, dependency
solving and middleware cost several times the read itself (benchmarks/bench_api.py shows it).
This ASGI middleware answers exactly that route, with the same data-layer call, bytes, status
and headers as the FastAPI route behind it, and hands every other request on unchanged.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from graphql_api.request_metrics import ROUTE
from models import workflows as store
from models.errors import NotFound

# Only plain decimal ids: anything else (422 for the path parameter, ...) is the route's to say.
WORKFLOW_PATH = re.compile(r"/workflows/([0-9]{1,20})/?")
NOT_FOUND_BODY = b'{"detail":"Workflow not found"}'
# The template of the route answered here (request metrics).
WORKFLOW_ROUTE = "/workflows/{workflow_id}"


class FastWorkflowReads:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = WORKFLOW_PATH.fullmatch(scope["path"])
            if match is not None:
                scope[ROUTE] = WORKFLOW_ROUTE
                try:
                    status, body = 200, await store.get_workflow_json(int(match.group(1)))
                except NotFound:
                    status, body = 404, NOT_FOUND_BODY
                await _send_json(send, status, body)
                return
        await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
