"""The README's commands, run as a newcomer would run them, top to bottom, against a live server.

Every fenced block of README.md says what it holds. A shell block (`sh`, `bash`, `console`) is
either run here, in order, against one `workflow serve` this test starts on a fresh database, or
marked with `<!-- not run: REASON -->` on the line just before it (the install command, the test
command, Docker, servers of a deployment). Each run block must exit 0, and the tour must end
with a watched execution that completed: the README, read top to bottom, gets a newcomer from
nothing to a watched execution with no step missing.

How the blocks are run:
- each in its own `bash -euo pipefail`, in a scratch directory;
- `localhost:8000` rewritten to the live server's address; `REST_API_URL`, `GRPC_API_URL` and
  `DATABASE_URL` name the live server and its database;
- `workflow` on PATH is this virtual environment's (the tour tells the reader to activate it);
- `curl` on PATH is the real one with `--fail-with-body`, so that an example the API answers
  with an error fails here, where the README's `curl -s` would print the error and exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.live_server import REPO, LiveServer, live_server

README = REPO / "README.md"
# The README is written for the default address; the test rewrites it to the live server's.
README_ADDRESS = "localhost:8000"
# The section whose blocks take a newcomer from nothing to a watched execution.
TOUR_HEADING = "## A five-minute tour"
# The README's first two commands, exactly: CI and tests/test_lock.py depend on them.
START_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -e . -c requirements.lock"
    " && .venv/bin/workflow serve"
)
TEST_COMMAND = "scripts/test"

SHELL_LANGUAGES = {"sh", "bash", "console"}
# Fences that show something other than commands to run.
OTHER_LANGUAGES = {"text", "graphql", "json", "protobuf", "yaml", "python", "toml"}
FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (.*?) -->$")
# Seconds one block may take: the slowest waits for an execution of about 1.5 s.
BLOCK_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int  # of the opening fence, 1-based
    section: str  # the `## ` heading it is under
    not_run: str | None  # the reason, when marked

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    def script(self) -> str:
        """The commands to run: a `console` block's `$ ` lines (and their continuations)."""
        if self.language != "console":
            return self.text
        commands: list[str] = []
        continued = False
        for line in self.text.splitlines():
            if line.startswith("$ "):
                commands.append(line[2:])
            elif continued:
                commands.append(line)
            else:
                continue
            continued = line.endswith("\\")
        return "\n".join(commands) + "\n"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with its section and its `not run` mark. Raises AssertionError on a
    mark that is not just before a shell block, or on a fence that is never closed."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line
        mark = NOT_RUN.match(line)
        if mark or line.startswith("<!-- not run"):
            following = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
            reason = mark.group(1).strip() if mark else ""
            assert reason, f"README.md:{index + 1}: `<!-- not run: REASON -->` needs its reason"
            language = following.group(1) if following else ""
            assert language in SHELL_LANGUAGES, (
                f"README.md:{index + 1}: `<!-- not run -->` must be just before a shell block"
            )
        fence = FENCE.match(line)
        if fence is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end] != "```":
            end += 1
        assert end < len(lines), f"README.md:{index + 1}: a fence that is never closed"
        previous = NOT_RUN.match(lines[index - 1]) if index > 0 else None
        blocks.append(
            Block(
                language=fence.group(1),
                text="\n".join(lines[index + 1 : end]) + "\n",
                line=index + 1,
                section=section,
                not_run=previous.group(1) if previous else None,
            )
        )
        index = end + 1
    return blocks


def run_blocks(blocks: list[Block]) -> list[Block]:
    return [block for block in blocks if block.is_shell and block.not_run is None]


def test_every_block_says_what_it_holds_and_every_shell_block_is_run_or_marked() -> None:
    blocks = readme_blocks(README.read_text())
    for block in blocks:
        assert block.language in SHELL_LANGUAGES | OTHER_LANGUAGES, (
            f"README.md:{block.line}: a fence needs a language: a shell block "
            f"({', '.join(sorted(SHELL_LANGUAGES))}), or one of {sorted(OTHER_LANGUAGES)}"
        )
        if block.is_shell:
            assert block.script().strip(), f"README.md:{block.line}: a shell block with no command"
    run = run_blocks(blocks)
    marked = [block for block in blocks if block.is_shell and block.not_run is not None]
    # Each shell block is exactly one of the two; the live test runs all of `run`.
    assert len(run) + len(marked) == sum(block.is_shell for block in blocks)
    assert any(block.section == TOUR_HEADING for block in run), f"no block runs in {TOUR_HEADING}"


def test_the_first_two_commands_start_the_backend_and_run_the_tests() -> None:
    first, second = readme_blocks(README.read_text())[:2]
    assert (first.language, first.text) == ("sh", START_COMMAND + "\n")
    assert (second.language, second.text) == ("sh", TEST_COMMAND + "\n")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(f"sqlite://{tmp_path}/db.sqlite3") as running:
        yield running


def block_environment(server: LiveServer, database_url: str, bin_dir: Path) -> dict[str, str]:
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "workflow").exists(), f"no `workflow` beside {sys.executable}"
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"WORKFLOW_API_KEY", "WORKFLOW_ADMIN_KEY", "GRPC_TLS_CA", "RAY_ADDRESS"}
    }
    environment.update(
        {
            "PATH": os.pathsep.join([str(bin_dir), str(venv_bin), os.environ.get("PATH", "")]),
            "REST_API_URL": server.url,
            "GRPC_API_URL": server.grpc_target,
            "DATABASE_URL": database_url,
            "REDIS_URL": "",
        }
    )
    return environment


def strict_curl(bin_dir: Path) -> None:
    """A `curl` first on PATH that fails on an HTTP error answer, printing the answer."""
    for tool in ("curl", "openssl", "jq"):
        assert shutil.which(tool), f"the README's examples need {tool}; install it"
    shim = bin_dir / "curl"
    shim.write_text(f'#!/bin/sh\nexec {shutil.which("curl")} --fail-with-body --show-error "$@"\n')
    shim.chmod(0o755)


def watched_execution(block: Block) -> int:
    """The id in the block's last command, which must be `workflow watch ID`."""
    last = block.script().strip().splitlines()[-1]
    watch = re.fullmatch(r"workflow watch (\d+)(\s+#.*)?", last.strip())
    assert watch, f"README.md:{block.line}: the tour must end with `workflow watch ID`: {last!r}"
    return int(watch.group(1))


@pytest.mark.slow
def test_the_readme_commands_run_against_a_live_server(server: LiveServer, tmp_path: Path) -> None:
    blocks = run_blocks(readme_blocks(README.read_text()))
    tour = [block for block in blocks if block.section == TOUR_HEADING]
    bin_dir, workdir = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    workdir.mkdir()
    strict_curl(bin_dir)
    environment = block_environment(server, f"sqlite://{tmp_path}/db.sqlite3", bin_dir)
    address = server.url.removeprefix("http://")
    began = time.monotonic()
    for block in blocks:
        script = block.script().replace(README_ADDRESS, address)
        try:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=workdir,
                env=environment,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            pytest.fail(f"README.md:{block.line} ran over {expired.timeout} s:\n{script}")
        assert result.returncode == 0, (
            f"README.md:{block.line} exited {result.returncode}:\n{script}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n"
            f"--- server log (end)\n{server.log()[-3000:]}"
        )
        if block is tour[-1]:
            execution_id = watched_execution(block)
            assert "Status: completed" in result.stdout, result.stdout
            answer = httpx.get(f"{server.url}/executions/{execution_id}", trust_env=False)
            assert answer.json()["status"] == "completed", answer.text
    # What keeps this test quick: no block waits long (see BLOCK_TIMEOUT_SECONDS).
    assert time.monotonic() - began < 45, "the README's blocks took most of a minute"


def test_the_readmes_links_lead_somewhere() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", text)
    local = [target for target in targets if not target.startswith(("http://", "https://"))]
    assert {"docs/architecture.md", "docs/benchmarks.md", "CHANGELOG.md"} <= set(local)
    for target in local:
        assert (REPO / target).exists(), f"README.md links to {target}, which is not there"


def test_docs_benchmarks_shows_every_chart_of_its_figures() -> None:
    from benchmarks.charts import FIGURES, load

    page = (REPO / "docs" / "benchmarks.md").read_text()
    embedded = set(re.findall(r"!\[[^\]]+\]\(benchmarks/([^)]+\.png)\)", page))
    files = {chart["file"] for chart in load(FIGURES)}
    assert embedded == files, "docs/benchmarks.md and figures.json name different charts"
    for name in files:
        assert (FIGURES.parent / name).is_file(), f"run benchmarks/charts.py: no {name}"
