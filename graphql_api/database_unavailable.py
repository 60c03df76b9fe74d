"""503 with Retry-After when the database does not answer, on every HTTP route.

A pure ASGI middleware, outermost but for the allowed-hosts check: the fast read paths and the
authentication middleware read the database before any route (and so before FastAPI's
exception handlers) runs. A WebSocket, or an answer already begun, is left as it is."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphql_api.asgi_answers import send_json
from models.db_unavailable import RETRY_AFTER_SECONDS, UNAVAILABLE_MESSAGE, database_unavailable
from models.outages import Outage

log = logging.getLogger(__name__)


class DatabaseUnavailable:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.outage = Outage(log, "the database (HTTP API)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started or not database_unavailable(exc):
                raise
            self.outage.failed(exc, "requests are answered 503")
            await send_json(
                send,
                503,
                {"detail": UNAVAILABLE_MESSAGE},
                [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
            )
