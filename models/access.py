"""Who may do what: roles, the caller's identity, and the one check every surface uses.

Roles include the ones before them: `viewer` reads (queries, read routes, subscriptions,
GetWorkflowStatus, WatchExecution), `operator` also runs things (execute, cancel, retry,
delete executions), `admin` also changes them (workflows, tasks, schedules, triggers, keys).
Each operation declares the role it needs where it is defined (REST route, GraphQL field, gRPC
method); this module only answers who the caller is and whether that role suffices.

A service is open (every caller is `anonymous`, with every right) while no API key exists and
WORKFLOW_ADMIN_KEY is unset, or when WORKFLOW_AUTH=off. Once a key exists, every call needs one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum

from models.errors import WorkflowError


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}; roles: viewer, operator, admin") from None


@dataclass(frozen=True)
class Principal:
    """The caller: the name executions record as `triggered_by`, and its role."""

    name: str
    role: Role


# Every caller of an open service.
ANONYMOUS = Principal("anonymous", Role.ADMIN)
# The caller presenting WORKFLOW_ADMIN_KEY (a key with no row).
BOOTSTRAP_ADMIN = Principal("admin", Role.ADMIN)
# The HTTP plane of `workflow serve` acting for a trigger, with a key made at start and known
# to that process only.
INTERNAL = Principal("service", Role.ADMIN)
# Names no stored key may take: they stand for the principals above.
RESERVED_NAMES = frozenset({ANONYMOUS.name, BOOTSTRAP_ADMIN.name, INTERNAL.name})

# How long a process trusts what it read about keys. Revoking a key, or making the first one,
# reaches every process within this (the contract promises 5 s).
CACHE_SECONDS = 4.0
# Keys remembered at most (unknown ones too, so that a client retrying a bad key does not
# cost a query each time); past it, the memory starts again.
CACHE_ENTRIES = 10_000


class NotAuthenticated(WorkflowError):
    """No key, or a key that is not (or no longer) valid."""

    http_status = 401
    graphql_code = "UNAUTHENTICATED"
    grpc_code = "UNAUTHENTICATED"

    def __init__(self, message: str = "Not authenticated") -> None:
        super().__init__(message)


class Forbidden(WorkflowError):
    """A valid key whose role may not do this."""

    http_status = 403
    graphql_code = "FORBIDDEN"
    grpc_code = "PERMISSION_DENIED"

    def __init__(self, message: str = "Forbidden") -> None:
        super().__init__(message)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` value, or None."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def require(principal: Principal, role: Role) -> None:
    """Raises Forbidden unless the principal's role includes `role`."""
    if principal.role < role:
        raise Forbidden()


# What the key store answers: the principal of a key hash (None: unknown or revoked), and
# whether any valid key exists.
FindKey = Callable[[str], Awaitable[Principal | None]]
AnyKeys = Callable[[], Awaitable[bool]]


class Authenticator:
    """Answers who a caller is, from its Authorization value, with what it read about keys
    cached for CACHE_SECONDS: on the hot path a call costs a hash and a dictionary lookup."""

    def __init__(
        self,
        find_key: FindKey,
        any_keys: AnyKeys,
        admin_key: str | None = None,
        enabled: bool = True,
    ) -> None:
        self._find_key = find_key
        self._any_keys = any_keys
        self._admin_key = admin_key or None
        self.enabled = enabled
        self._required_until = 0.0
        self._required = False
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._lock = asyncio.Lock()
        # Set by an embedded execution service (`workflow serve`): see INTERNAL.
        self.internal_key: str | None = None

    async def required(self) -> bool:
        """Whether calls need a key: auth is on and a key exists (or the admin key is set)."""
        if not self.enabled:
            return False
        if self._admin_key is not None:
            return True
        now = time.monotonic()
        if now >= self._required_until:
            async with self._lock:
                if now >= self._required_until:
                    self._required = await self._any_keys()
                    self._required_until = time.monotonic() + CACHE_SECONDS
        return self._required

    def open_now(self) -> bool:
        """True when calls need no key, as far as this process knows without asking the
        database (auth off, or no key made as of less than CACHE_SECONDS ago): the hot
        path's answer, with no await."""
        if not self.enabled:
            return True
        return (
            self._admin_key is None
            and not self._required
            and time.monotonic() < self._required_until
        )

    async def principal(self, authorization: str | None) -> Principal:
        """The caller. Raises NotAuthenticated."""
        if not await self.required():
            return ANONYMOUS
        key = bearer(authorization)
        if key is None:
            raise NotAuthenticated()
        if self._admin_key is not None and hmac.compare_digest(key, self._admin_key):
            return BOOTSTRAP_ADMIN
        if self.internal_key is not None and hmac.compare_digest(key, self.internal_key):
            return INTERNAL
        digest = key_hash(key)
        now = time.monotonic()
        known = self._keys.get(digest)
        if known is None or now >= known[0]:
            if len(self._keys) >= CACHE_ENTRIES:
                self._keys.clear()
            found = await self._find_key(digest)
            known = (now + CACHE_SECONDS, found)
            self._keys[digest] = known
        if known[1] is None:
            raise NotAuthenticated()
        return known[1]

    def forget(self) -> None:
        """Drop what this process remembers (a key was made or revoked here)."""
        self._keys.clear()
        self._required_until = 0.0
