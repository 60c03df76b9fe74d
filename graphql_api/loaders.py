"""DataLoaders: one per request, so a list inside a list costs one batch, not one query each."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from strawberry.dataloader import DataLoader

from models.executions import executions_of_workflows

# (workflow id, skip, limit)
ExecutionsKey = tuple[int, int, int]


async def _load_executions(keys: Sequence[ExecutionsKey]) -> list[list[dict[str, Any]]]:
    by_page: dict[tuple[int, int], list[int]] = defaultdict(list)
    for workflow_id, skip, limit in keys:
        by_page[(skip, limit)].append(workflow_id)
    pages = {
        page: await executions_of_workflows(workflow_ids, *page)
        for page, workflow_ids in by_page.items()
    }
    return [pages[(skip, limit)][workflow_id] for workflow_id, skip, limit in keys]


def executions_loader() -> DataLoader[ExecutionsKey, list[dict[str, Any]]]:
    return DataLoader(load_fn=_load_executions)
