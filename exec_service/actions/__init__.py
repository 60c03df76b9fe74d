"""Actions a task can run: the built-ins, and any installed under `workflow.actions`."""

from __future__ import annotations

from importlib.metadata import entry_points

from exec_service.actions.builtin import UnknownAction, http, noop
from exec_service.actions.echo import echo
from exec_service.types import Action

ENTRY_POINT_GROUP = "workflow.actions"
BUILTIN: dict[str, Action] = {"noop": noop, "http": http, "echo": echo}

_loaded: dict[str, Action] | None = None

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "UnknownAction", "available", "get", "register"]


def available() -> dict[str, Action]:
    """Every action by name: built-ins first, then entry points (which cannot shadow them)."""
    global _loaded
    if _loaded is None:
        actions = {}
        for point in entry_points(group=ENTRY_POINT_GROUP):
            actions[point.name] = point.load()
        actions.update(BUILTIN)
        _loaded = actions
    return _loaded


def get(name: str) -> Action:
    try:
        return available()[name]
    except KeyError:
        raise UnknownAction(f"unknown action {name!r}") from None


def register(name: str, action: Action) -> None:
    """Add an action at run time (tests, embedding applications)."""
    available()[name] = action
