"""API keys: made, listed and revoked here; looked up (by hash) by models.access."""

from __future__ import annotations

import re
import secrets
from typing import Any

from models.access import RESERVED_NAMES, Authenticator, Principal, Role, key_hash
from models.errors import Conflict, Invalid, NotFound
from models.executions import now
from models.inputs import INT32_MAX
from models.tables import ApiKey
from models.workflows import iso

KEY_NOT_FOUND = "API key not found"
# A key's name: it is what executions record as `triggered_by`.
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
# Keys start with this, so that a leaked one is recognisable (secret scanners, logs).
KEY_PREFIX = "wfk_"
# Characters of a key kept in the clear, to tell keys apart in a list.
SHOWN_PREFIX = 10


def key_dict(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "prefix": row.prefix,
        "created_at": iso(row.created_at),
        "revoked_at": iso(row.revoked_at),
    }


def check_name(name: str) -> str:
    if not KEY_NAME.match(name):
        raise Invalid(
            "Invalid input: name: 1 to 100 letters, digits or _ . @ -, starting with a letter "
            "or digit"
        )
    if name in RESERVED_NAMES:
        raise Invalid(f"Invalid input: name: {name!r} is reserved")
    return name


async def create_key(name: str, role: Role) -> tuple[dict[str, Any], str]:
    """A new key: its row and its secret (shown this once; only its hash is kept)."""
    check_name(name)
    if await ApiKey.filter(name=name).exists():
        raise Conflict(f"An API key named {name!r} exists already (names are never reused)")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = await ApiKey.create(
        name=name, role=role.label, key_hash=key_hash(secret), prefix=secret[:SHOWN_PREFIX]
    )
    return key_dict(row), secret


async def list_keys() -> list[dict[str, Any]]:
    return [key_dict(row) for row in await ApiKey.all().order_by("id")]


async def revoke_key(key_id: int) -> None:
    """Revoke a key (it stays listed, as revoked). Raises NotFound."""
    if not 1 <= key_id <= INT32_MAX:
        raise NotFound(KEY_NOT_FOUND)
    updated = await ApiKey.filter(id=key_id, revoked_at=None).update(revoked_at=now())
    if not updated and not await ApiKey.filter(id=key_id).exists():
        raise NotFound(KEY_NOT_FOUND)


async def find_key(digest: str) -> Principal | None:
    row = await ApiKey.filter(key_hash=digest, revoked_at=None).first()
    return Principal(row.name, Role.parse(row.role)) if row is not None else None


async def any_keys() -> bool:
    """Whether a key was ever made. Revoked ones count: revoking every key must not open the
    service to anyone (a new key comes from `workflow keys create`, on the database)."""
    return await ApiKey.exists()


def authenticator(admin_key: str | None, enabled: bool) -> Authenticator:
    """The check both planes use, reading keys from this database."""
    return Authenticator(find_key, any_keys, admin_key, enabled)
