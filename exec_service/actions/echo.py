"""The built-in `echo` action: its output is its parameters, as the task received them.

With templates, that is how a workflow reshapes data between tasks without a plugin: a task
`{"action": "echo", "parameters": {"id": "{{ tasks.fetch.output.body.id }}"}}` outputs
`{"id": ...}` for the tasks after it.
"""

from __future__ import annotations

from typing import Any


async def echo(parameters: dict[str, Any]) -> dict[str, Any]:
    return dict(parameters)
