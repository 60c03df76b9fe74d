"""Process configuration read from the environment (and a `.env` file when present)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from dotenv import load_dotenv

DEFAULT_DATABASE_URL = "sqlite://workflows.sqlite3"

# The `http` action's reach (contract section 8). Read from the environment of the process the
# action runs in, when it runs: SAQ workers and Ray actors have no Settings of their own.
HTTP_ALLOW = "WORKFLOW_HTTP_ALLOW"  # a comma list of host names, addresses, CIDRs, or `*`
HTTP_MAX_BYTES = "WORKFLOW_HTTP_MAX_BYTES"
DEFAULT_HTTP_MAX_BYTES = 1024 * 1024  # the body becomes the task's output: stored, announced


@functools.cache
def load_env_file() -> None:
    """A `.env` file's variables, for those the environment does not set: once, before the
    first variable is read (limits are read when their module is imported, which can come
    before Settings.from_env)."""
    load_dotenv(override=False)


def whole_number(variable: str, default: int) -> int:
    """A whole number >= 1 from the environment, else `default`; a bad value raises, naming
    the variable."""
    load_env_file()
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{variable} must be a whole number >= 1, not {text!r}")
    return int(text)


def http_allow() -> str:
    """WORKFLOW_HTTP_ALLOW as this process's environment has it now."""
    load_env_file()
    return os.environ.get(HTTP_ALLOW, "")


def http_max_bytes() -> int:
    """WORKFLOW_HTTP_MAX_BYTES as this process's environment has it now."""
    return whole_number(HTTP_MAX_BYTES, DEFAULT_HTTP_MAX_BYTES)


def _duration(variable: str, default: float | None) -> float | None:
    from models.retention import parse_duration  # models.retention imports the ORM tables

    text = os.environ.get(variable, "").strip()
    return parse_duration(text, variable) if text else default


def _non_negative(variable: str, default: float) -> float:
    """A number >= 0 from the environment. Raises ValueError naming the variable."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{variable} must be a number >= 0: {text!r}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    # None selects the in-process cache (and, later, the in-process event bus).
    redis_url: str | None = None
    # Every Redis key we write starts with this, so that test runs and several deployments can
    # share one Redis without colliding.
    redis_prefix: str = "wf:"
    grpc_target: str = "127.0.0.1:50051"
    # Seconds a cached read may live. Invalidation is explicit; the TTL only bounds what a lost
    # invalidation (Redis unreachable right after a commit) can cost.
    cache_ttl_seconds: int = 300
    # Seconds an execution's owner may go without renewing its lease before another process
    # takes the execution over. Lower: faster recovery; higher: fewer writes.
    lease_seconds: float = 10.0
    # First retry delay of a failed task; each further retry doubles it.
    retry_base_seconds: float = 0.5
    # WORKFLOW_ADMIN_KEY: an admin key that needs no row (compose, first start).
    admin_key: str | None = None
    # WORKFLOW_SERVICE_KEY: the key `workflow api` presents to the execution service when the
    # caller presented none (an open HTTP plane in front of a closed execution service).
    service_key: str | None = None
    # WORKFLOW_AUTH=off: no authentication at all, and a public bind without keys is allowed.
    auth_enabled: bool = True
    # GRPC_TLS_CA: the CA that signs the execution service's certificate (clients verify it).
    grpc_tls_ca: str | None = None
    # WORKFLOW_MAX_RUNNING: executions one engine runs at once; more wait `pending`.
    max_running: int = 1000
    # WORKFLOW_RETENTION: ended executions older than this many seconds are deleted (None:
    # kept for ever), checked every WORKFLOW_PRUNE_EVERY seconds by the execution service.
    retention_seconds: float | None = None
    prune_every_seconds: float = 60.0
    # WORKFLOW_INTERRUPTION_BUDGET: how long a task may spend waiting out interruptions (its
    # process died, its queue lost it) before it fails.
    interruption_budget_seconds: float = 3600.0
    # WORKFLOW_MAX_STARTS_PER_SECOND: executions one caller (an API key, a webhook trigger) may
    # start a second on one execution service, with a burst as large; 0: unlimited.
    max_starts_per_second: float = 1000.0
    # WORKFLOW_ALLOWED_HOSTS: the Host headers the HTTP API answers (Starlette's
    # TrustedHostMiddleware patterns: `*`, `*.example.com`). None: chosen by the address the API
    # listens on (graphql_api.app.allowed_hosts).
    allowed_hosts: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls) -> Settings:
        load_env_file()
        return cls(
            database_url=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=os.environ.get("REDIS_URL") or None,
            redis_prefix=os.environ.get("WORKFLOW_REDIS_PREFIX") or "wf:",
            grpc_target=os.environ.get("GRPC_TARGET") or "127.0.0.1:50051",
            cache_ttl_seconds=int(os.environ.get("WORKFLOW_CACHE_TTL") or 300),
            lease_seconds=float(os.environ.get("WORKFLOW_LEASE_SECONDS") or 10.0),
            retry_base_seconds=float(os.environ.get("WORKFLOW_RETRY_BASE_SECONDS") or 0.5),
            admin_key=os.environ.get("WORKFLOW_ADMIN_KEY") or None,
            service_key=os.environ.get("WORKFLOW_SERVICE_KEY") or None,
            auth_enabled=(os.environ.get("WORKFLOW_AUTH") or "on").strip().lower() != "off",
            grpc_tls_ca=os.environ.get("GRPC_TLS_CA") or None,
            max_running=max(1, int(os.environ.get("WORKFLOW_MAX_RUNNING") or 1000)),
            retention_seconds=_duration("WORKFLOW_RETENTION", None),
            prune_every_seconds=_duration("WORKFLOW_PRUNE_EVERY", 60.0) or 60.0,
            max_starts_per_second=_non_negative("WORKFLOW_MAX_STARTS_PER_SECOND", 1000.0),
            interruption_budget_seconds=(
                _duration("WORKFLOW_INTERRUPTION_BUDGET", 3600.0) or 3600.0
            ),
            allowed_hosts=host_patterns(os.environ.get("WORKFLOW_ALLOWED_HOSTS") or ""),
        )


def host_patterns(text: str) -> tuple[str, ...] | None:
    """WORKFLOW_ALLOWED_HOSTS as patterns (None when unset). Checked here, at start: Starlette
    only asserts, and a mistyped pattern should stop the server, not admit nobody."""
    patterns = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for pattern in patterns:
        domain_wildcard = pattern.startswith("*.") and "*" not in pattern[1:]
        if "*" in pattern and pattern != "*" and not domain_wildcard:
            raise ValueError(
                f"WORKFLOW_ALLOWED_HOSTS: {pattern!r}: a `*` may only be the whole pattern or "
                "start one like `*.example.com`"
            )
    return patterns or None
