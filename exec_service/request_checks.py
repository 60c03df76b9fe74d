"""Requests the gRPC plane refuses before protobuf's own decoding can mislead it.

protobuf decodes an int32 field from any varint, keeping the low 32 bits: `execution_id`
2**32 + 1 arrived as 1, and answered about execution 1. So the request's bytes are walked
first (tag by tag: protobuf's Python API offers no way to see a field's varint as sent), and an
int32 field outside int32's range is refused (INVALID_ARGUMENT), as is a string field that is
not UTF-8 (protobuf's own refusal names only the message type), and bytes that are not a
message at all, without the decoder's class names in the answer. Fields are named from the
request type's descriptor; numbers it does not know are left to protobuf (kept as unknown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
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


def request_problem(data: bytes, fields: Mapping[int, FieldDescriptor]) -> str | None:
    """Why these bytes are refused (an int32 field out of range, a string field that is not
    UTF-8), or None. Raises DecodeError when they are not a message at all."""
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        field, wire_type = fields.get(tag >> 3), tag & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            in_range = value <= INT32_MAX or NEGATIVE_INT32_MIN <= value < 2**64
            if field is not None and field.type == FieldDescriptor.TYPE_INT32 and not in_range:
                return f"{field.name}: {value} is out of range for an int32 id"
        elif wire_type == 2:
            length, position = _varint(data, position)
            if field is not None and field.type == FieldDescriptor.TYPE_STRING:
                try:
                    data[position : position + length].decode("utf-8")
                except UnicodeDecodeError:
                    return f"{field.name}: must be valid UTF-8 text"
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


def _fields(decode: Callable[[bytes], Any]) -> Mapping[int, FieldDescriptor]:
    """The request type's fields by number: `decode` is its class's FromString."""
    descriptor = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
    fields: Mapping[int, FieldDescriptor] = getattr(descriptor, "fields_by_number", {})
    return fields


def checked(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler, with requests checked first and refused with INVALID_ARGUMENT."""
    decode: Callable[[bytes], Any] | None = handler.request_deserializer
    if decode is None or handler.request_streaming:
        return handler

    fields = _fields(decode)

    def deserialize(data: bytes) -> Any:
        try:
            problem = request_problem(data, fields)
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
