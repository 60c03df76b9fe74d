"""Webhook triggers: made, listed and deleted here; a delivery's signature checked here."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from models.errors import WORKFLOW_NOT_FOUND, Invalid, NotFound
from models.executions import valid_id
from models.inputs import NAME_MAX, check_text
from models.tables import Trigger, Workflow
from models.workflows import iso

TRIGGER_NOT_FOUND = "Trigger not found"
SIGNATURE_PREFIX = "sha256="


def trigger_dict(row: Trigger) -> dict[str, Any]:
    return {
        "id": row.id,
        "workflow_id": row.workflow_id,
        "name": row.name,
        "path": f"/hooks/{row.id}",
        "created_at": iso(row.created_at),
    }


async def create_trigger(workflow_id: int, name: str) -> tuple[dict[str, Any], str]:
    """A new trigger of the workflow, and its secret (shown this once). Raises NotFound."""
    if not valid_id(workflow_id) or not await Workflow.filter(id=workflow_id).exists():
        raise NotFound(WORKFLOW_NOT_FOUND)
    if not 1 <= len(name) <= NAME_MAX:
        raise Invalid(f"Invalid input: name: 1 to {NAME_MAX} characters")
    try:
        check_text(name)
    except ValueError as exc:
        raise Invalid(f"Invalid input: name: {exc}") from None
    secret = secrets.token_hex(32)
    row = await Trigger.create(workflow_id=workflow_id, name=name, secret=secret)
    return trigger_dict(row), secret


async def list_triggers(workflow_id: int | None) -> list[dict[str, Any]]:
    query = Trigger.all() if workflow_id is None else Trigger.filter(workflow_id=workflow_id)
    return [trigger_dict(row) for row in await query.order_by("id")]


async def delete_trigger(trigger_id: int) -> None:
    if not valid_id(trigger_id) or not await Trigger.filter(id=trigger_id).delete():
        raise NotFound(TRIGGER_NOT_FOUND)


async def find(trigger_id: int) -> Trigger | None:
    return await Trigger.get_or_none(id=trigger_id) if valid_id(trigger_id) else None


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is `sha256=<hex HMAC-SHA256 of body under secret>`, compared in
    constant time."""
    if not header or not header.isascii() or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len(SIGNATURE_PREFIX) :].strip().lower())
