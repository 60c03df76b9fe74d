"""Requests that change state carry JSON, or nothing.

A web page can send a `text/plain` or form POST to any address without asking first (no CORS
preflight): were such bodies accepted, any page a user of the API opens could start runs or
change workflows on a service it reaches (on loopback, say). Requiring `application/json`
makes the browser ask first, and our answer carries no CORS headers. A POST with no body at all
(`curl -X POST .../execute`) stays accepted.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from graphql_api.asgi_answers import send_json

WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
REFUSAL = {"detail": "Content-Type must be application/json"}


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {bytes(key).lower(): bytes(value) for key, value in scope.get("headers") or ()}


class JsonOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in WITH_BODY:
            headers = _headers(scope)
            has_body = headers.get(b"content-length", b"0") != b"0" or (
                b"transfer-encoding" in headers
            )
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if has_body and media_type != b"application/json":
                await send_json(send, 415, REFUSAL)
                return
        await self.app(scope, receive, send)
