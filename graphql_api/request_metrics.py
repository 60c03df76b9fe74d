"""HTTP requests by route template, method and status code, with their latency (an ASGI
middleware, outermost but for the framework's error handler: it sees every answer, refusals
included).

The route is the template the router matched (`/workflows/{workflow_id}`, without a trailing
slash), or the one a fast path answered for (it names it in the scope under ROUTE), or `other`
for a path no route has: never the raw path, whose ids would make a series per id.

Cheap on the hot path: the label children are looked up once per (route, method, code) and
kept, so a request costs two clock reads, a dictionary lookup and two increments.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.metrics import HTTP_DURATION, HTTP_REQUESTS, OTHER

# Where a middleware that answers before the router (graphql_api/fast_reads.py,
# fast_graphql.py) names the route template it answered for.
ROUTE = "workflow.route"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def template(path: str) -> str:
    """A route's path as its label: without the trailing slash of its twin."""
    return path.rstrip("/") or "/"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._templates: dict[int, str] = {}  # by id(): routes are not hashable, and live on
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}

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
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = self._route(scope)
        method = scope["method"]
        if method not in METHODS:
            method = OTHER
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = HTTP_REQUESTS.labels(route, method, str(status))
            self._counters[(route, method, status)] = counter
        counter.inc()
        histogram = self._histograms.get((route, method))
        if histogram is None:
            histogram = self._histograms[(route, method)] = HTTP_DURATION.labels(route, method)
        histogram.observe(seconds)

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
