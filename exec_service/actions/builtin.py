"""The built-in actions: `noop` (the original service's only behaviour) and `http`."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from exec_service.actions.http_reach import DestinationRefused, Unresolvable, checked_client
from models.inputs import TIMEOUT_SECONDS_MAX
from models.settings import HTTP_MAX_BYTES, http_max_bytes
from models.storable import storable_text

# One connection pool for every http task in this process.
_client: httpx.AsyncClient | None = None
# An http task's `timeout` when it sets none (or null): seconds for the whole request. Its
# largest is the largest task timeout; the task's own timeout (checked at creation) is tighter.
DEFAULT_HTTP_TIMEOUT = 30.0
# What goes on the wire is checked before it does: a method is an HTTP token, a header name
# too, and a header value holds no line break (h11 would refuse them, in words about HTTP).
METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00\r\n]")


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
        # (Refused at creation too; a template can still render one.)
        raise PermanentActionError("noop: parameters.duration must be a number of seconds >= 0")
    if duration:
        await asyncio.sleep(duration)
    return {}


def _http_client() -> httpx.AsyncClient:
    global _client
    if _client is None or _client.is_closed:
        _client = checked_client()
    return _client


async def close_http_client() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None


@dataclass(frozen=True)
class HttpCall:
    """An http task's parameters, checked before anything is sent."""

    method: str
    url: str
    headers: dict[str, str]
    content: dict[str, Any]  # `json=` or `content=`, as httpx takes them
    timeout: float
    expect_status: frozenset[int] | None

    @classmethod
    def of(cls, parameters: dict[str, Any]) -> HttpCall:
        """Raises PermanentActionError naming the parameter: another attempt cannot mend it."""
        url = parameters.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PermanentActionError("http: parameters.url must be an http:// or https:// URL")
        try:
            if not httpx.URL(url).host:
                raise PermanentActionError("http: parameters.url has no host")
        except httpx.InvalidURL as exc:
            raise PermanentActionError(f"http: parameters.url is not a URL: {exc}") from None
        method = parameters.get("method", "GET")
        if not isinstance(method, str) or not METHOD.fullmatch(method.upper()):
            raise PermanentActionError("http: parameters.method must be an HTTP method, e.g. GET")
        content: dict[str, Any] = {}
        if "json" in parameters:
            content["json"] = parameters["json"]
        elif "body" in parameters:
            body = parameters["body"]
            content["content"] = body if isinstance(body, str) else json.dumps(body)
        return cls(
            method=method.upper(),
            url=url,
            headers=_headers(parameters.get("headers")),
            content=content,
            timeout=_timeout(parameters.get("timeout")),
            expect_status=_expected(parameters.get("expect_status")),
        )


async def http(parameters: dict[str, Any]) -> dict[str, Any]:
    call = HttpCall.of(parameters)
    try:
        limit = http_max_bytes()
    except ValueError as exc:
        raise PermanentActionError(f"http: {exc}") from None
    where = f"{call.method} {call.url}"
    try:
        # `timeout` bounds the whole request (httpx's bounds each read: a server that drips a
        # byte at a time would never end).
        async with asyncio.timeout(call.timeout):
            async with _http_client().stream(
                call.method, call.url, headers=call.headers, timeout=call.timeout, **call.content
            ) as response:
                content = await _read_capped(response, limit)
    except DestinationRefused as exc:
        raise PermanentActionError(f"http: destination refused: {exc}") from None
    except (TimeoutError, httpx.TimeoutException):
        raise ActionError(f"http: {where} timed out after {call.timeout:g}s") from None
    except httpx.HTTPError as exc:
        # The same words whether nothing listens or something refused: an http task must not
        # tell its author which ports are open where.
        raise ActionError(f"http: {where} failed: {_kind(exc)}") from None
    if call.expect_status is not None:
        ok = response.status_code in call.expect_status
    else:
        ok = response.is_success
    if not ok:
        raise ActionError(f"http: {where} answered {response.status_code}")
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


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body, read as it streams in (decompressed), refused as soon as it passes `limit`
    bytes; a Content-Length past it is refused before the first byte is read."""
    too_large = f"http: response body larger than {limit} bytes ({HTTP_MAX_BYTES})"
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
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
    if isinstance(exc.__cause__, Unresolvable):
        return f"could not connect ({exc})"  # no port was tried: nothing to tell about one
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the answer was not valid HTTP"
    return type(exc).__name__


def _headers(value: Any) -> dict[str, str]:
    """`headers`: an object of names to text or numbers."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PermanentActionError("http: parameters.headers must be an object")
    headers: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise PermanentActionError(f"http: parameters.headers: {name!r:.80} is not a name")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise PermanentActionError(f"http: parameters.headers.{name} must be text")
        text = str(item)
        if HEADER_VALUE_FORBIDDEN.search(text):
            raise PermanentActionError(
                f"http: parameters.headers.{name} must not hold line breaks or NUL"
            )
        headers[name] = text
    return headers


def _timeout(value: Any) -> float:
    """`timeout`: seconds, > 0 and at most the largest task timeout; absent or null: the
    default."""
    if value is None:
        return DEFAULT_HTTP_TIMEOUT
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= TIMEOUT_SECONDS_MAX
    ):
        raise PermanentActionError(
            "http: parameters.timeout must be a number of seconds > 0 and "
            f"<= {TIMEOUT_SECONDS_MAX:g}"
        )
    return float(value)


def _expected(value: Any) -> frozenset[int] | None:
    """`expect_status`: a status code or a list of them; absent or null: any 2xx."""
    if value is None:
        return None
    codes = value if isinstance(value, list) else [value]
    if not codes or not all(
        isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599
        for code in codes
    ):
        raise PermanentActionError(
            "http: parameters.expect_status must be a status code (100-599) or a list of them"
        )
    return frozenset(codes)
