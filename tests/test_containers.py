"""The container files: `Dockerfile`, `.dockerignore` and `compose.yaml`.

Docker cannot run on these machines (only its client binary is installed), so these checks
parse the files instead of building them. They hold the files to what a build and a
`docker compose up` rely on: the base image, a non-root user, an entry point and commands that
the `workflow` CLI really accepts (asked of `cli.build_parser()` itself), ports that match what
the commands bind, health checks behind every `service_healthy` dependency, connection URLs that
name the compose services, and COPY sources that exist in the build context.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
PYPROJECT = ROOT / "pyproject.toml"

BASE_IMAGE = "python:3.12-slim"
# The ports the official images listen on, which the URLs in compose.yaml must use.
IMAGE_PORTS = {"postgres": 5432, "redis": 6379}
HEALTH_PATH = "/healthz"
# The roles that serve HTTP (and so `/healthz`, which the image's HEALTHCHECK asks).
HTTP_COMMANDS = {"serve", "api"}


# --- Dockerfile parsing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined and comments dropped."""

    keyword: str
    arguments: str
    # The line the instruction starts on, for messages.
    line: int

    def flags(self) -> tuple[dict[str, str], str]:
        """Leading `--name=value` options (COPY --chown, HEALTHCHECK --interval...) and the rest."""
        options: dict[str, str] = {}
        rest = self.arguments.strip()
        while rest.startswith("--"):
            word, _, rest = rest.partition(" ")
            name, _, value = word[2:].partition("=")
            options[name] = value
            rest = rest.lstrip()
        return options, rest

    def words(self) -> list[str]:
        """The arguments after any flags: the JSON array's items, else split as a shell would."""
        _, rest = self.flags()
        exec_form = json_array(rest)
        return exec_form if exec_form is not None else shlex.split(rest)


def json_array(text: str) -> list[str] | None:
    """The exec (JSON array) form's words, or None when `text` is the shell form.

    As in Docker, text that is not a valid JSON array of strings is the shell form.
    """
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [str(item) for item in value]
    return None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions (no heredocs, default `\\` escape character).

    A line ending in a backslash continues on the next one; comment lines are dropped, also in
    the middle of a continued instruction, as Docker does.
    """
    instructions: list[Instruction] = []
    pieces: list[str] = []
    start = 0

    def finish() -> None:
        keyword, _, arguments = "".join(pieces).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pieces.clear()

    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pieces:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pieces.append(line[:-1])
            continue
        pieces.append(line)
        finish()
    if pieces:
        finish()
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last build stage, its FROM first: the image that ships."""
    starts = [index for index, item in enumerate(instructions) if item.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def only(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [item for item in stage if item.keyword == keyword]


def last(stage: list[Instruction], keyword: str) -> Instruction:
    """The instruction that takes effect: for CMD, ENTRYPOINT, USER, HEALTHCHECK, the last one."""
    found = only(stage, keyword)
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.exists():
        return []
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether `.dockerignore` keeps `path` (relative to the context) out of the build context.

    The last matching pattern decides and `!` re-includes, as in Docker. `fnmatch` lets `*`
    cross `/`, which can only make this stricter than Docker.
    """
    parts = path.strip("/").split("/")
    # Excluding a directory excludes everything in it.
    candidates = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        alternatives = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in alternatives):
            ignored = not negate
    return ignored


# --- compose.yaml helpers -------------------------------------------------------------------


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, written either as a mapping or as a list of `KEY=VALUE`."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(key): str(value) for key, value in env.items()}
    pairs = (str(item).partition("=") for item in env)
    return {key: value for key, _, value in pairs}


def command_words(value: Any) -> list[str]:
    """A compose `command`/`test`: a list is used as is, a string is split as a shell would."""
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), f"unexpected command {value!r}"
    return [str(item) for item in value]


def built_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The services that run this repository's image (they have `build:`)."""
    for name, service in compose["services"].items():
        if "build" in service:
            yield name, service


def container_port(entry: Any) -> int:
    """The container side of a `ports` entry: `8000`, `"8000:8000"`, `"127.0.0.1:8000:8000/tcp"`
    or the long form `{target: 8000, ...}`."""
    if isinstance(entry, dict):
        return int(entry["target"])
    return int(str(entry).split("/", 1)[0].rsplit(":", 1)[-1])


def health_url(words: list[str]) -> str:
    """The one http URL a health check command asks."""
    urls = re.findall(r"https?://[^\s'\"]+", " ".join(words))
    assert len(urls) == 1, f"expected one URL in the health check {words!r}, found {urls!r}"
    return str(urls[0])


def assert_asks_own_health(words: list[str], port: int) -> None:
    """The check asks this container's `/healthz` on the port its server binds, with Python."""
    assert words, "empty health check"
    text = " ".join(words)
    assert not re.search(r"\b(curl|wget)\b", text), f"python:3.12-slim has no curl or wget: {text}"
    url = urlsplit(health_url(words))
    assert url.hostname in {"127.0.0.1", "localhost"}, f"health check asks {url.hostname}"
    assert url.port == port, f"health check asks port {url.port}, the server binds {port}"
    assert url.path == HEALTH_PATH


def parse_cli(words: list[str]) -> argparse.Namespace:
    """`workflow WORDS...` as the real CLI parses it; fails the test if the CLI rejects it."""
    try:
        args = build_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"`workflow {shlex.join(words)}` is not accepted by cli.build_parser()")
    assert args.command is not None, f"`workflow {shlex.join(words)}` names no subcommand"
    return args


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage() -> list[Instruction]:
    return final_stage(parse_dockerfile(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    assert isinstance(document.get("services"), dict), "compose.yaml has no services"
    return document


@pytest.fixture(scope="module")
def default_command(stage: list[Instruction]) -> argparse.Namespace:
    cmd = last(stage, "CMD")
    words = json_array(cmd.arguments)
    assert words is not None, f"line {cmd.line}: CMD must be a JSON array to reach ENTRYPOINT"
    return parse_cli(words)


# --- the parser itself ----------------------------------------------------------------------


def test_parser_joins_continuations_and_reads_both_forms() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.12-slim AS base\n"
        "RUN apt-get update \\\n"
        "    # a comment inside a continued instruction\n"
        "    && true\n"
        "\n"
        'CMD ["api", \\\n'
        '     "--port", "8000"]\n'
        "ENTRYPOINT workflow api\n"
        "COPY --chown=app:app a.txt b/ ./\n"
    )
    run, cmd, entrypoint, copy = parse_dockerfile(text)[1:]
    assert (run.keyword, run.arguments) == ("RUN", "apt-get update     && true")
    assert (cmd.line, json_array(cmd.arguments)) == (7, ["api", "--port", "8000"])
    assert json_array(entrypoint.arguments) is None
    assert entrypoint.words() == ["workflow", "api"]
    assert copy.flags()[0] == {"chown": "app:app"}
    assert copy.words() == ["a.txt", "b/", "./"]


# --- Dockerfile -----------------------------------------------------------------------------


def test_base_image_is_python_slim(stage: list[Instruction]) -> None:
    from_words = [word for word in stage[0].words() if not word.startswith("--")]
    image = from_words[0].split("@", 1)[0]  # a digest pin is welcome
    assert image == BASE_IMAGE


def test_runs_as_a_non_root_user_created_in_the_image(stage: list[Instruction]) -> None:
    user = last(stage, "USER")
    name = user.arguments.split(":", 1)[0].strip()
    assert name not in {"", "root", "0"}, f"line {user.line}: the image runs as root"
    entrypoint = last(stage, "ENTRYPOINT")
    assert stage.index(user) < stage.index(entrypoint), "USER must come before ENTRYPOINT"
    if not name.isdigit():
        creates = re.compile(rf"\b(useradd|adduser)\b.*\s{re.escape(name)}(\s|$)")
        runs = [item.arguments for item in only(stage, "RUN")]
        assert any(creates.search(run) for run in runs), f"no RUN creates the user {name!r}"


def test_entrypoint_is_the_workflow_script(stage: list[Instruction]) -> None:
    entrypoint = last(stage, "ENTRYPOINT")
    assert json_array(entrypoint.arguments) == ["workflow"], (
        f'line {entrypoint.line}: ENTRYPOINT must be the exec form ["workflow"]: '
        "the shell form ignores CMD and compose `command`"
    )
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert scripts.get("workflow") == "cli:main"


def test_default_command_is_a_server_the_cli_knows(default_command: argparse.Namespace) -> None:
    # The image's HEALTHCHECK asks `/healthz`: the default role must be one that serves it.
    assert default_command.command in HTTP_COMMANDS
    # A container must listen beyond its own loopback to be reachable at all.
    assert default_command.host == "0.0.0.0"


def test_exposes_the_ports_the_commands_bind(
    stage: list[Instruction], default_command: argparse.Namespace, compose: dict[str, Any]
) -> None:
    exposed = {
        int(word.split("/", 1)[0]) for item in only(stage, "EXPOSE") for word in item.words()
    }
    commands = [default_command]
    commands += [
        parse_cli(command_words(service["command"]))
        for _, service in built_services(compose)
        if "command" in service
    ]
    # `--port` of every role, and `serve`'s `--grpc-port` once it has one.
    ports = (getattr(args, option, None) for args in commands for option in ("port", "grpc_port"))
    bound = {port for port in ports if port is not None}
    assert bound <= exposed, f"bound {sorted(bound)}, EXPOSE {sorted(exposed)}"


def test_healthcheck_asks_healthz_with_python(
    stage: list[Instruction], default_command: argparse.Namespace
) -> None:
    check = last(stage, "HEALTHCHECK")
    _, rest = check.flags()
    kind, _, command = rest.partition(" ")
    assert kind.upper() == "CMD", f"line {check.line}: HEALTHCHECK {kind}"
    words = json_array(command.strip()) or shlex.split(command)
    assert words[0].startswith("python"), f"line {check.line}: the slim image checks with Python"
    assert_asks_own_health(words, default_command.port)


def test_installs_the_project_with_pip(stage: list[Instruction]) -> None:
    installs = re.compile(r"\bpip install\b[^&;|]*\s\.(\s|$)")
    runs = [item.arguments for item in only(stage, "RUN")]
    assert any(installs.search(run) for run in runs), "no RUN does `pip install .`"


def copied_sources(stage: list[Instruction]) -> list[tuple[Instruction, str]]:
    """Every (COPY/ADD, source) taken from the build context (not `--from` another stage)."""
    sources: list[tuple[Instruction, str]] = []
    for item in stage:
        if item.keyword not in {"COPY", "ADD"} or "from" in item.flags()[0]:
            continue
        words = item.words()
        assert len(words) >= 2, f"line {item.line}: {item.keyword} needs a source and a target"
        sources.extend((item, source) for source in words[:-1])
    return sources


def test_copied_paths_exist_in_the_build_context(stage: list[Instruction]) -> None:
    patterns = dockerignore_patterns()
    sources = copied_sources(stage)
    assert sources, "nothing is copied into the image"
    for item, source in sources:
        path = source.removeprefix("./").rstrip("/") or "."
        assert (ROOT / path).exists(), f"line {item.line}: {source} does not exist in the repo"
        assert not is_ignored(path, patterns), f"line {item.line}: .dockerignore drops {source}"


def test_copies_everything_pip_install_reads(stage: list[Instruction]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {f"{module}.py" for module in setuptools.get("py-modules", [])}
    needed |= {
        pattern.rstrip("*").rstrip(".") for pattern in setuptools["packages"]["find"]["include"]
    }
    copied = {source.removeprefix("./").rstrip("/") for _, source in copied_sources(stage)}
    assert needed <= copied, f"pyproject.toml needs {sorted(needed - copied)} in the image"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", ".env", "workflows.sqlite3", "bruno/node_modules"):
        assert is_ignored(path, patterns), f".dockerignore does not exclude {path}"
    assert is_ignored("models/__pycache__", patterns)


# --- compose.yaml ---------------------------------------------------------------------------


def test_built_services_run_commands_the_cli_knows(compose: dict[str, Any]) -> None:
    services = dict(built_services(compose))
    assert services, "no service is built from this repository"
    for name, service in services.items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context).resolve() == ROOT, f"{name} builds from {context}"
        if not isinstance(build, str):
            assert build.get("dockerfile", "Dockerfile") == DOCKERFILE.name
        # The command is arguments to the image's ENTRYPOINT (`workflow`): keep that.
        if "entrypoint" in service:
            assert command_words(service["entrypoint"]) == ["workflow"], name
        if "command" in service:
            parse_cli(command_words(service["command"]))


def test_dependencies_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on")
        if depends_on is None:
            continue
        assert isinstance(depends_on, dict), f"{name}: the list form of depends_on cannot wait"
        for dependency, options in depends_on.items():
            assert dependency in services, f"{name} depends on undefined {dependency}"
            condition = (options or {}).get("condition")
            assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
            healthcheck = services[dependency].get("healthcheck") or {}
            assert healthcheck.get("test"), f"{dependency} has no healthcheck to wait on"
            assert not healthcheck.get("disable"), f"{dependency} disables its healthcheck"


def test_built_services_publish_and_check_their_http_port(
    compose: dict[str, Any], default_command: argparse.Namespace
) -> None:
    for name, service in built_services(compose):
        args = (
            parse_cli(command_words(service["command"]))
            if "command" in service
            else default_command
        )
        healthcheck = service.get("healthcheck") or {}
        if args.command not in HTTP_COMMANDS:
            # The image's HEALTHCHECK asks the HTTP API, which this role does not serve: left
            # alone it would mark the container unhealthy forever.
            assert healthcheck.get("test") or healthcheck.get("disable"), (
                f"{name} ({args.command}) must override the image's HTTP healthcheck"
            )
            continue
        published = {container_port(entry) for entry in service.get("ports", [])}
        assert args.port in published, f"{name} binds {args.port}, publishes {published}"
        test = healthcheck.get("test")
        if test is not None:
            words = command_words(test)
            assert words[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck test {words[0]}"
            assert_asks_own_health(words[1:], args.port)


def test_connection_urls_name_the_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    checked = 0
    for name, service in built_services(compose):
        env = environment(service)
        for variable, scheme in (("DATABASE_URL", "postgres"), ("REDIS_URL", "redis")):
            if variable not in env:
                continue
            url = urlsplit(env[variable])
            assert url.scheme == scheme, f"{name}: {variable} is {env[variable]}"
            assert url.hostname in services, f"{name}: {variable} names no service: {url.hostname}"
            target = services[url.hostname]
            assert str(target.get("image", "")).startswith(f"{scheme}:"), url.hostname
            assert url.port == IMAGE_PORTS[scheme], f"{name}: {variable} port {url.port}"
            if scheme == "postgres":
                server = environment(target)
                assert url.username == server["POSTGRES_USER"], f"{name}: {variable} user"
                assert url.password == server["POSTGRES_PASSWORD"], f"{name}: {variable} password"
                assert url.path.lstrip("/") == server["POSTGRES_DB"], f"{name}: {variable} db"
            checked += 1
    assert checked, "no built service sets DATABASE_URL or REDIS_URL"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
