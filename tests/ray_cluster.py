"""One local Ray for the whole test session (it takes seconds to start, and RayExecutor shares
a Ray that is already running in its process rather than starting its own)."""

from __future__ import annotations

import logging
import os
import signal
import threading

import ray

NUM_CPUS = 2
START_ATTEMPTS = 3


def ensure_ray() -> None:
    """Start a local Ray in this process, once; later calls return at once."""
    if ray.is_initialized():
        return
    # A RAY_ADDRESS left in the environment would send the tests to someone else's cluster.
    os.environ.pop("RAY_ADDRESS", None)
    # Ray gives its GCS server 30 s to bind a port, then fails the start. On this shared
    # 2-core machine one CI run saw it miss that with nothing in its logs; give it longer, and
    # more tries from scratch. Other starts never saw their raylet come up: that one Ray
    # reports as a plain Exception, and another try is as good (see also conftest.py, which
    # starts Ray before any test runs).
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "90")
    previous = signal.getsignal(signal.SIGTERM)
    for attempt in range(START_ATTEMPTS):
        try:
            ray.init(
                num_cpus=NUM_CPUS,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == START_ATTEMPTS - 1:
                raise
    # On the main thread ray.init replaces the SIGTERM handler with one that calls sys.exit.
    if threading.current_thread() is threading.main_thread() and previous is not None:
        signal.signal(signal.SIGTERM, previous)
