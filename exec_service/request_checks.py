"""Requests the gRPC plane refuses before protobuf's own decoding can mislead it.

protobuf decodes an int32 field from any varint, keeping the low 32 bits: `execution_id`
2**32 + 1 arrived as 1, and answered about execution 1. Every varint field of our request
messages is an int32, so a varint outside int32's range is refused (INVALID_ARGUMENT), as are
bytes that are not a message at all, without the decoder's class names in the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

INT32_MAX = 2**31 - 1
# Negative int32 values travel as 64-bit two's complement varints.
NEGATIVE_INT32_MIN = 2**64 - 2**31
MALFORMED = "malformed request: not a message of this method's type"


class Refused:
    """What the checking deserializer hands on instead of a request it refused."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def int32_problem(data: bytes) -> str | None:
    """Why these bytes are refused (a varint field out of int32's range), or None."""
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            if INT32_MAX < value < NEGATIVE_INT32_MIN or value >= 2**64:
                return f"field {number}: {value} is out of range for an int32 id"
        elif wire_type == 2:
            length, position = _varint(data, position)
            position += length
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        else:
            raise DecodeError("unsupported wire type")
    if position != len(data):
        raise DecodeError("truncated field")
    return None


def checked(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler, with requests checked first and refused with INVALID_ARGUMENT."""
    decode: Callable[[bytes], Any] | None = handler.request_deserializer
    if decode is None or handler.request_streaming:
        return handler

    def deserialize(data: bytes) -> Any:
        try:
            problem = int32_problem(data)
            return Refused(problem) if problem else decode(data)
        except (DecodeError, ValueError, IndexError):
            return Refused(MALFORMED)

    kinds = {
        "request_deserializer": deserialize,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        stream: Any = handler.unary_stream  # an async generator on grpc.aio

        async def streaming(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, Refused):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            async for answer in stream(request, context):
                yield answer

        return grpc.unary_stream_rpc_method_handler(streaming, **kinds)
    unary: Any = handler.unary_unary  # a coroutine function on grpc.aio

    async def single(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Refused):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await unary(request, context)

    return grpc.unary_unary_rpc_method_handler(single, **kinds)
