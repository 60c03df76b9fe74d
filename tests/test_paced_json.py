"""JSON in pieces (models/paced_json.py) gives the bytes one json.dumps call gives, and a GraphQL
answer too large for one slice is streamed with the same bytes (issue 16)."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from graphql_api.schema import schema
from models import paced_json, pacing
from models.workflows import dumps_text

DOCUMENTS: list[Any] = [
    {},
    [],
    None,
    "plain",
    {"data": {"workflows": [{"id": "1", "tasks": [{"p": {"ü": [1, 2.5, None, True]}}]}]}},
    {"data": {"workflows": []}, "errors": [{"message": '✓ \u2028 "quoted"'}]},
    [[[[[[1]]]]], {"a": {"b": {"c": {"d": {"e": {}}}}}}],
    {1: "an int key", "s": [1]},  # json.dumps writes the key as "1"; not split at that level
    {"big": 2**70, "small": -(2**70), "float": 1e300},
]


def strawberry_dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("dump", [strawberry_dump, dumps_text])
@pytest.mark.parametrize("depth", [0, 1, 3, 10])
async def test_pieces_join_to_what_one_call_writes(document: Any, dump: Any, depth: int) -> None:
    assert "".join(paced_json.pieces(document, dump, depth)) == dump(document)
    assert await paced_json.dumps(document, dump, depth) == dump(document)


async def test_a_value_json_refuses_is_refused_in_pieces_too() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        await paced_json.dumps({"data": [{"x": math.nan}]}, dumps_text)


@pytest.mark.parametrize(
    "text",
    ["[]", " [ ] ", '[1,"a",{"b":[2]},null]', ' [ 1 , [ 2 ] ,\n{"c" : 3} ] ', '[{"ü":"✓"}]'],
)
async def test_loads_list_reads_what_json_loads_reads(text: str) -> None:
    assert await paced_json.loads_list(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", ["{}", "[1 2]", "[1,", ""])
async def test_loads_list_refuses_what_is_not_an_array(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json.JSONDecodeError is a ValueError too
        await paced_json.loads_list(text)


async def test_a_long_answer_is_streamed_with_strawberrys_bytes(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = [{"name": f"t{n}", "order": n, "parameters": {"n": n}} for n in range(1, 30)]
    for number in range(3):
        made = await client.post("/workflows/", json={"name": f"long {number}", "tasks": tasks})
        assert made.status_code == 200, made.text
    # A fragment: Strawberry answers it, not the fast path.
    query = (
        "{ workflows(limit: 100) { ...W } } "
        "fragment W on Workflow { id name tasks { name parameters } }"
    )
    # Every slice spent at once: the answer goes out in pieces.
    monkeypatch.setattr(pacing, "PACE_SECONDS", 0.0)
    response = await client.post("/graphql", json={"query": query})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "content-length" not in response.headers  # streamed
    context = {"executions_loader": None, "exec_client": app.state.exec_client}
    result = await schema.execute(query, context_value=context)
    assert result.errors is None
    assert response.content == strawberry_dump({"data": result.data}).encode()
    monkeypatch.undo()
    whole = await client.post("/graphql", json={"query": query})
    assert whole.headers["content-length"] == str(len(whole.content))  # short: not streamed
    assert whole.content == response.content
