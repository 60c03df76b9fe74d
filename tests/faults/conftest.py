"""The fault tests (issue 16): each starts its own Redis or PostgreSQL, which it stops and
kills; the shared services on 5432 and 6379 are never touched. Marked `faults`: run them
alone with `pytest -m faults`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/faults/" in str(item.path):
            item.add_marker(pytest.mark.faults)
