"""The container files: `Dockerfile`, `.dockerignore` and `compose.yaml`.

Docker cannot run on these machines (only its client binary is installed), so these checks
parse the files instead of building them. They hold the files to what a build, a
`docker compose up` and a `docker compose run --rm SERVICE ARGS...` rely on: the base image, a
non-root user, one image for every role with the extras those roles need, an entry point and
commands that the `workflow` CLI really accepts (asked of `cli.build_parser()` itself), ports
that match what the commands bind, health checks that fit each role (and that do answer: they
are run here against stand-ins), health checks behind every `service_healthy` dependency, one
service that migrates before the others start, connection URLs that name the compose services,
and COPY sources that exist in the build context.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import grpc
import pytest
import redis
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cli import build_parser
from tests.services import REDIS_TEST_URL, unavailable

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
# The roles compose.yaml runs, each from the same image.
ROLES = {"api", "grpc", "worker"}
# The roles that open the database when they start, and so first apply pending migrations
# (`start_database`). A worker runs actions only and never opens it.
MIGRATING_COMMANDS = {"serve", "api", "grpc"}
# `docker compose run --rm grpc --use-ray`, as the original service's README showed.
RAY_RUN_SERVICE = "grpc"
RAY_RUN_ARGS = ["--use-ray"]
# Seconds a health check command may take when it is run here.
CHECK_TIMEOUT = 30


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
    """A compose `command`/`entrypoint`/`test`: a list is used as is, a string is split as a
    shell would."""
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), f"unexpected command {value!r}"
    return [str(item) for item in value]


def built_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The services that run this repository's image: they have `build:`, or name the image
    that a service with `build:` makes."""
    services = compose["services"]
    built_images = {
        service["image"]
        for service in services.values()
        if "build" in service and "image" in service
    }
    for name, service in services.items():
        if "build" in service or service.get("image") in built_images:
            yield name, service


def container_argv(
    stage: list[Instruction], service: dict[str, Any], run_args: list[str] | None = None
) -> list[str]:
    """What a container of `service` runs: as `docker compose up` starts it, or with `run_args`
    as `docker compose run --rm SERVICE RUN_ARGS...` does.

    As in Docker, a compose `entrypoint` replaces the image's ENTRYPOINT and drops the image's
    CMD; `command`, or the arguments given to `run`, replace CMD.
    """
    if "entrypoint" in service:
        entrypoint, cmd = command_words(service["entrypoint"]), []
    else:
        entrypoint = json_array(last(stage, "ENTRYPOINT").arguments) or []
        cmd = json_array(last(stage, "CMD").arguments) or []
    if "command" in service:
        cmd = command_words(service["command"])
    if run_args is not None:
        cmd = run_args
    return entrypoint + cmd


def workflow_args(argv: list[str], name: str) -> argparse.Namespace:
    """`argv` must run the image's `workflow` script; its arguments, as the CLI parses them."""
    assert argv[:1] == ["workflow"], f"{name} runs {argv}, not the image's `workflow` script"
    return parse_cli(argv[1:])


def container_port(entry: Any) -> int:
    """The container side of a `ports` entry: `8000`, `"8000:8000"`, `"127.0.0.1:8000:8000/tcp"`
    or the long form `{target: 8000, ...}`."""
    if isinstance(entry, dict):
        return int(entry["target"])
    return int(str(entry).split("/", 1)[0].rsplit(":", 1)[-1])


def depends_on(service: dict[str, Any]) -> set[str]:
    value = service.get("depends_on") or {}
    return set(value) if isinstance(value, dict) else {str(item) for item in value}


def waits_for(compose: dict[str, Any], name: str) -> set[str]:
    """Every service `name` waits for, directly or through others."""
    services = compose["services"]
    seen: set[str] = set()
    pending = list(depends_on(services[name]))
    while pending:
        dependency = pending.pop()
        if dependency not in seen and dependency in services:
            seen.add(dependency)
            pending.extend(depends_on(services[dependency]))
    return seen


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


def python_check(test: Any, name: str) -> str:
    """The code of a compose health check `["CMD", "python", "-c", CODE]`."""
    assert test is not None, f"{name} has no health check of its own"
    words = command_words(test)
    shape = [*words[:3], "CODE"] if len(words) == 4 else words
    assert shape == ["CMD", "python", "-c", "CODE"], f"{name}: a Python check, not {words!r}"
    return words[3]


def run_check(code: str, **env: str) -> int:
    """Run a health check's Python code as Docker would (here with this interpreter); its exit
    status: 0 healthy, anything else not."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        timeout=CHECK_TIMEOUT,
        check=False,
    )
    return result.returncode


def retarget(code: str, address: str, stand_in: str) -> str:
    """The check's code, asking `stand_in` instead of `address` (which it must ask once)."""
    assert code.count(address) == 1, f"the check should ask {address} once: {code}"
    return code.replace(address, stand_in)


def free_port() -> int:
    """A local port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_cli(words: list[str]) -> argparse.Namespace:
    """`workflow WORDS...` as the real CLI parses it; fails the test if the CLI rejects it."""
    try:
        args = build_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"`workflow {shlex.join(words)}` is not accepted by cli.build_parser()")
    assert args.command is not None, f"`workflow {shlex.join(words)}` names no subcommand"
    return args


def extras_needed(args: argparse.Namespace, declared: set[str]) -> set[str]:
    """The project's extras that the command imports: an executor's, a worker's."""
    if args.command == "worker":
        return {"saq"}
    if args.command == "grpc":
        return {"saq"} if args.use_saq else {"ray"} if args.use_ray else set()
    if args.command == "serve":
        return {args.executor} & declared
    return set()


def pip_installed_extras(stage: list[Instruction]) -> set[str] | None:
    """The extras of `pip install .[EXTRAS]` in a RUN; None when no RUN installs the project."""
    installed: set[str] | None = None
    for item in only(stage, "RUN"):
        for part in re.split(r"&&|\|\||[;|]", item.arguments):
            words = shlex.split(part)
            pips = [i for i, word in enumerate(words[:-1]) if word in {"pip", "pip3"}]
            starts = [i + 2 for i in pips if words[i + 1] == "install"]
            for word in words[starts[0] :] if starts else []:
                target = re.fullmatch(r"\./?(?:\[([^\]]*)\])?", word)
                if target is not None:
                    extras = {e.strip() for e in (target.group(1) or "").split(",") if e.strip()}
                    installed = (installed or set()) | extras
    return installed


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


@pytest.fixture(scope="module")
def roles(stage: list[Instruction], compose: dict[str, Any]) -> dict[str, argparse.Namespace]:
    """Each service that runs this image, and its command as the CLI parses it."""
    return {
        name: workflow_args(container_argv(stage, service), name)
        for name, service in built_services(compose)
    }


@pytest.fixture(scope="module")
def ray_run(stage: list[Instruction], compose: dict[str, Any]) -> argparse.Namespace:
    """`docker compose run --rm grpc --use-ray`, as the CLI parses what it runs."""
    service = compose["services"].get(RAY_RUN_SERVICE)
    assert service is not None, f"compose.yaml has no {RAY_RUN_SERVICE} service"
    argv = container_argv(stage, service, RAY_RUN_ARGS)
    return workflow_args(argv, f"`docker compose run --rm {RAY_RUN_SERVICE} --use-ray`")


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


def test_container_argv_follows_docker() -> None:
    stage = final_stage(parse_dockerfile('FROM x\nENTRYPOINT ["workflow"]\nCMD ["api"]\n'))
    assert container_argv(stage, {}) == ["workflow", "api"]
    assert container_argv(stage, {"command": "grpc --use-saq"}) == ["workflow", "grpc", "--use-saq"]
    # A compose entrypoint drops the image's CMD; `run` arguments replace `command`.
    assert container_argv(stage, {"entrypoint": ["workflow", "grpc"]}) == ["workflow", "grpc"]
    service = {"entrypoint": ["workflow", "grpc"], "command": ["--use-saq"]}
    assert container_argv(stage, service, ["--use-ray"]) == ["workflow", "grpc", "--use-ray"]
    assert container_argv(stage, {"command": ["api"]}, ["--use-ray"]) == ["workflow", "--use-ray"]


def test_pip_installed_extras_reads_the_install_target() -> None:
    def extras(run: str) -> set[str] | None:
        return pip_installed_extras(final_stage(parse_dockerfile(f"FROM x\nRUN {run}\n")))

    assert extras("pip install --no-cache-dir . && chown app /app") == set()
    assert extras("pip install --no-cache-dir '.[saq, ray]' && true") == {"saq", "ray"}
    assert extras("python -m pip install .[saq]") == {"saq"}
    assert extras("pip install saq") is None
    assert extras("pip download . && echo install .") is None


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
    stage: list[Instruction],
    default_command: argparse.Namespace,
    roles: dict[str, argparse.Namespace],
    ray_run: argparse.Namespace,
) -> None:
    exposed = {
        int(word.split("/", 1)[0]) for item in only(stage, "EXPOSE") for word in item.words()
    }
    commands = [default_command, ray_run, *roles.values()]
    # `--port` of every role, and `serve`'s `--grpc-port`.
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
    assert pip_installed_extras(stage) is not None, "no RUN does `pip install .` (or `.[extras]`)"


def test_installs_the_extras_every_role_needs(
    stage: list[Instruction],
    default_command: argparse.Namespace,
    roles: dict[str, argparse.Namespace],
    ray_run: argparse.Namespace,
) -> None:
    # One image for every role: it has what each of them imports (SAQ for the worker and
    # `grpc --use-saq`, Ray for `docker compose run --rm grpc --use-ray`).
    declared = set(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])
    installed = pip_installed_extras(stage) or set()
    assert installed <= declared, f"pyproject.toml has no extras {sorted(installed - declared)}"
    assert "dev" not in installed, "the image does not need the test and lint tools"
    needed: set[str] = set()
    for args in (default_command, ray_run, *roles.values()):
        needed |= extras_needed(args, declared)
    assert needed, "no role needs an extra: the compose roles were not found"
    assert needed <= installed, f"the image lacks the extras {sorted(needed - installed)}"


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


def test_image_healthcheck_answers_like_the_server(stage: list[Instruction]) -> None:
    words = json_array(last(stage, "HEALTHCHECK").flags()[1].partition(" ")[2].strip())
    assert words is not None, "HEALTHCHECK CMD must be a JSON array"
    assert words[:2] == ["python", "-c"], f"HEALTHCHECK [python, -c, CODE], not {words}"
    assert_http_check_answers(words[2])


# --- compose.yaml ---------------------------------------------------------------------------


def test_one_image_for_every_role(compose: dict[str, Any]) -> None:
    services = dict(built_services(compose))
    assert services, "no service is built from this repository"
    for name, service in services.items():
        assert "build" in service, f"{name} runs the image but does not build it: it would pull"
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context).resolve() == ROOT, f"{name} builds from {context}"
        if not isinstance(build, str):
            assert build.get("dockerfile", "Dockerfile") == DOCKERFILE.name
            assert "target" not in build, f"{name} builds a stage of its own"
        # `always` or `daily` would pull the tag instead of building it; `never` would not build.
        assert service.get("pull_policy", "missing") in {"missing", "build"}, name
    builds = {json.dumps(service["build"], sort_keys=True) for service in services.values()}
    assert len(builds) == 1, f"the roles build differently: {sorted(builds)}"
    images = {str(service.get("image")) for service in services.values()}
    assert len(images) == 1, f"the roles run different images: {sorted(images)}"


def test_built_services_run_commands_the_cli_knows(roles: dict[str, argparse.Namespace]) -> None:
    # `roles` parsed each service's entrypoint + command with the real CLI.
    assert {args.command for args in roles.values()} >= ROLES, f"roles: {roles}"
    for name, args in roles.items():
        if getattr(args, "host", None) is not None:
            assert args.host == "0.0.0.0", f"{name} listens on {args.host}: unreachable"


def test_grpc_runs_on_saq_and_on_ray_when_asked(
    roles: dict[str, argparse.Namespace], ray_run: argparse.Namespace
) -> None:
    up = roles[RAY_RUN_SERVICE]
    assert (up.command, up.use_saq, up.use_ray) == ("grpc", True, False)
    # `docker compose run --rm grpc --use-ray`: the same server, with Ray instead.
    assert (ray_run.command, ray_run.use_saq, ray_run.use_ray) == ("grpc", False, True)
    assert (ray_run.host, ray_run.port) == (up.host, up.port)


def test_saq_roles_have_redis_and_workers(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    services = compose["services"]
    queued = [name for name, args in roles.items() if args.command == "grpc" and args.use_saq]
    workers = [name for name, args in roles.items() if args.command == "worker"]
    if queued:
        assert workers, f"{queued} queue tasks on SAQ, but no service runs `workflow worker`"
    for name in queued + workers:
        url = environment(services[name]).get("REDIS_URL")
        assert url, f"{name} needs REDIS_URL"
        assert urlsplit(url).hostname in depends_on(services[name]), f"{name} must wait for Redis"


def test_workers_can_scale(compose: dict[str, Any], roles: dict[str, argparse.Namespace]) -> None:
    workers = [name for name, args in roles.items() if args.command == "worker"]
    assert workers
    for name in workers:
        service = compose["services"][name]
        # `docker compose up --scale worker=N` needs containers that differ only by number.
        assert "container_name" not in service, f"{name} has a fixed container name"
        assert not service.get("ports"), f"{name} publishes ports: a second replica would clash"
        replicas = (service.get("deploy") or {}).get("replicas", 1)
        assert isinstance(replicas, int), f"{name}: replicas {replicas!r}"
        assert replicas >= 1, f"{name}: replicas {replicas!r}"


def test_dependencies_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        dependencies = service.get("depends_on")
        if dependencies is None:
            continue
        assert isinstance(dependencies, dict), f"{name}: the list form of depends_on cannot wait"
        for dependency, options in dependencies.items():
            assert dependency in services, f"{name} depends on undefined {dependency}"
            condition = (options or {}).get("condition")
            assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
            healthcheck = services[dependency].get("healthcheck") or {}
            assert healthcheck.get("test"), f"{dependency} has no healthcheck to wait on"
            assert not healthcheck.get("disable"), f"{dependency} disables its healthcheck"


def test_one_service_migrates_before_the_others_start(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    # Each of these applies pending migrations when it starts. Only one may start without
    # waiting (healthy, so migrated) for another of them; the rest find nothing pending.
    migrating = {name for name, args in roles.items() if args.command in MIGRATING_COMMANDS}
    first = sorted(name for name in migrating if not waits_for(compose, name) & migrating)
    assert len(first) == 1, f"{first} all migrate at once on a first start"


def test_built_services_publish_and_check_their_http_port(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    for name, args in roles.items():
        service = compose["services"][name]
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


def test_grpc_services_publish_and_check_their_grpc_port(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    checked = 0
    for name, args in roles.items():
        if args.command != "grpc":
            continue
        service = compose["services"][name]
        published = {container_port(entry) for entry in service.get("ports", [])}
        assert args.port in published, f"{name} binds {args.port}, publishes {published}"
        code = python_check((service.get("healthcheck") or {}).get("test"), name)
        assert not re.search(r"https?://|/healthz", code), f"{name}: gRPC serves no HTTP: {code}"
        assert "grpc_health" in code, f"{name}: ask the grpc.health.v1 Health service"
        assert "HealthStub" in code, f"{name}: ask the grpc.health.v1 Health service"
        addresses = set(re.findall(r"['\"]((?:127\.0\.0\.1|localhost):\d+)['\"]", code))
        assert addresses == {f"127.0.0.1:{args.port}"}, f"{name} binds {args.port}: {addresses}"
        checked += 1
    assert checked, "no service runs `workflow grpc`"


def test_worker_health_checks_ask_redis(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    for name, args in roles.items():
        if args.command != "worker":
            continue
        service = compose["services"][name]
        healthcheck = service.get("healthcheck") or {}
        if healthcheck.get("disable"):
            continue
        code = python_check(healthcheck.get("test"), name)
        assert not re.search(r"https?://|/healthz", code), f"{name}: a worker serves no HTTP"
        assert "REDIS_URL" in code, f"{name}: ask the worker's Redis (REDIS_URL)"
        assert "ping" in code, f"{name}: ping the worker's Redis"
        assert "REDIS_URL" in environment(service), f"{name}: the check reads REDIS_URL"


def test_api_reaches_the_grpc_service(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    services = compose["services"]
    apis = [name for name, args in roles.items() if args.command == "api"]
    assert apis
    for name in apis:
        target = environment(services[name]).get("GRPC_TARGET")
        assert target, f"{name} has no GRPC_TARGET: it would ask its own 127.0.0.1:50051"
        host, _, port = target.rpartition(":")
        assert host in roles, f"{name}: GRPC_TARGET {target} names no service of this image"
        assert roles[host].command == "grpc", f"{name}: GRPC_TARGET {target} is not gRPC"
        assert int(port) == roles[host].port, f"{name}: GRPC_TARGET {target}, grpc binds {port}"
        condition = ((services[name].get("depends_on") or {}).get(host) or {}).get("condition")
        assert condition == "service_healthy", f"{name} must wait for {host} to be healthy"


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


# --- the health checks, run against stand-ins -----------------------------------------------


class HealthzHandler(BaseHTTPRequestHandler):
    """Answers GET /healthz with `status`; other paths 404."""

    status: ClassVar[int] = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == HEALTH_PATH else 404
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def assert_http_check_answers(code: str) -> None:
    class Handler(HealthzHandler):
        status = 200

    address = health_url([code]).split("://", 1)[1].split("/", 1)[0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        local = retarget(code, address, f"127.0.0.1:{server.server_address[1]}")
        assert run_check(local) == 0, "healthy (200) but the check fails"
        Handler.status = 503
        assert run_check(local) != 0, "unhealthy (503) but the check passes"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert run_check(local) != 0, "nothing listens but the check passes"


def test_http_health_checks_answer(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    for name, args in roles.items():
        test = (compose["services"][name].get("healthcheck") or {}).get("test")
        if args.command in HTTP_COMMANDS and test is not None:
            assert_http_check_answers(python_check(test, name))


def test_grpc_health_checks_answer(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    grpc_roles = {name: args for name, args in roles.items() if args.command == "grpc"}
    assert grpc_roles
    for name, args in grpc_roles.items():
        code = python_check(compose["services"][name]["healthcheck"]["test"], name)
        pool = futures.ThreadPoolExecutor(max_workers=2)
        server = grpc.server(pool)
        servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            local = retarget(code, f"127.0.0.1:{args.port}", f"127.0.0.1:{port}")
            servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            assert run_check(local) == 0, f"{name}: SERVING but the check fails"
            servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            assert run_check(local) != 0, f"{name}: NOT_SERVING but the check passes"
        finally:
            server.stop(None).wait()
            pool.shutdown()
        assert run_check(local) != 0, f"{name}: nothing listens but the check passes"


def test_worker_health_checks_answer(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    checks: dict[str, str] = {}
    for name, args in roles.items():
        healthcheck = compose["services"][name].get("healthcheck") or {}
        if args.command == "worker" and not healthcheck.get("disable"):
            checks[name] = python_check(healthcheck.get("test"), name)
    for name, code in checks.items():
        closed = f"redis://127.0.0.1:{free_port()}/0"
        assert run_check(code, REDIS_URL=closed) != 0, f"{name}: no Redis but the check passes"
    if not checks:
        return
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        unavailable("Redis", exc)
    finally:
        client.close()
    for name, code in checks.items():
        assert run_check(code, REDIS_URL=REDIS_TEST_URL) == 0, f"{name}: Redis answers, check fails"


def test_roles_listening_beyond_loopback_start_with_a_key(
    compose: dict[str, Any], roles: dict[str, argparse.Namespace]
) -> None:
    # An open service refuses a public address (exit 2): every role that listens on one gets
    # WORKFLOW_ADMIN_KEY, from the environment of `docker compose up`, required (`:?`).
    from models.startup import is_loopback

    services = compose["services"]
    checked = 0
    for name, args in roles.items():
        host = getattr(args, "host", None)
        if host is None or is_loopback(host):
            continue
        value = environment(services[name]).get("WORKFLOW_ADMIN_KEY", "")
        assert re.fullmatch(r"\$\{WORKFLOW_ADMIN_KEY:\?[^}$]+\}", value), f"{name}: {value!r}"
        checked += 1
    assert checked, "no role listens beyond loopback: the check checked nothing"
