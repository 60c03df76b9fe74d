"""`/healthz` (ready when the database and the cache answer) and `/metrics` (Prometheus text)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from graphql_api.auth import needs
from models.access import Role
from models.cache import current_cache
from models.db import ping_database

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

# A check that takes longer than this counts as down: a load balancer must not wait on us.
CHECK_TIMEOUT_SECONDS = 2.0


async def _check(name: str, probe: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("health check of %s failed: %s", name, exc)
        return "unavailable"
    return "ok"


@router.get("/healthz")
async def healthz() -> JSONResponse:
    cache = current_cache()
    database = await _check("database", ping_database())
    cache_state = await _check("cache", cache.ping())
    healthy = database == "ok" and cache_state == "ok"
    body = {
        "status": "ok" if healthy else "unavailable",
        "database": database,
        "cache": cache_state,
        "cache_backend": cache.backend_name,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", dependencies=[needs(Role.VIEWER)])
async def metrics() -> PlainTextResponse:
    cache = current_cache()
    lines = [
        "# HELP workflow_cache_hits_total Reads answered from the cache.",
        "# TYPE workflow_cache_hits_total counter",
        f"workflow_cache_hits_total {cache.hits}",
        "# HELP workflow_cache_misses_total Reads that went to the database and filled the cache.",
        "# TYPE workflow_cache_misses_total counter",
        f"workflow_cache_misses_total {cache.misses}",
        "# HELP workflow_cache_errors_total Cache operations that failed (Redis unreachable).",
        "# TYPE workflow_cache_errors_total counter",
        f"workflow_cache_errors_total {cache.errors}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
