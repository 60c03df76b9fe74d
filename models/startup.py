"""Checks a server makes before it listens."""

from __future__ import annotations

import ipaddress

from models.db import start_database, stop_database
from models.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


async def open_service_on_public_address(settings: Settings, host: str) -> str | None:
    """Why the service must not start: it would be open (no key made, no WORKFLOW_ADMIN_KEY,
    WORKFLOW_AUTH not off) on an address other machines reach. None when it may start."""
    if is_loopback(host) or not settings.auth_enabled or settings.admin_key:
        return None
    from models.api_keys import any_keys  # the database is needed only past the cheap checks

    await start_database(settings.database_url)
    try:
        if await any_keys():
            return None
    finally:
        await stop_database()
    return (
        f"refusing to listen on {host}: no API key exists, so anyone who reaches it could do "
        "anything. Make one first: `workflow keys create NAME --role admin` (on the same "
        "DATABASE_URL), or set WORKFLOW_ADMIN_KEY; or set WORKFLOW_AUTH=off on a network you "
        "trust."
    )
