"""The built-in actions: `noop` (the original service's only behaviour) and `http`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from models.storable import storable_text

# One connection pool for every http task in this process.
_client: httpx.AsyncClient | None = None
DEFAULT_HTTP_TIMEOUT = 30.0


class ActionError(Exception):
    """The action ran and failed; the message says why (it becomes the task's error)."""


class UnknownAction(LookupError):
    """No action of that name is installed."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown action"


def describe(exc: BaseException) -> str:
    """An error as a task run records it: an action's own message alone, else type and text;
    in text every database stores (see models.executions.storable_text)."""
    text = str(exc)
    if not isinstance(exc, ActionError | UnknownAction):
        text = f"{type(exc).__name__}: {text}"
    return storable_text(text)


async def noop(parameters: dict[str, Any]) -> dict[str, Any]:
    duration = parameters.get("duration", 0)
    if not isinstance(duration, int | float) or isinstance(duration, bool) or duration < 0:
        raise ActionError("noop: parameters.duration must be a number of seconds >= 0")
    if duration:
        await asyncio.sleep(duration)
    return {}


def _http_client() -> httpx.AsyncClient:
    global _client
    if _client is None or _client.is_closed:
        _client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
    return _client


async def close_http_client() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None


async def http(parameters: dict[str, Any]) -> dict[str, Any]:
    url = parameters.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ActionError("http: parameters.url must be an http:// or https:// URL")
    method = str(parameters.get("method", "GET")).upper()
    headers = parameters.get("headers") or {}
    if not isinstance(headers, dict):
        raise ActionError("http: parameters.headers must be an object")
    timeout = parameters.get("timeout", DEFAULT_HTTP_TIMEOUT)
    request: dict[str, Any] = {"headers": {str(k): str(v) for k, v in headers.items()}}
    if "json" in parameters:
        request["json"] = parameters["json"]
    elif "body" in parameters:
        body = parameters["body"]
        request["content"] = body if isinstance(body, str) else json.dumps(body)
    try:
        response = await _http_client().request(method, url, timeout=timeout, **request)
    except httpx.HTTPError as exc:
        raise ActionError(f"http: {method} {url} failed: {exc!r}") from None
    expected = parameters.get("expect_status")
    ok = response.status_code in _as_list(expected) if expected else response.is_success
    if not ok:
        raise ActionError(f"http: {method} {url} answered {response.status_code}")
    body_out: Any
    try:
        body_out = response.json()
    except ValueError:
        body_out = response.text
    return {
        "status_code": response.status_code,
        "headers": dict(response.headers),
        "body": body_out,
    }


def _as_list(value: Any) -> list[int]:
    if isinstance(value, list):
        return [int(item) for item in value]
    return [int(value)]
