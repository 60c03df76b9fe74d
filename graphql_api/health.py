"""`/healthz` and `/metrics` (Prometheus text, from prometheus_client's registry).

`/healthz` (no role needed) answers 200 `ok` when the database and the cache answer; 200
`degraded` when only the cache (Redis) is down and nothing in this process needs it to work
(reads go to the database meanwhile); 503 `unavailable` when the database is down, or Redis is
down and this process's executor is SAQ, whose queue is in Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from graphql_api.auth import needs
from models import metrics as _metrics  # noqa: F401 (registers the families and collectors)
from models.access import Role
from models.cache import current_cache
from models.db import ping_database
from models.outages import Outage

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

# A check that takes longer than this counts as down: a load balancer must not wait on us.
CHECK_TIMEOUT_SECONDS = 2.0


# One warning per outage of each, however often a load balancer asks.
_OUTAGES = {
    "database": Outage(log, "the database (health check)"),
    "cache": Outage(log, "the cache (health check)"),
}


async def _check(name: str, probe: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        _OUTAGES[name].failed(exc)
        return "unavailable"
    _OUTAGES[name].answered()
    return "ok"


def _needs_redis(request: Request) -> bool:
    """Whether this process cannot run tasks without Redis: its embedded executor is SAQ."""
    service = getattr(request.app.state, "exec_service", None)
    return service is not None and service.executor_name == "saq"


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    cache = current_cache()
    database = await _check("database", ping_database())
    cache_state = await _check("cache", cache.ping())
    if database == "ok" and cache_state == "ok":
        status = "ok"
    elif database == "ok" and not _needs_redis(request):
        status = "degraded"
    else:
        status = "unavailable"
    body = {
        "status": status,
        "database": database,
        "cache": cache_state,
        "cache_backend": cache.backend_name,
    }
    return JSONResponse(body, status_code=503 if status == "unavailable" else 200)


@router.get("/metrics", dependencies=[needs(Role.VIEWER)])
async def metrics() -> Response:
    """This process's registry (models/metrics.py lists the families)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
