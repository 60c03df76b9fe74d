"""The GraphQL query cost limit: the most fields a document's answer can hold, refused before
it runs when above a maximum (issue #16: thirty aliases of a large list answered 16.8 MB and
held the event loop for 11.6 s).

How a document is scored, operation by operation (only one runs per request):

- every field the answer can hold costs 1 (leaves, objects and lists alike, `__typename` too);
- a list field multiplies the cost of what it selects by the most items it can hold: its
  `limit` argument when a literal (at most the page cap: a larger one is refused by the
  resolver with BAD_USER_INPUT, which says more than a cost would), the page cap when a variable
  (the rule runs at validation, which is cached by document text and never sees variables),
  the argument's schema default when left out; a list without `limit` counts as its bound
  (`list_sizes`: a workflow's tasks by WORKFLOW_MAX_TASKS), an introspection list as the
  longest such list of this schema, any other as `default_list_size`;
- fields are collected as the executor collects them: fragments (named or inline) are
  expanded where they are spread, and fields with the same response key are merged, so neither
  a fragment nor a repeated field can hide or inflate a cost; each alias counts apart;
- `@skip` / `@include` are ignored: a document is scored as if everything is included.

Written here rather than taken from a library: `graphql-complexity` (1.0.0, MIT, one
maintainer) was the candidate on PyPI, but its Strawberry extension pins Strawberry 0.291 (we
run 0.341); its core is a separate traversal called with a query string, not a validation rule
(so it would sit outside Strawberry's ValidationCache), takes one count argument name and one
fallback count for every list (no per-field bound, no schema defaults), and fails on a variable
without a value or default (`int(None)`), which is every variable at validation time. This rule
is one graphql-core ASTValidationRule: the same class on every request (made once by
`cost_rule`), so ValidationCache keeps its verdict per document and a cached request does not
run it again; the fast path (graphql_api/fast_graphql.py) validates once per document with the
same rules.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NamedTypeNode,
    OperationDefinitionNode,
    SelectionSetNode,
    TypeInfo,
    ValidationContext,
    ValidationRule,
    VisitorAction,
    get_named_type,
    get_nullable_type,
    is_abstract_type,
    is_list_type,
)
from graphql.language import Node
from graphql.type import GraphQLEnumType, SchemaMetaFieldDef, TypeMetaFieldDef

QUERY_TOO_COSTLY = "QUERY_TOO_COSTLY"
LIMIT_ARGUMENT = "limit"


@dataclass(frozen=True)
class CostLimits:
    """What a cost rule needs to know besides the schema."""

    maximum: int
    page_cap: int  # the largest `limit` a list field takes
    # (type name, field name) -> the most items that list can hold, for lists without `limit`.
    list_sizes: Mapping[tuple[str, str], int]
    default_list_size: int  # any other list without `limit`


def too_costly(cost: int, maximum: int, nodes: list[Node] | None = None) -> GraphQLError:
    return GraphQLError(
        f"Query cost {cost:,} exceeds the maximum of {maximum:,}: each list field multiplies "
        "the cost of what it selects by its limit (at most the page cap; a workflow's tasks "
        "by the most a workflow can have); ask for smaller pages or fewer fields",
        nodes,
        extensions={"code": QUERY_TOO_COSTLY, "cost": cost, "maximum": maximum},
    )


@functools.lru_cache(maxsize=8)
def _introspection_sizes(schema: GraphQLSchema) -> dict[tuple[str, str], int]:
    """The longest list each introspection field can answer in this schema (fixed with it)."""
    types = list(schema.type_map.values())
    fielded = [t for t in types if isinstance(t, GraphQLObjectType | GraphQLInterfaceType)]
    inputs = [t for t in types if isinstance(t, GraphQLInputObjectType)]
    arguments = [len(field.args) for t in fielded for field in t.fields.values()]
    arguments += [len(directive.args) for directive in schema.directives]
    most_arguments = max(arguments, default=0)
    return {
        ("__Schema", "types"): len(types),
        ("__Schema", "directives"): len(schema.directives),
        ("__Type", "fields"): max((len(t.fields) for t in fielded), default=0),
        ("__Type", "interfaces"): max((len(t.interfaces) for t in fielded), default=0),
        ("__Type", "possibleTypes"): max(
            (len(schema.get_possible_types(t)) for t in types if is_abstract_type(t)), default=0
        ),
        ("__Type", "enumValues"): max(
            (len(t.values) for t in types if isinstance(t, GraphQLEnumType)), default=0
        ),
        ("__Type", "inputFields"): max((len(t.fields) for t in inputs), default=0),
        ("__Field", "args"): most_arguments,
        ("__Directive", "args"): most_arguments,
    }


class _Scorer:
    """Scores the operations of one document (one instance per validation)."""

    def __init__(self, context: ValidationContext, limits: CostLimits) -> None:
        self.context = context
        self.limits = limits
        self.introspection_sizes = _introspection_sizes(context.schema)

    def operation(self, operation: OperationDefinitionNode) -> int:
        root = self.context.schema.get_root_type(operation.operation)
        if root is None:
            return 0  # KnownOperationTypesRule reports it
        return self._cost(root, [operation.selection_set], ())

    def _collect(
        self,
        parent: GraphQLNamedType,
        selection_sets: Iterable[SelectionSetNode],
        fragments: tuple[str, ...],
        into: dict[str, list[tuple[GraphQLNamedType, FieldNode]]],
    ) -> None:
        """Fields by response key, each with the type it is selected on, fragments expanded,
        as the executor collects them. A fragment already being expanded above is not expanded
        again (a cycle: refused by NoFragmentCyclesRule, which runs beside this rule)."""
        for selection_set in selection_sets:
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    key = selection.alias.value if selection.alias else selection.name.value
                    into.setdefault(key, []).append((parent, selection))
                elif isinstance(selection, InlineFragmentNode):
                    on = self._condition(parent, selection.type_condition)
                    self._collect(on, [selection.selection_set], fragments, into)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.context.get_fragment(name)
                    if fragment is None or name in fragments:
                        continue
                    on = self._condition(parent, fragment.type_condition)
                    self._collect(on, [fragment.selection_set], (*fragments, name), into)

    def _condition(self, parent: GraphQLNamedType, condition: NamedTypeNode | None) -> Any:
        found = None if condition is None else self.context.schema.get_type(condition.name.value)
        return parent if found is None else found

    def _cost(
        self,
        parent: GraphQLNamedType,
        selection_sets: Iterable[SelectionSetNode],
        fragments: tuple[str, ...],
    ) -> int:
        collected: dict[str, list[tuple[GraphQLNamedType, FieldNode]]] = {}
        self._collect(parent, selection_sets, fragments, collected)
        total = 0
        for selected in collected.values():
            total += 1
            on, node = selected[0]
            children = [n.selection_set for _, n in selected if n.selection_set is not None]
            field = self._field(on, node.name.value)
            if not children or field is None:
                continue  # a leaf; or an unknown field, which FieldsOnCorrectTypeRule reports
            inner = self._cost(get_named_type(field.type), children, fragments)
            if is_list_type(get_nullable_type(field.type)):
                inner *= self._list_size(on.name, field, node)
            total += inner
        return total

    def _field(self, parent: GraphQLNamedType, name: str) -> GraphQLField | None:
        if parent is self.context.schema.query_type:
            if name == "__schema":
                return SchemaMetaFieldDef
            if name == "__type":
                return TypeMetaFieldDef
        if not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return None
        field: GraphQLField | None = parent.fields.get(name)
        return field

    def _list_size(self, parent_name: str, field: GraphQLField, node: FieldNode) -> int:
        name = node.name.value
        argument = field.args.get(LIMIT_ARGUMENT)
        if argument is None:
            size = self.limits.list_sizes.get((parent_name, name))
            if size is None:
                size = self.introspection_sizes.get((parent_name, name))
            return size if size is not None else self.limits.default_list_size
        cap = self.limits.page_cap
        for given in node.arguments or ():
            if given.name.value == LIMIT_ARGUMENT:
                if isinstance(given.value, IntValueNode):
                    return max(0, min(int(given.value.value), cap))
                return cap  # a variable (or a wrong literal, refused by other rules)
        default = argument.default_value
        return default if isinstance(default, int) and 0 <= default <= cap else cap


def cost_rule(limits: CostLimits) -> type[ValidationRule]:
    """The rule class: make it once and pass the same class on every request."""

    class QueryCostRule(ValidationRule):
        def enter_operation_definition(
            self, node: OperationDefinitionNode, *_: Any
        ) -> VisitorAction:
            cost = _Scorer(self.context, limits).operation(node)
            if cost > limits.maximum:
                self.report_error(too_costly(cost, limits.maximum, [node]))
            return self.SKIP  # nothing below interests this rule: it has scored the operation

        def enter_fragment_definition(self, *_: Any) -> VisitorAction:
            return self.SKIP  # scored where spread

    return QueryCostRule


def document_cost(schema: GraphQLSchema, limits: CostLimits, document: DocumentNode) -> int:
    """The cost of a document's costliest operation (for tests, docs and tools)."""
    context = ValidationContext(schema, document, TypeInfo(schema), lambda _: None)
    scorer = _Scorer(context, limits)
    operations = (d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    return max((scorer.operation(operation) for operation in operations), default=0)


__all__ = ["QUERY_TOO_COSTLY", "CostLimits", "cost_rule", "document_cost", "too_costly"]
