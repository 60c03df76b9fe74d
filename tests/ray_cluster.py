"""One local Ray for the whole test session (it takes seconds to start, and RayExecutor shares
a Ray that is already running in its process rather than starting its own)."""

from __future__ import annotations

import logging
import os
import signal
import threading

import ray

NUM_CPUS = 2


def ensure_ray() -> None:
    """Start a local Ray in this process, once; later calls return at once."""
    if ray.is_initialized():
        return
    # A RAY_ADDRESS left in the environment would send the tests to someone else's cluster.
    os.environ.pop("RAY_ADDRESS", None)
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(
        num_cpus=NUM_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    # On the main thread ray.init replaces the SIGTERM handler with one that calls sys.exit.
    if threading.current_thread() is threading.main_thread() and previous is not None:
        signal.signal(signal.SIGTERM, previous)
