"""Run the Bruno collection in `bruno/` against a real server started as a subprocess.

The collection is the documented, clickable description of the REST and GraphQL API; this test
keeps it honest. It needs the Bruno CLI pinned by `bruno/package-lock.json`
(`npm ci --prefix bruno`): without it the test is skipped, except under CI where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import REPO, LiveServer, live_server

BRUNO_DIR = REPO / "bruno"
BRU = BRUNO_DIR / "node_modules" / ".bin" / "bru"
BRU_TIMEOUT = 60.0  # seconds the whole collection may take


def _request_files() -> list[Path]:
    """The collection's request files (not the collection's or the environments' own)."""
    return sorted(path for path in BRUNO_DIR.glob("*.bru") if path.name != "collection.bru")


@pytest.fixture(scope="module")
def bru() -> Path:
    if not BRU.exists():
        message = f"{BRU.relative_to(REPO)} is missing: run `npm ci --prefix bruno`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return BRU


@pytest.fixture(scope="module")
def server(bru: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`cli.py serve` with a fresh SQLite database; after `bru`, so none starts in vain."""
    path = tmp_path_factory.mktemp("bruno-server") / "db.sqlite3"
    with live_server(f"sqlite://{path}") as running:
        yield running


@pytest.mark.slow
def test_bruno_collection(bru: Path, server: LiveServer, tmp_path: Path) -> None:
    report_path = tmp_path / "bru-report.json"
    env = os.environ.copy()
    env["FORCE_COLOR"] = "0"
    result = subprocess.run(
        [
            str(bru),
            "run",
            "--env",
            "local",
            "--env-var",
            f"baseUrl={server.url}",
            "--reporter-json",
            str(report_path),
            "--noproxy",
        ],
        cwd=BRUNO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=BRU_TIMEOUT,
        check=False,
    )
    output = (
        f"--- bru run (exit code {result.returncode}) ---\n{result.stdout}\n{result.stderr}\n"
        f"--- server log ---\n{server.log()}"
    )
    if result.returncode != 0:
        pytest.fail(output)

    # bru skips a request file it cannot parse with a mere warning: count what it ran.
    report: list[dict[str, Any]] = json.loads(report_path.read_text())
    summary = report[0]["summary"]
    expected = len(_request_files())
    assert summary["totalRequests"] == expected, output
    assert summary["passedRequests"] == expected, output
    assert summary["failedAssertions"] == 0, output
    assert summary["failedTests"] == 0, output
