"""The sampler of models/tracing.py (imported only when tracing is on: it needs the SDK)."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes


class NoLoneCalls(Sampler):
    """A sampler in front of another: a client call (a database query, a Redis command, a gRPC
    call) made outside any trace is not recorded. The engine's lease rounds, the bus and SAQ's
    polling make such calls all the time, and each would be a trace of one span; made inside a
    trace (a request's, a task's), they are its spans, as the other sampler decides."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoLoneCalls{{{self.delegate.get_description()}}}"
