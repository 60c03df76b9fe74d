"""HTTP requests by route template, method and status code, with their latency (an ASGI
middleware, outermost but for the framework's error handler: it sees every answer, refusals
included).

The route is the template the router matched (`/workflows/{workflow_id}`, without a trailing
slash), or the one a fast path answered for (it names it in the scope under ROUTE), or `other`
for a path no route has: never the raw path, whose ids would make a series per id.

Cheap on the hot path: a request adds to plain counters of its (route, method), on the event
loop's thread, and a collector turns them into the two families when scraped. Measured in
process (ASGI calls, no network) on a cached `GET /workflows/{id}`, which the app answers in
about 10 us: prometheus_client's Counter and Histogram children (a lock and checks on every
increment) added about 3 us a request; these add under 1 us, within run-to-run variation.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.metrics import OTHER, REQUEST_BUCKETS

# Where a middleware that answers before the router (graphql_api/fast_reads.py,
# fast_graphql.py) names the route template it answered for.
ROUTE = "workflow.route"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The histogram's `le` labels, as prometheus_client's own Histogram writes them.
_BOUND_LABELS = (
    *(floatToGoString(bound) for bound in REQUEST_BUCKETS),  # type: ignore[no-untyped-call]
    "+Inf",
)


def template(path: str) -> str:
    """A route's path as its label: without the trailing slash of its twin."""
    return path.rstrip("/") or "/"


class _Requests:
    """The requests of one (route, method): counts by status code, and the histogram's
    buckets (not cumulative here: one increment a request), sum and count."""

    __slots__ = ("buckets", "codes", "seconds")

    def __init__(self) -> None:
        self.buckets = [0] * (len(REQUEST_BUCKETS) + 1)  # the last one: above every bound
        self.codes: dict[int, int] = {}
        self.seconds = 0.0

    def add(self, status: int, seconds: float) -> None:
        self.buckets[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        self.seconds += seconds
        self.codes[status] = self.codes.get(status, 0) + 1


class RequestCollector(Collector):
    """Every RequestMetrics of this process (tests run several apps), as the two families."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], _Requests] = {}

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "workflow_http_requests",
            "HTTP requests answered, by route template (or other), method and status code.",
            labels=["route", "method", "code"],
        )
        durations = HistogramMetricFamily(
            "workflow_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by route template "
            "and method.",
            labels=["route", "method"],
        )
        for (route, method), requests in list(self.requests.items()):
            for code, count in list(requests.codes.items()):
                counts.add_metric([route, method, str(code)], count)
            cumulative, total = [], 0
            for bound, count in zip(_BOUND_LABELS, requests.buckets, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            durations.add_metric([route, method], cumulative, requests.seconds)
        yield counts
        yield durations


REQUESTS = RequestCollector()
REGISTRY.register(REQUESTS)


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._templates: dict[int, str] = {}  # by id(): routes are not hashable, and live on
        self._requests = REQUESTS.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any answer: the error handler outside says 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"]
            key = (self._route(scope), method if method in METHODS else OTHER)
            requests = self._requests.get(key)
            if requests is None:
                requests = self._requests[key] = _Requests()
            requests.add(status, seconds)

    def _route(self, scope: Scope) -> str:
        named: str | None = scope.get(ROUTE)
        if named is not None:
            return named
        route = scope.get("route")
        if route is None:
            # Answered before routing (a refusal: no key, a wrong Host, too large a body):
            # the route it was meant for, found as the router would (the slow path only).
            route = self._match(scope)
            if route is None:
                return OTHER
        label = self._templates.get(id(route))
        if label is None:
            path = getattr(route, "path_format", None) or getattr(route, "path", None)
            label = self._templates[id(route)] = template(path) if path else OTHER
        return label

    @staticmethod
    def _match(scope: Scope) -> Any:
        app = scope.get("app")
        for route in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return route
        return None
