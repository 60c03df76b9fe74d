"""requirements.lock and pyproject.toml agree: what we test is what the project asks for.

The lock is written by `uv pip compile` (scripts/upgrade-deps); every install of ours (the
README's commands, .ci/run, the Dockerfile) is constrained by it. A dependency added to
pyproject.toml and not locked would install at whatever version is newest that day; one left in
the lock after pyproject.toml dropped it would be a pin of nothing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PROJECT = "workflow-engine"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")
# uv's note under a pin that pyproject.toml asks for it (alone, or among other reasons).
OURS = re.compile(rf"#\s+(via\s+)?{PROJECT} \(pyproject\.toml\)")


def declared() -> list[Requirement]:
    """Every requirement of pyproject.toml: the dependencies and every extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [Requirement(text) for text in texts]


def locked() -> tuple[dict[str, Version], set[str]]:
    """The lock's pins (name -> version) and the names it says pyproject.toml asks for."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    current: str | None = None
    for line in LOCK.read_text().splitlines():
        pin = PIN.match(line)
        if pin is not None:
            current = canonicalize_name(pin.group(1))
            assert current not in pins, f"{current} is pinned twice"
            pins[current] = Version(pin.group(2))
        elif current is not None and OURS.search(line):
            direct.add(current)
    return pins, direct


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    pins, _ = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml, not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement.specifier}"
        )


def test_the_lock_asks_for_nothing_pyproject_does_not() -> None:
    _, direct = locked()
    names = {canonicalize_name(requirement.name) for requirement in declared()}
    assert direct, "requirements.lock names no dependency of pyproject.toml: not uv's output?"
    assert direct <= names, f"locked as ours but not in pyproject.toml: {sorted(direct - names)}"


def test_the_lock_is_read_by_every_install() -> None:
    readme = (ROOT / "README.md").read_text()
    first_command = re.search(r"```sh\n(python3 -m venv .*)\n```", readme)
    assert first_command is not None, "the README's first command moved"
    assert "-c requirements.lock" in first_command.group(1)
    assert "-c requirements.lock" in (ROOT / "scripts" / "test").read_text()
    assert "-c requirements.lock" in (ROOT / "Dockerfile").read_text()
