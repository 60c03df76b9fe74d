"""The built-in actions and the `workflow.actions` entry-point group."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_service import actions
from exec_service.actions.builtin import ActionError, PermanentActionError, http, noop
from tests.recorder import Recorder, recorder


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Recorder]:
    with recorder() as running:
        yield running


async def test_noop_waits_and_answers_an_empty_object() -> None:
    assert await noop({}) == {}
    assert await noop({"duration": 0.01}) == {}
    for bad in (-1, "1", True, None):  # (from a template: refused at creation otherwise)
        with pytest.raises(PermanentActionError):
            await noop({"duration": bad})


async def test_http_answers_status_headers_and_parsed_body(endpoint: Recorder) -> None:
    output = await http({"url": endpoint.url("ok"), "headers": {"x-test": "1"}})
    assert output["status_code"] == 200
    assert output["body"] == {"label": "ok", "hit": 1}
    assert output["headers"]["content-type"] == "application/json"
    assert endpoint.count("ok") == 1


async def test_http_fails_on_an_unexpected_status(endpoint: Recorder) -> None:
    with pytest.raises(ActionError, match="answered 500"):
        await http({"url": endpoint.url("boom", status=500)})
    output = await http({"url": endpoint.url("teapot", status=418), "expect_status": 418})
    assert output["status_code"] == 418
    with pytest.raises(ActionError, match="answered 200"):
        await http({"url": endpoint.url("strict"), "expect_status": [201, 202]})


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"url": None}, "url"),
        ({"url": "ftp://x"}, "url"),
        ({"url": "http:///path"}, "url"),
        ({"method": "GET /admin HTTP/1.1\r\nX:"}, "method"),
        ({"method": 7}, "method"),
        ({"headers": []}, "headers"),
        ({"headers": {"x-a": "1\r\nX-Injected: 1"}}, "headers.x-a"),
        ({"headers": {"bad name": "1"}}, "headers"),
        ({"headers": {"x-a": {"nested": 1}}}, "headers.x-a"),
        ({"expect_status": "ok"}, "expect_status"),
        ({"expect_status": [200, 1000]}, "expect_status"),
        ({"expect_status": []}, "expect_status"),
    ],
)
async def test_http_refuses_bad_parameters_before_sending_anything(
    endpoint: Recorder, parameters: dict[str, Any], named: str
) -> None:
    with pytest.raises(PermanentActionError, match=rf"^http: parameters\.{re.escape(named)}"):
        await http({"url": endpoint.url("never")} | parameters)
    assert endpoint.count("never") == 0


async def test_http_fails_on_an_unreachable_host_and_may_retry() -> None:
    with pytest.raises(ActionError, match="failed") as failed:
        await http({"url": "http://127.0.0.1:1/", "timeout": 2})
    assert not isinstance(failed.value, PermanentActionError)


async def test_http_sends_method_headers_and_body(endpoint: Recorder) -> None:
    output = await http(
        {"url": endpoint.url("sent"), "method": "get", "headers": {"x-n": 3}, "timeout": None}
    )
    assert output["status_code"] == 200
    assert endpoint.count("sent") == 1


async def test_entry_point_actions_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package that declares `workflow.actions = shout = my_actions:shout` is picked up."""
    (tmp_path / "my_actions.py").write_text(
        "async def shout(parameters):\n    return {'said': str(parameters.get('word')).upper()}\n"
    )
    info = tmp_path / "my_actions-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-actions\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[workflow.actions]\nshout = my_actions:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(actions, "_loaded", None)  # restored after the test
    monkeypatch.delitem(sys.modules, "my_actions", raising=False)
    assert await actions.get("shout")({"word": "hi"}) == {"said": "HI"}
    assert actions.get("noop") is noop  # an entry point cannot shadow a built-in
    with pytest.raises(actions.UnknownAction):
        actions.get("whisper")
