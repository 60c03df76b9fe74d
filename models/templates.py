"""Templates in task parameters and `when` conditions: Jinja's expression syntax, in a sandbox.

A string anywhere inside a task's parameters may hold `{{ expression }}`. When the task starts,
the engine renders it with `input` (the execution's input), `tasks` (by name: `output` and
`status` of every task in an earlier stage) and `execution` (`id`, `workflow_id`). A string that
is exactly one `{{ expression }}` becomes the expression's value, with its JSON type; any other
string is rendered as text, where values that are not text are written as JSON (`true`, `null`,
`{"a":1}`), not as Python would print them.

Only expressions: `{% ... %}` statements and `{# ... #}` comments are plain text here (their
delimiters are moved behind a NUL byte, which no stored parameter can contain), so a template
cannot loop. The sandbox refuses Python internals (`__class__`, `mro`, ...), and the operators
that could build a huge value from a small template (`*`, `**`, `%` and `format` widths) are
bounded. Parsing is cached by source text: an execution renders the same few templates again
and again.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from models.errors import shown

# The names a template may use, besides Jinja's own globals (range, dict, ...).
NAMES = frozenset({"input", "tasks", "execution"})
# A rendered task's parameters, as JSON, at most: outputs (1 MiB each) can be passed on whole.
MAX_RENDERED_BYTES = 2 * 1024 * 1024
# Items a `*` may build (a string's characters, a list's items), and the largest exponent.
MAX_REPEAT = 100_000
MAX_EXPONENT = 1_000
# A `when` expression's length.
WHEN_MAX = 4_096
# Parsed templates kept (by source text).
CACHE_SIZE = 2_048

_WHOLE = re.compile(r"^\{\{(.*)\}\}$", re.DOTALL)
# A width or precision of five digits or more in a %-format or a format spec.
_WIDE_FORMAT = re.compile(r"%[-+ #0]*\*|%[-+ #0]*\d{5,}|\.\d{5,}|\{[^{}]*:[^{}]*\d{5,}[^{}]*\}")


class TemplateFailed(Exception):
    """A template did not parse or could not be rendered; the message starts `template:`."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"template: {detail}")
        self.message = f"template: {detail}"


def _as_json_text(value: Any) -> Any:
    """How a value that is not text appears inside a text template: as JSON."""
    if isinstance(value, str | Undefined):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the value-growing operators bounded."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                growing = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if growing and len(seq) * max(count, 0) > MAX_REPEAT:
                    raise TemplateError(f"'*' would build more than {MAX_REPEAT} items")
        elif operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise TemplateError(f"'**' takes exponents up to {MAX_EXPONENT}")
        elif operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise TemplateError("format widths are limited to four digits")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # JSON first: `input.items` is the input's "items", not the dict's method (Jinja looks
        # for an attribute before an item, which suits Python objects, not JSON data).
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _WIDE_FORMAT.search(value.__self__):
            raise TemplateError("format widths are limited to four digits")
        return wrapped


ENVIRONMENT = _Sandbox(
    undefined=StrictUndefined,
    autoescape=False,
    finalize=_as_json_text,
    # Statements and comments off: see the module's docstring.
    block_start_string="\x00{%",
    block_end_string="%}\x00",
    comment_start_string="\x00{#",
    comment_end_string="#}\x00",
    cache_size=CACHE_SIZE,
)


def _problem(exc: Exception) -> str:
    """The error's text, cut short: Jinja's messages quote the template's names and tokens,
    which can be as long as the parameters."""
    if isinstance(exc, TemplateError):
        return shown(exc.message or type(exc).__name__)
    return shown(f"{type(exc).__name__}: {exc}")


def _where(path: tuple[str | int, ...]) -> str:
    """A template's place in the parameters (`json.id`), as errors name it (keys can be long)."""
    return shown(".".join(str(part) for part in path))


# --- parsing --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=CACHE_SIZE)
def _expression_tree(source: str) -> nodes.Expr:
    parser = Parser(ENVIRONMENT, source, state="variable")
    tree = parser.parse_expression()
    if not parser.stream.eos:
        raise TemplateError(f"unexpected {parser.stream.current.value!r} after the expression")
    return tree


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compiled_expression(source: str) -> Callable[..., Any]:
    return ENVIRONMENT.compile_expression(source, undefined_to_none=False)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compiled_text(source: str) -> Callable[..., str]:
    return ENVIRONMENT.from_string(source).render


def _whole_expression(text: str) -> str | None:
    """The expression of a string that is exactly one `{{ expression }}`, else None."""
    match = _WHOLE.match(text)
    if match is None or "{{" in match.group(1) or "}}" in match.group(1):
        return None
    return match.group(1)


def is_template(text: str) -> bool:
    return "{{" in text


def _tree(text: str) -> nodes.Node:
    whole = _whole_expression(text)
    return _expression_tree(whole) if whole is not None else ENVIRONMENT.parse(text)


def _strings(
    value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string value inside a JSON value, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _check_names(tree: nodes.Node) -> set[str]:
    """The task names the tree refers to; raises TemplateError for an unknown variable."""
    known = NAMES | set(ENVIRONMENT.globals)
    # find_all yields what is below the node: in `{{ tasks.a }}` the tree is the Getattr itself.
    every = [tree, *tree.find_all(nodes.Node)]
    for name in every:
        if isinstance(name, nodes.Name) and name.ctx == "load" and name.name not in known:
            allowed = ", ".join(sorted(NAMES))
            raise TemplateError(f"unknown name {name.name!r} (templates know {allowed})")
    referenced: set[str] = set()
    for node in every:
        if not isinstance(node, nodes.Getattr | nodes.Getitem):
            continue
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "tasks"):
            continue
        if isinstance(node, nodes.Getattr):
            referenced.add(node.attr)
        elif isinstance(node, nodes.Getitem):
            key = node.arg
            if isinstance(key, nodes.Const) and isinstance(key.value, str):
                referenced.add(key.value)
    return referenced


def check_template(text: str) -> set[str]:
    """Parse one string of a task's parameters; answer the task names it refers to. Raises
    TemplateFailed when it does not parse or uses a name templates do not have."""
    if not is_template(text):
        return set()
    try:
        return _check_names(_tree(text))
    except TemplateError as exc:
        raise TemplateFailed(_problem(exc)) from None


def check_when(expression: str) -> set[str]:
    """Parse a `when` expression; answer the task names it refers to. Raises TemplateFailed."""
    try:
        return _check_names(_expression_tree(expression))
    except TemplateError as exc:
        raise TemplateFailed(_problem(exc)) from None


def parameter_references(parameters: Any) -> dict[str, set[str]]:
    """For every template in the parameters, by its path (`url`, `json.id`): the task names it
    refers to. Raises TemplateFailed naming the path of the first that does not parse."""
    found: dict[str, set[str]] = {}
    for path, text in _strings(parameters):
        if is_template(text):
            where = _where(path)
            try:
                found[where] = check_template(text)
            except TemplateFailed as exc:
                raise TemplateFailed(f"{where}: {exc.message.removeprefix('template: ')}") from None
    return found


def has_templates(parameters: Any) -> bool:
    return any(is_template(text) for _, text in _strings(parameters))


# --- rendering ------------------------------------------------------------------------------


def _plain(value: Any, where: str) -> Any:
    """A rendered value as JSON holds it; refuses what JSON cannot hold."""
    if isinstance(value, Undefined):
        # StrictUndefined raises on use; returned whole, it is still a missing name or key.
        raise TemplateFailed(f"{where}: {_undefined_text(value)}")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TemplateFailed(f"{where}: the value is not JSON ({exc})") from None
    return json.loads(text)


def _undefined_text(value: Undefined) -> str:
    try:
        str(value)
    except TemplateError as exc:
        return _problem(exc)
    return "undefined"  # pragma: no cover (StrictUndefined always raises)


def _render_string(text: str, context: Mapping[str, Any], where: str) -> Any:
    whole = _whole_expression(text)
    try:
        if whole is not None:
            return _plain(_compiled_expression(whole)(**context), where)
        return _compiled_text(text)(**context)
    except TemplateFailed:
        raise
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise TemplateFailed(f"{where}: {_problem(exc)}") from None


T = TypeVar("T")


def render_parameters(parameters: T, context: Mapping[str, Any]) -> T:
    """The parameters with every template rendered. Raises TemplateFailed."""

    def render(value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, str):
            if not is_template(value):
                return value
            return _render_string(value, context, _where(path))
        if isinstance(value, Mapping):
            return {key: render(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [render(item, (*path, index)) for index, item in enumerate(value)]
        return value

    rendered = render(parameters, ())
    size = len(json.dumps(rendered, ensure_ascii=False).encode())
    if size > MAX_RENDERED_BYTES:
        raise TemplateFailed(
            f"the rendered parameters are {size} bytes; at most {MAX_RENDERED_BYTES}"
        )
    result: T = rendered
    return result


def evaluate_when(expression: str, context: Mapping[str, Any]) -> bool:
    """Whether a task's `when` holds. Raises TemplateFailed."""
    try:
        value = _compiled_expression(expression)(**context)
        if isinstance(value, float) and math.isnan(value):
            return False
        return bool(value)
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise TemplateFailed(f"when: {_problem(exc)}") from None


def context(
    execution_id: int,
    workflow_id: int,
    input: Any,
    earlier: Sequence[tuple[str, str, Any]],
) -> dict[str, Any]:
    """What templates see: `earlier` is (name, status, output) of each task in earlier stages."""
    return {
        "input": input if input is not None else {},
        "tasks": {name: {"output": output, "status": status} for name, status, output in earlier},
        "execution": {"id": execution_id, "workflow_id": workflow_id},
    }
