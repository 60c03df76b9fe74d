"""How a workflow's tasks fall into stages: one rule for the engine and for template checks.

Tasks run in ascending (order, id). A sync task is a stage of its own; consecutive async tasks
form one stage and run together; a stage starts when the one before it has finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def stages(
    items: Sequence[T], position: Callable[[T], tuple[int, int]], is_async: Callable[[T], bool]
) -> list[list[T]]:
    """The items grouped into stages, in running order; `position` is (order, id)."""
    groups: list[list[T]] = []
    for item in sorted(items, key=position):
        if is_async(item) and groups and is_async(groups[-1][-1]):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups
