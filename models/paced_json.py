"""Large JSON documents encoded and decoded in pieces, between turns of the loop (issue #16).

`json.dumps` and `json.loads` work in C, in one call: 20 MB (a page of 100 workflows of 1,000
tasks) holds the event loop 0.2 to 1 s, as `benchmarks/bench_loop_block.py` shows. Here a
document is cut into its top levels and each piece goes through the same C encoder or decoder,
with a turn of the loop whenever the slice of models/pacing.py is spent. The bytes are exactly
those of one `json.dumps` call with the same options: pieces are joined with the separators it
would have written.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from models.pacing import due, next_turn

# A document split this deep: {"data": {"workflows": [ {...}, ... ]}} is cut into each
# workflow's fields, so one piece is at most one field (a workflow's 1,000 tasks: some 3 ms).
SPLIT_DEPTH = 4
# Pieces gathered into one chunk of a streamed answer: fewer, larger writes to the socket.
CHUNK_CHARACTERS = 1 << 16

_decoder = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")

Dump = Callable[[Any], str]


def pieces(value: Any, dump: Dump, depth: int = SPLIT_DEPTH) -> Iterator[str]:
    """`dump(value)` in pieces that join to the same text; `dump` must write compact JSON
    (separators "," and ":") and keys as it writes strings, as json.dumps does."""
    if depth and isinstance(value, dict) and value and all(type(key) is str for key in value):
        opening = "{"
        for key, item in value.items():
            yield opening + dump(key) + ":"
            yield from pieces(item, dump, depth - 1)
            opening = ","
        yield "}"
    elif depth and isinstance(value, list) and value:
        opening = "["
        for item in value:
            yield opening
            yield from pieces(item, dump, depth - 1)
            opening = ","
        yield "]"
    else:
        yield dump(value)


def first_slice(parts: Iterator[str]) -> tuple[str, bool]:
    """What `parts` give until the loop's slice is spent, and whether that was all of them."""
    done: list[str] = []
    for part in parts:
        done.append(part)
        if due():
            return "".join(done), False
    return "".join(done), True


async def chunks(parts: Iterator[str]) -> AsyncIterator[str]:
    """The rest of `parts` as chunks of about CHUNK_CHARACTERS, taking turns with the loop."""
    gathered: list[str] = []
    size = 0
    for part in parts:
        gathered.append(part)
        size += len(part)
        if size >= CHUNK_CHARACTERS:
            yield "".join(gathered)
            gathered, size = [], 0
        if due():
            await next_turn()
    if gathered:
        yield "".join(gathered)


async def dumps(value: Any, dump: Dump, depth: int = SPLIT_DEPTH) -> str:
    """`dump(value)`, taking turns with the loop between pieces."""
    return "".join([chunk async for chunk in chunks(pieces(value, dump, depth))])


async def loads_list(data: bytes | str) -> list[Any]:
    """A JSON array, decoded item by item, taking turns with the loop between items."""
    return [item async for item in items(data)]


async def items(data: bytes | str) -> AsyncIterator[Any]:
    """The items of a JSON array, decoded one at a time as they are asked for (each can be
    dropped before the next is made), taking turns with the loop between items."""
    text = data.decode() if isinstance(data, bytes) else data
    position = _skip(text, 0)
    if text[position : position + 1] != "[":
        raise ValueError("not a JSON array")
    position = _skip(text, position + 1)
    if text[position : position + 1] == "]":
        return
    while True:
        item, position = _decoder.raw_decode(text, position)
        yield item
        position = _skip(text, position)
        following = text[position : position + 1]
        if following == "]":
            return
        if following != ",":
            raise ValueError(f"expected ',' or ']' at {position}")
        position = _skip(text, position + 1)
        if due():
            await next_turn()


def _skip(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position
