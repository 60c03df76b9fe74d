"""422 answers for invalid requests: FastAPI's shape (`{"detail": [{"type", "loc", "msg",
"input", "ctx"}]}`), made safe to render and bounded.

FastAPI echoes each invalid value whole. A 337 KB body came back whole; a NaN, an infinity or a
lone surrogate in it (the very things refused) made the 422 itself fail to render, and the
client got a 500. Here every echoed value is kept only as far as it renders as JSON within
ECHO_MAX characters; past that it is cut, and what cannot be rendered is shown as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from models.errors import ECHO_MAX, shown


def _safe_text(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates shown as their escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _plain(value: Any) -> Any:
    """A value JSON can hold: non-finite numbers and other objects as text."""
    if isinstance(value, str):
        return _safe_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_safe_text(str(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return _safe_text(str(value))


def echo(value: Any) -> Any:
    """The invalid value as the answer shows it: itself if short, else the start of its JSON."""
    plain = _plain(value)
    text = json.dumps(plain, ensure_ascii=False)
    return plain if len(text) <= ECHO_MAX else shown(text)


def safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    shown = []
    for error in errors:
        entry: dict[str, Any] = {
            "type": error.get("type"),
            "loc": [_plain(part) for part in error.get("loc", ())],
            "msg": _safe_text(str(error.get("msg", ""))),
        }
        if "input" in error:
            entry["input"] = echo(error["input"])
        if "ctx" in error:
            entry["ctx"] = {key: echo(value) for key, value in error["ctx"].items()}
        shown.append(entry)
    return shown


def _as_fastapi_renders(errors: Sequence[Any]) -> list[Any] | None:
    """FastAPI's own rendering of the errors, when it is safe and small: ordinary invalid
    requests are answered byte for byte as the service we replace answered them."""
    rendered = jsonable_encoder(errors)
    try:
        json.dumps(rendered, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return None
    for error in rendered:
        if len(json.dumps(error.get("input"), ensure_ascii=False)) > ECHO_MAX:
            return None
    result: list[Any] = rendered
    return result


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    detail = _as_fastapi_renders(errors)
    return JSONResponse({"detail": detail or safe_errors(errors)}, status_code=422)
