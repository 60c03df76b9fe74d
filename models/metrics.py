"""The Prometheus metric families of every process (contract section 10), in one place.

Each process serves its own registry (prometheus_client's default one, with its `process_*`
and `python_*` families): the HTTP API at `/metrics`, `workflow grpc --metrics-port` and
`workflow worker --metrics-port` on a port of their own (`serve` below). A family shows only
what happened in the process that serves it; in the split deployment, sum over processes.

Labels take values from small, fixed sets only (statuses, outcomes, installed action names,
route templates, gRPC method names, HTTP methods and status codes): never an execution, task
or workflow id, nor a raw path, so that the number of series stays bounded whatever the load.

Where it is counted:
- executions and task attempts: the engine (exec_service/engine.py), in the process that owns
  the execution (`serve` or `grpc`); running and pending: exec_service/engine_metrics.py;
- attempts as SAQ workers ran them: exec_service/worker.py (the `workflow_worker_*` families);
- HTTP requests: graphql_api/request_metrics.py (`workflow_http_requests_total` and
  `workflow_http_request_duration_seconds`, kept as plain counters on the hot path and turned
  into families when scraped); gRPC calls: exec_service/grpc_metrics.py;
- the cache's hits and misses: models/cache.py's counters, read when scraped (CacheCollector).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# No `_created` series beside each counter and histogram: twice the lines, and nothing a
# query of ours needs (a counter's resets are what rate() goes by).
disable_created_metrics()  # type: ignore[no-untyped-call]

# How an execution came to be: a client's call (REST, GraphQL, gRPC, the CLI), a webhook
# trigger, a schedule's tick, or a retry of an ended one.
SOURCES = ("api", "trigger", "schedule", "retry")
# The ends of an execution.
ENDS = ("completed", "failed", "cancelled")
# The end of one attempt of a task: an answer (completed, failed: the action raised or answered
# badly; timed_out: its timeout), or cut short (interrupted: the process running it stopped or
# died; cancelled: the execution was cancelled, or a sibling task failed).
OUTCOMES = ("completed", "failed", "timed_out", "interrupted", "cancelled")
# Why a task had to run again without it counting against max_attempts: the executor gave the
# attempt up (a SAQ worker or Ray actor died), or its engine stopped or died and another took
# the execution over.
INTERRUPTION_CAUSES = ("executor", "takeover")
# Label values for what is not from the sets above (an unknown route, method or action).
OTHER = "other"

# Task attempts last from milliseconds (noop, a quick HTTP call) to hours (the default timeout).
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
# A cached read answers in well under a millisecond; a slow query or a long call in seconds.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

EXECUTIONS_STARTED = Counter(
    "workflow_executions_started",
    "Executions made, by how: api (a client's call), trigger (a webhook), schedule, retry.",
    ["source"],
)
EXECUTIONS_ENDED = Counter(
    "workflow_executions_ended",
    "Executions that ended, by status, counted by the engine that ended (or cancelled) them.",
    ["status"],
)
TASK_ATTEMPTS = Counter(
    "workflow_task_attempts",
    "Attempts of tasks the engine ran, by action and outcome (completed, failed, timed_out, "
    "interrupted, cancelled).",
    ["action", "outcome"],
)
TASK_DURATION = Histogram(
    "workflow_task_duration_seconds",
    "Seconds from an attempt's start to its answer (completed, failed or timed out), by action.",
    ["action"],
    buckets=TASK_BUCKETS,
)
TASK_INTERRUPTIONS = Counter(
    "workflow_task_interruptions",
    "Tasks run again because their attempt was cut short: the executor gave it up (cause "
    "executor) or its engine stopped or died and this one took the execution over (takeover).",
    ["cause"],
)
LEASE_TAKEOVERS = Counter(
    "workflow_lease_takeovers",
    "Executions this engine took over from an engine that stopped renewing its lease.",
)
GRPC_REQUESTS = Counter(
    "workflow_grpc_requests",
    "gRPC calls answered, by full method name (or other) and status code.",
    ["method", "code"],
)
GRPC_DURATION = Histogram(
    "workflow_grpc_request_duration_seconds",
    "Seconds a gRPC call took, by method (for WatchExecution: as long as the watch lasted).",
    ["method"],
    buckets=REQUEST_BUCKETS,
)
WORKER_TASKS = Counter(
    "workflow_worker_tasks",
    "Task attempts this SAQ worker ran, by action and outcome (completed, failed, cancelled).",
    ["action", "outcome"],
)
WORKER_DURATION = Histogram(
    "workflow_worker_task_duration_seconds",
    "Seconds this SAQ worker spent on a task attempt, by action.",
    ["action"],
    buckets=TASK_BUCKETS,
)

# Every known value shows from the start (at 0), so that a rate over it is defined at once.
for _source in SOURCES:
    EXECUTIONS_STARTED.labels(_source)
for _end in ENDS:
    EXECUTIONS_ENDED.labels(_end)
for _cause in INTERRUPTION_CAUSES:
    TASK_INTERRUPTIONS.labels(_cause)


class CacheCollector(Collector):
    """The cache's own counters (models.cache.Cache: plain integers on the read path), read
    when scraped. Only in a process with a cache (the HTTP API)."""

    def collect(self) -> Iterator[Metric]:
        from models.cache import configured_cache

        cache = configured_cache()
        if cache is None:
            return
        for name, help_text, value in (
            ("workflow_cache_hits", "Reads answered from the cache.", cache.hits),
            (
                "workflow_cache_misses",
                "Reads that went to the database and filled the cache.",
                cache.misses,
            ),
            (
                "workflow_cache_errors",
                "Cache operations that failed (Redis unreachable).",
                cache.errors,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=value)


REGISTRY.register(CacheCollector())


def serve(host: str, port: int) -> None:
    """This process's metrics over HTTP on host:port (a thread of prometheus_client's), for
    the processes that serve no HTTP API: `workflow grpc` and `workflow worker`. No key is
    asked for: bind it where only the scraper reaches it."""
    server, _ = start_http_server(port, addr=host)
    log.info("metrics on http://%s:%s/metrics", host, server.server_port)
