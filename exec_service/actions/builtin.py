"""The built-in actions: `noop` (the original service's only behaviour) and `http`."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx

from exec_service.actions.http_reach import DestinationRefused, destination
from models.storable import storable_text

# One connection pool for every http task in this process.
_client: httpx.AsyncClient | None = None
DEFAULT_HTTP_TIMEOUT = 30.0
# An http task's `timeout` at most: a task's own timeout bounds the whole attempt anyway.
MAX_HTTP_TIMEOUT = 3600.0
# A response body at most (WORKFLOW_HTTP_MAX_BYTES): it becomes the task's output, which is
# stored and announced.
DEFAULT_HTTP_MAX_BYTES = 1024 * 1024


class ActionError(Exception):
    """The action ran and failed; the message says why (it becomes the task's error)."""


class PermanentActionError(ActionError):
    """A failure that another attempt cannot mend (a refused destination, bad parameters):
    the task fails at once, whatever its max_attempts."""


def failure(exc: BaseException) -> dict[str, Any]:
    """An attempt's failure as a worker or a Ray actor answers it."""
    return {
        "ok": False,
        "error": describe(exc),
        "permanent": isinstance(exc, PermanentActionError),
    }


def failed(answer: dict[str, Any]) -> ActionError:
    """The error a failure answered by a worker or a Ray actor stands for."""
    kind = PermanentActionError if answer.get("permanent") else ActionError
    return kind(str(answer.get("error")))


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
        raise PermanentActionError("http: parameters.url must be an http:// or https:// URL")
    method = str(parameters.get("method", "GET")).upper()
    headers = parameters.get("headers") or {}
    if not isinstance(headers, dict):
        raise PermanentActionError("http: parameters.headers must be an object")
    timeout = _timeout(parameters.get("timeout"))
    request: dict[str, Any] = {"headers": {str(k): str(v) for k, v in headers.items()}}
    if "json" in parameters:
        request["json"] = parameters["json"]
    elif "body" in parameters:
        body = parameters["body"]
        request["content"] = body if isinstance(body, str) else json.dumps(body)
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PermanentActionError(f"http: parameters.url is not a URL: {exc}") from None
    host = target.host
    if not host:
        raise PermanentActionError("http: parameters.url has no host")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        address = await destination(host, port)
    except DestinationRefused as exc:
        raise PermanentActionError(f"http: destination refused: {exc}") from None
    # Connect to the address just checked, not to the name (which could resolve elsewhere
    # now): the name stays in the Host header and in TLS's SNI and certificate check.
    if not any(name.lower() == "host" for name in request["headers"]):
        request["headers"]["Host"] = target.netloc.decode("ascii")
    pinned = target.copy_with(host=str(address))
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    limit = max_response_bytes()
    try:
        async with _http_client().stream(
            method, pinned, timeout=timeout, extensions=extensions, **request
        ) as response:
            content = await _read_capped(response, limit, method, url)
    except httpx.TimeoutException:
        raise ActionError(f"http: {method} {url} timed out after {timeout:g}s") from None
    except httpx.HTTPError as exc:
        # The same words whether nothing listens or something refused: an http task must not
        # tell its author which ports are open where.
        raise ActionError(f"http: {method} {url} failed: {_kind(exc)}") from None
    expected = parameters.get("expect_status")
    ok = response.status_code in _as_list(expected) if expected else response.is_success
    if not ok:
        raise ActionError(f"http: {method} {url} answered {response.status_code}")
    body_out: Any
    try:
        body_out = json.loads(content)
    except ValueError:
        body_out = content.decode(response.encoding or "utf-8", errors="replace")
    return {
        "status_code": response.status_code,
        "headers": dict(response.headers),
        "body": body_out,
    }


async def _read_capped(response: httpx.Response, limit: int, method: str, url: str) -> bytes:
    """The body, read as it streams in, refused as soon as it passes `limit` bytes."""
    too_large = f"http: {method} {url} answered more than {limit} bytes (WORKFLOW_HTTP_MAX_BYTES)"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ActionError(too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ActionError(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "the answer was not valid HTTP"
    return type(exc).__name__


def _timeout(value: Any) -> float:
    """`timeout`: seconds, > 0 and at most MAX_HTTP_TIMEOUT; absent or null: the default."""
    if value is None:
        return DEFAULT_HTTP_TIMEOUT
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_HTTP_TIMEOUT
    ):
        raise PermanentActionError(
            f"http: parameters.timeout must be a number of seconds > 0 and <= {MAX_HTTP_TIMEOUT:g}"
        )
    return float(value)


def max_response_bytes() -> int:
    """WORKFLOW_HTTP_MAX_BYTES, as this process's environment has it (actions run in workers
    and Ray actors, which read their own)."""
    text = os.environ.get("WORKFLOW_HTTP_MAX_BYTES", "")
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_HTTP_MAX_BYTES


def _as_list(value: Any) -> list[int]:
    if isinstance(value, list):
        return [int(item) for item in value]
    return [int(value)]
