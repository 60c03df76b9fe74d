"""The Redis clients of the execution plane (the SAQ queue and the event bus).

redis-py 8 gives every command a 5 s socket timeout by default, and pays for it on every
command: the send goes through `asyncio.wait_for` (a new task each time on Python 3.11) and the
read through `asyncio.timeout`. On the SAQ path that was a fifth of a worker's CPU per job.
These clients have no per-command timeout, as redis-py before 8 had none. A lost connection
still fails at once (reset, refused). A Redis host that vanished is found by TCP: keepalive
probes an idle connection (within about KEEPALIVE_IDLE_SECONDS + 3 *
KEEPALIVE_INTERVAL_SECONDS), and TCP_USER_TIMEOUT fails a busy one whose data goes
unacknowledged for UNACKNOWLEDGED_SECONDS (without it, Linux retransmits for about 15
minutes). A Redis that stays up but stops answering holds commands until it answers again;
the waits that must end (aborting a cancelled task's job, reading answers back, the bus's
last sends at shutdown) carry their own deadlines.
"""

from __future__ import annotations

import socket
from typing import Any

from redis.asyncio import Redis

CONNECT_TIMEOUT_SECONDS = 2.0
KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
UNACKNOWLEDGED_SECONDS = 30
_KEEPALIVE = {
    socket.TCP_KEEPIDLE: KEEPALIVE_IDLE_SECONDS,
    socket.TCP_KEEPINTVL: KEEPALIVE_INTERVAL_SECONDS,
    socket.TCP_KEEPCNT: 3,
    socket.TCP_USER_TIMEOUT: UNACKNOWLEDGED_SECONDS * 1000,
}


def redis_client(url: str, **options: Any) -> Redis:
    if url.startswith(("redis://", "rediss://")):
        # TCP only: a unix socket connection takes no keepalive options.
        options = {"socket_keepalive": True, "socket_keepalive_options": _KEEPALIVE} | options
    return Redis.from_url(
        url, socket_timeout=None, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, **options
    )
