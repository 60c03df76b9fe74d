"""Raw SAQ, for comparison: a worker settings module with a job that does nothing.

saq benchmarks.saq_noop.settings   (with SAQ_BENCH_REDIS_URL and SAQ_BENCH_QUEUE set)
"""

from __future__ import annotations

import os
from typing import Any

from redis.asyncio import Redis
from saq.queue.redis import RedisQueue


async def noop(ctx: Any) -> dict[str, Any]:
    return {}


settings = {
    "queue": RedisQueue(
        Redis.from_url(
            os.environ.get("SAQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
            max_connections=1024,
        ),
        name=os.environ.get("SAQ_BENCH_QUEUE", "saq-bench"),
    ),
    "functions": [noop],
    "concurrency": 10,
}
