"""The template sandbox (models/templates.py) on its own: types, text, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from models.templates import (
    MAX_RENDERED_BYTES,
    TemplateFailed,
    check_template,
    context,
    evaluate_when,
    parameter_references,
    render_parameters,
)

CONTEXT = context(
    7,
    3,
    {"n": 2, "name": "ana", "items": [1, 2], "none": None},
    [("fetch", "completed", {"status_code": 200, "body": {"id": 42, "ok": True}})],
)


def render(text: str) -> Any:
    return render_parameters({"p": text}, CONTEXT)["p"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{{ input.n }}", 2),
        ("{{ input.n * 1.5 }}", 3.0),
        ("{{ tasks.fetch.output.body }}", {"id": 42, "ok": True}),
        ("{{ input.items }}", [1, 2]),
        ("{{ input.none }}", None),
        ("{{ tasks.fetch.output.body.ok }}", True),
        ("{{input.name|upper}}", "ANA"),
        # Text: values that are not text are written as JSON.
        ("id={{ tasks.fetch.output.body.id }}", "id=42"),
        ("{{ tasks.fetch.output.body }}!", '{"id":42,"ok":true}!'),
        ("{{ input.none }} {{ true }}", "null true"),
        ("{{ input.n }}{{ input.n }}", "22"),
        # Statements and comments are plain text: templates are expressions only.
        ("{% for x in input.items %}x{% endfor %}", "{% for x in input.items %}x{% endfor %}"),
        ("{# note #}", "{# note #}"),
        ("no template", "no template"),
    ],
)
def test_values_keep_their_json_type_and_text_is_text(text: str, value: Any) -> None:
    assert render(text) == value


def test_parameters_render_inside_objects_and_lists() -> None:
    parameters = {"a": ["{{ execution.id }}", {"b": "{{ execution.workflow_id }}"}], "c": 1}
    assert render_parameters(parameters, CONTEXT) == {"a": [7, {"b": 3}], "c": 1}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{{ input.missing }}", "has no attribute 'missing'"),
        ("x {{ tasks.nope.output }}", "has no attribute 'nope'"),
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{{ input.items.append(3) }}", "unsafe"),  # immutable sandbox: no mutation
        ("{{ {}.update(a=1) }}", "unsafe"),
        ("{{ 'ab' * 100000 }}", "would build more than"),
        ("{{ [0] * 200000 }}", "would build more than"),
        ("{{ 10 ** 100000 }}", "exponents"),
        ("{{ '%0100000d' % 1 }}", "format widths"),
        ("{{ '{:>100000}'.format(1) }}", "format widths"),
        ("{{ range(10000000) | list }}", "MAX_RANGE"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ input.name + 1 }}", "TypeError"),
    ],
)
def test_what_the_sandbox_refuses_fails_with_a_template_error(text: str, error: str) -> None:
    with pytest.raises(TemplateFailed) as failed:
        render(text)
    assert failed.value.message.startswith("template: p: ")
    assert error in failed.value.message


def test_the_rendered_size_is_bounded() -> None:
    big = context(1, 1, {"s": "x" * 90_000}, [])
    parameters = {str(i): "{{ input.s }}" for i in range(MAX_RENDERED_BYTES // 90_000 + 1)}
    with pytest.raises(TemplateFailed, match="rendered parameters are"):
        render_parameters(parameters, big)


def test_when_is_truthiness_and_fails_on_missing_names() -> None:
    assert evaluate_when("tasks.fetch.output.status_code == 200", CONTEXT) is True
    assert evaluate_when("input.n > 5", CONTEXT) is False
    assert evaluate_when("input.none", CONTEXT) is False
    with pytest.raises(TemplateFailed, match=r"^template: when: "):
        evaluate_when("tasks.fetch.output.nothing == 1", CONTEXT)


def test_references_are_found_for_the_creation_checks() -> None:
    parameters = {"u": "{{ tasks.a.output }}/{{ tasks['b-c'].status }}", "v": ["{{ input.x }}"]}
    assert parameter_references(parameters) == {"u": {"a", "b-c"}, "v.0": set()}
    assert check_template("{{ tasks.a }}") == {"a"}
    with pytest.raises(TemplateFailed, match="unknown name 'inputs'"):
        check_template("{{ inputs.x }}")
    with pytest.raises(TemplateFailed, match=r"^template: "):
        check_template("{{ input. }}")
