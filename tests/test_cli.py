"""The CLI of contract section 6 against a real server process, with the original's output."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live_server import REPO, LiveServer, free_port, live_server, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("cli") / "cli.sqlite3"
    with live_server(f"sqlite://{path}") as running:
        yield running


def run_cli(
    url: str, *args: str, grpc_target: str = "", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "REST_API_URL": url, "GRPC_API_URL": grpc_target, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_get_list_add_task(server: LiveServer) -> None:
    created = run_cli(server.url, "create", "nightly", "--description", "etl")
    assert created.returncode == 0, created.stderr
    workflow = json.loads(created.stdout)
    assert created.stdout.startswith('{\n  "name": "nightly"')  # indented JSON
    assert workflow["description"] == "etl"

    added = run_cli(
        server.url,
        "add-task",
        str(workflow["id"]),
        "extract",
        "--order",
        "1",
        "--type",
        "async",
        "--params",
        '{"duration": 0.1}',
        "--description",
        "pull",
    )
    assert added.returncode == 0, added.stdout + added.stderr
    task = json.loads(added.stdout)
    assert (task["execution_type"], task["parameters"]) == ("async", {"duration": 0.1})

    shown = json.loads(run_cli(server.url, "get", str(workflow["id"])).stdout)
    assert shown["tasks"] == [task]

    for n in range(6):
        run_cli(server.url, "create", f"more{n}")
    listed = json.loads(run_cli(server.url, "list").stdout)
    assert len(listed) == 5  # the original's default limit
    assert listed[0]["id"] == workflow["id"]
    page = json.loads(run_cli(server.url, "list", "--skip", "1", "--limit", "2").stdout)
    assert [row["id"] for row in page] == [row["id"] for row in listed[1:3]]


def test_api_errors_print_the_original_message_and_exit_1(server: LiveServer) -> None:
    missing = run_cli(server.url, "get", "2147483000")
    assert missing.returncode == 1
    assert missing.stdout.strip() == "Error: API Error (404): Workflow not found"

    # A mistake on the command line is told as one (exit 2), not as an error of the API.
    bad = run_cli(server.url, "add-task", "1", "t", "--order", "1", "--params", "{nope")
    assert bad.returncode == 2
    assert bad.stdout.startswith("Error: --params is not valid JSON: ")
    listed = run_cli(server.url, "execute", "1", "--input", "[1]")
    assert listed.returncode == 2
    assert listed.stdout.startswith("Error: --input must be a JSON object")


@pytest.mark.parametrize(
    ("args", "told"),
    [
        # Bytes that are not UTF-8 on the command line arrive as lone surrogates.
        (["create", "a\udcff"], "Error: NAME: must be valid Unicode text (no lone surrogates)"),
        (["create", "a", "--description", "\udcff"], "Error: --description: must be valid"),
        (["add-task", "1", "t", "--order", "1", "--when", "\udcff"], "Error: --when: must be"),
        (["add-task", "1", "t", "--order", "1", "--params", '{"a": NaN}'], "numbers must be"),
        (["add-task", "1", "t", "--order", "1", "--params", '{"a": 1e400}'], "numbers must be"),
        (["add-task", "1", "t", "--order", "1", "--params", '{"\\ud800": 1}'], "lone surrogates"),
        (["add-task", "1", "t", "--order", "1", "--timeout", "nan"], "not a finite number"),
        (["execute", "1", "--input", '{"a": "\\udc00"}'], "Error: --input: must be valid"),
        (["status", "4294967297"], "4294967297 is out of range for an id"),
    ],
)
def test_what_no_request_can_carry_is_a_command_line_mistake(args: list[str], told: str) -> None:
    """Told with the server's own rule and exit status 2, before anything is sent (the
    servers here do not exist); it was the encoder's traceback."""
    result = run_cli("http://127.0.0.1:1", *args, grpc_target="127.0.0.1:1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert told in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_validation_errors_are_reported(server: LiveServer) -> None:
    result = run_cli(server.url, "create", "x" * 300)
    assert result.returncode == 1
    assert result.stdout.startswith("Error: API Error (422): ")
    assert "255" in result.stdout


def test_unreachable_server() -> None:
    result = run_cli(f"http://127.0.0.1:{free_port()}", "list")
    assert result.returncode == 1
    assert result.stdout.startswith("Error: ")


def test_no_command_prints_help() -> None:
    result = run_cli(
        "http://127.0.0.1:1",
    )
    assert result.returncode == 0
    for command in (
        "serve",
        "api",
        "grpc",
        "create",
        "list",
        "get",
        "add-task",
        "execute",
        "status",
        "watch",
        "retry",
        "cancel",
        "executions",
    ):
        assert command in result.stdout


def workflow_script() -> Path:
    return Path(sys.executable).parent / "workflow"


def test_the_workflow_console_script_is_installed() -> None:
    result = subprocess.run(
        [str(workflow_script()), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "add-task" in result.stdout


def run_grpc_cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(server.url, *args, grpc_target=server.grpc_target)


def make_workflow(server: LiveServer, parameters: dict[str, object], *extra: str) -> int:
    workflow = json.loads(run_cli(server.url, "create", "runs").stdout)
    added = run_cli(
        server.url,
        "add-task",
        str(workflow["id"]),
        "step",
        "--order",
        "1",
        "--params",
        json.dumps(parameters),
        *extra,
    )
    assert added.returncode == 0, added.stdout
    workflow_id: int = workflow["id"]
    return workflow_id


def test_execute_status_and_watch(server: LiveServer) -> None:
    workflow_id = make_workflow(server, {"duration": 0.2})
    started = run_grpc_cli(server, "execute", str(workflow_id))
    assert started.returncode == 0, started.stdout + started.stderr
    first, second = started.stdout.splitlines()
    assert first.startswith("Execution started with ID: ")
    assert second == "Status: in_progress"
    execution_id = first.rsplit(" ", 1)[1]

    watched = run_grpc_cli(server, "watch", execution_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[-1] == "Status: completed | step=completed"

    status = run_grpc_cli(server, "status", execution_id)
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    labels = [line.split(":", 1)[0] for line in lines[:5]]
    assert labels == ["Execution ID", "Workflow ID", "Status", "Started at", "Completed at"]
    assert lines[5:] == ["Tasks:", "  [1] step: completed, attempts 1"]  # new: each task
    assert f"Workflow ID: {workflow_id}" in status.stdout
    assert "Status: completed" in status.stdout


def test_watch_exits_1_unless_completed(server: LiveServer) -> None:
    # Nothing listens on port 1: the task fails.
    workflow_id = make_workflow(server, {"url": "http://127.0.0.1:1/"}, "--action", "http")
    started = run_grpc_cli(server, "execute", str(workflow_id))
    execution_id = started.stdout.splitlines()[0].rsplit(" ", 1)[1]
    watched = run_grpc_cli(server, "watch", execution_id)
    assert watched.returncode == 1
    assert watched.stdout.splitlines()[-1].startswith("Status: failed")


def test_grpc_commands_report_errors(server: LiveServer) -> None:
    missing = run_grpc_cli(server, "status", "2147483000")
    assert missing.returncode == 1
    assert missing.stdout.strip() == "Error: API Error (NOT_FOUND): Execution not found"
    invalid = run_grpc_cli(server, "execute", "0")
    assert invalid.returncode == 1
    assert invalid.stdout.startswith("Error: API Error (INVALID_ARGUMENT): ")


def test_input_templates_retry_cancel_and_executions(server: LiveServer) -> None:
    workflow = json.loads(run_cli(server.url, "create", "automation").stdout)
    workflow_id = str(workflow["id"])
    steps = [
        ("first", "1", ["--action", "echo", "--params", '{"v": "{{ input.v }}"}']),
        ("gate", "2", ["--params", '{"duration": 0}', "--when", "tasks.first.output.v > 1"]),
        ("slow", "3", ["--params", '{"duration": 30}', "--max-attempts", "2", "--timeout", "60"]),
    ]
    for name, order, extra in steps:
        added = run_cli(server.url, "add-task", workflow_id, name, "--order", order, *extra)
        assert added.returncode == 0, added.stdout
    task = json.loads(added.stdout)
    assert (task["max_attempts"], task["timeout_seconds"]) == (2, 60.0)

    started = run_grpc_cli(server, "execute", workflow_id, "--input", '{"v": 1}')
    assert started.returncode == 0, started.stdout + started.stderr
    execution_id = started.stdout.splitlines()[0].rsplit(" ", 1)[1]
    wait_for(
        lambda: "[3] slow: running" in run_grpc_cli(server, "status", execution_id).stdout,
        30,
        "the slow task to start",
    )
    cancelled = run_grpc_cli(server, "cancel", execution_id)
    assert cancelled.returncode == 0, cancelled.stdout
    assert "Status: cancelled" in cancelled.stdout
    status = run_grpc_cli(server, "status", execution_id).stdout.splitlines()
    assert status[5:] == [
        "Tasks:",
        "  [1] first: completed, attempts 1",
        "  [2] gate: skipped, attempts 0",
        "  [3] slow: cancelled, attempts 1",
    ]

    retried = run_grpc_cli(server, "retry", execution_id)
    assert retried.returncode == 0, retried.stdout
    lines = retried.stdout.splitlines()
    assert lines[1:] == ["Status: in_progress", f"Retry of: {execution_id}"]
    retry_id = lines[0].rsplit(" ", 1)[1]
    runs = json.loads(run_cli(server.url, "executions", workflow_id).stdout)
    assert [run["id"] for run in runs] == [int(retry_id), int(execution_id)]
    assert runs[0]["retry_of"] == int(execution_id)
    assert runs[0]["input"] == {"v": 1}
    assert run_grpc_cli(server, "cancel", retry_id).returncode == 0
    again = run_grpc_cli(server, "retry", retry_id)
    assert again.returncode == 0  # a cancelled retry may be retried again
    run_grpc_cli(server, "cancel", again.stdout.splitlines()[0].rsplit(" ", 1)[1])
    done = run_grpc_cli(server, "retry", "2147483000")
    assert done.stdout.strip() == "Error: API Error (NOT_FOUND): Execution not found"


def test_a_noop_longer_than_its_timeout_is_refused_at_creation(server: LiveServer) -> None:
    workflow = json.loads(run_cli(server.url, "create", "bounded").stdout)
    args = ["add-task", str(workflow["id"]), "t", "--order", "1", "--params", '{"duration": 5}']
    refused = run_cli(server.url, *args, "--timeout", "1")
    assert refused.returncode == 1
    assert "longer than the task's timeout" in refused.stdout
    defaulted = run_cli(server.url, *args[:-1], '{"duration": 1e9}')
    assert "(3600 s, the default)" in defaulted.stdout


def test_triggers_from_the_cli(server: LiveServer) -> None:
    workflow = json.loads(run_cli(server.url, "create", "hooked").stdout)
    made = run_cli(server.url, "trigger", "add", str(workflow["id"]), "github-push")
    assert made.returncode == 0, made.stdout + made.stderr
    lines = made.stdout.splitlines()
    trigger_id = lines[0].split()[2]
    assert lines[0].endswith(f"POST /hooks/{trigger_id}")
    secret = lines[-1]
    assert len(secret) == 64
    listed = json.loads(run_cli(server.url, "trigger", "list", str(workflow["id"])).stdout)
    assert [row["name"] for row in listed] == ["github-push"]
    assert secret not in json.dumps(listed)
    removed = run_cli(server.url, "trigger", "rm", trigger_id)
    assert removed.stdout.strip() == f"Deleted trigger {trigger_id}"
    again = run_cli(server.url, "trigger", "rm", trigger_id)
    assert again.returncode == 1
    assert again.stdout.strip() == "Error: API Error (NOT_FOUND): Trigger not found"


def test_schedules_from_the_cli(server: LiveServer) -> None:
    workflow = json.loads(run_cli(server.url, "create", "nightly-report").stdout)
    made = run_cli(
        server.url,
        "schedule",
        "add",
        str(workflow["id"]),
        "--cron",
        "0 9 * * 1-5",
        "--timezone",
        "Europe/Berlin",
        "--input",
        '{"report": "sales"}',
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.startswith("Created schedule ")
    schedule_id = made.stdout.split()[2]
    listed = json.loads(run_cli(server.url, "schedule", "list", str(workflow["id"])).stdout)
    assert [(row["id"], row["cron"], row["timezone"]) for row in listed] == [
        (schedule_id, "0 9 * * 1-5", "Europe/Berlin")
    ]
    assert listed[0]["input"] == {"report": "sales"}
    assert listed[0]["nextRunAt"] in made.stdout

    both = run_cli(
        server.url, "schedule", "add", str(workflow["id"]), "--cron", "* * * * *", "--every", "5"
    )
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
    bad = run_cli(server.url, "schedule", "add", str(workflow["id"]), "--cron", "0 25 * * *")
    assert bad.returncode == 1
    assert "not a valid cron expression" in bad.stdout

    removed = run_cli(server.url, "schedule", "rm", schedule_id)
    assert removed.stdout.strip() == f"Deleted schedule {schedule_id}"
    again = run_cli(server.url, "schedule", "rm", schedule_id)
    assert again.returncode == 1
    assert again.stdout.strip() == "Error: API Error (NOT_FOUND): Schedule not found"


def test_serve_on_loopback_answers_loopback_names_only(server: LiveServer) -> None:
    """`workflow serve` on 127.0.0.1 without WORKFLOW_ALLOWED_HOSTS: a page that rebinds its own
    name to 127.0.0.1 reaches the port, and is refused for the name it sends."""
    port = int(server.url.rsplit(":", 1)[1])
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        answer = httpx.get(f"{server.url}/healthz", headers={"host": host}, trust_env=False)
        assert answer.status_code == 200, host
    refused = httpx.get(
        f"{server.url}/workflows/", headers={"host": "attacker.example"}, trust_env=False
    )
    assert (refused.status_code, refused.text) == (400, "Invalid host header")
    # A subscription's WebSocket too (sent by hand: clients fill in Host themselves).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"GET /graphql HTTP/1.1\r\nHost: attacker.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
        )
        assert connection.recv(64).startswith(b"HTTP/1.1 400 ")


# --- Version, help, local mistakes, --json (issue 15, item 5) ---------------------------------


def test_version_is_the_installed_distributions() -> None:
    import cli

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == cli.DISTRIBUTION
    installed = metadata.version(project["name"])
    for command in ([sys.executable, str(REPO / "cli.py")], [str(workflow_script())]):
        result = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            f"workflow {installed}\n",
            "",
        )


def test_version_falls_back_to_pyproject_when_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cli

    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert cli.version() == project["version"]


def parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    """Every action of the parser and of its subcommands, with the command path it is on."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # the subcommands' own help lines
                yield f"{path} {choice.dest}", choice
            for name, subparser in action.choices.items():
                yield from parsers(subparser, f"{path} {name}")


def test_every_command_and_argument_has_help() -> None:
    import cli

    missing = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, action in parsers(cli.build_parser(), "workflow")
        if not isinstance(action, argparse._HelpAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []


# The role each command that reaches the API needs, as the README's Security section says.
ROLES = {
    "create": "admin",
    "list": "viewer",
    "get": "viewer",
    "add-task": "admin",
    "execute": "operator",
    "retry": "operator",
    "cancel": "operator",
    "executions": "viewer",
    "status": "viewer",
    "watch": "viewer",
    "trigger": "admin",
    "schedule add": "admin",
    "schedule list": "viewer",
    "schedule rm": "admin",
}


def test_help_lines_say_the_role_a_command_needs() -> None:
    import cli

    lines = {
        path.removeprefix("workflow "): action.help or ""
        for path, action in parsers(cli.build_parser(), "workflow")
        if type(action).__name__ == "_ChoicesPseudoAction"
    }
    for command, role in ROLES.items():
        assert lines[command].endswith(f"({role})"), (command, lines[command])


def test_argparse_refusals_say_error_and_name_the_argument(server: LiveServer) -> None:
    cases = [
        (["add-task", "1", "t", "--order", "first"], "Error: argument --order: 'first' is not a "),
        (["add-task", "1", "t", "--order", "1", "--timeout", "soon"], "argument --timeout: 'soon'"),
        (["status", "abc"], "Error: argument execution_id: 'abc' is not a whole number"),
        (["list", "--limit", "5.5"], "Error: argument --limit: '5.5' is not a whole number"),
        (["--json", "get", "x"], "Error: argument workflow_id: 'x' is not a whole number"),
    ]
    for args, told in cases:
        result = run_grpc_cli(server, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert told in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("usage: workflow ")
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "told"),
    [
        (["add-task", "1", "t", "--order", "1", "--params", "{nope"], "--params is not valid JSON"),
        (["add-task", "1", "t", "--order", "1", "--params", "[1]"], "--params must be a JSON obj"),
        (["add-task", "1", "t", "--order", "1", "--params", '"x"'], "--params must be a JSON obj"),
        (["add-task", "1", "t", "--order", "1", "--params", "[" * 100_000], "nests too deeply"),
        (["execute", "1", "--input", "{'a': 1}"], "Error: --input is not valid JSON"),
        (["execute", "1", "--input", "1"], "Error: --input must be a JSON object"),
        (["schedule", "add", "1", "--every", "5", "--input", "nope"], "--input is not valid"),
        (["schedule", "add", "1", "--every", "5", "--input", "[]"], "--input must be a JSON"),
    ],
)
def test_bad_json_is_a_local_mistake(server: LiveServer, args: list[str], told: str) -> None:
    """Told before anything is sent (the server would answer an API error, exit 1)."""
    result = run_grpc_cli(server, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("Error: ")
    assert told in result.stdout
    assert "API Error" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # With --json the same words go to stderr: stdout holds JSON or nothing.
    as_json = run_grpc_cli(server, "--json", *args)
    assert (as_json.returncode, as_json.stdout) == (2, "")
    assert told in as_json.stderr


def test_unreachable_servers_and_unusable_addresses() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rest = run_cli(url, "list")
    assert rest.returncode == 1
    assert rest.stdout.startswith(f"Error: cannot reach {url}/workflows/: ")
    target = f"127.0.0.1:{free_port()}"
    grpc_call = run_cli(url, "status", "1", grpc_target=target)
    assert grpc_call.returncode == 1
    assert grpc_call.stdout.startswith(f"Error: cannot reach {target}: ")
    for bad_url in ("localhost:8000", "ftp://localhost"):
        refused = run_cli(bad_url, "list")
        assert refused.returncode == 2
        assert refused.stdout.startswith("Error: REST_API_URL must start with http:// or https://")


def test_an_answer_that_is_not_json_is_not_a_traceback() -> None:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>not the API</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    page = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=page.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{page.server_address[1]}"
        result = run_cli(url, "list")
    finally:
        page.shutdown()
        page.server_close()
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"Error: {url}/workflows/ answered HTTP 200 with something that is not JSON "
        "(text/html); is REST_API_URL the workflow API?"
    )
    assert "Traceback" not in result.stderr


def test_local_configuration_mistakes(tmp_path: Path) -> None:
    worker = run_cli("http://127.0.0.1:1", "worker", env={"REDIS_URL": ""})
    assert (worker.returncode, worker.stdout) == (
        2,
        "Error: workflow worker needs Redis: set REDIS_URL\n",
    )
    unknown = run_cli("http://127.0.0.1:1", "keys", "list", env={"DATABASE_URL": "nosuch://x"})
    assert (unknown.returncode, unknown.stdout) == (
        2,
        "Error: DATABASE_URL: Unknown DB scheme: nosuch\n",
    )
    down = f"postgres://someone:hunter2@127.0.0.1:{free_port()}/db"
    keys = run_cli("http://127.0.0.1:1", "keys", "list", env={"DATABASE_URL": down})
    assert keys.returncode == 1
    assert keys.stdout.startswith(f"Error: cannot reach {down.replace('hunter2', '***')}: ")
    assert "hunter2" not in keys.stdout + keys.stderr
    for args in (["keys", "list"], ["add-task", "1", "t", "--order", "1"]):
        limits = run_cli("http://127.0.0.1:1", *args, env={"WORKFLOW_MAX_TASKS": "many"})
        assert limits.returncode == 2, limits.stdout + limits.stderr
        assert limits.stdout.startswith("Error: WORKFLOW_MAX_TASKS must be a whole number")
    for key in ("two words", "line\nbreak", "ключ"):
        for args in (["list"], ["status", "1"]):
            sent = run_cli("http://127.0.0.1:1", *args, env={"WORKFLOW_API_KEY": key})
            assert (sent.returncode, sent.stdout) == (
                2,
                "Error: WORKFLOW_API_KEY must be printable ASCII without spaces\n",
            )


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout as exactly one JSON value, from a command that succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b" not in result.stdout  # no colour, no Rich
    return json.loads(result.stdout)


def test_json_output_of_every_command(server: LiveServer, tmp_path: Path) -> None:
    # Commands whose default output is JSON print the same with --json.
    created = json_of(run_cli(server.url, "create", "scripted", "--json"))
    workflow_id = str(created["id"])
    assert run_cli(server.url, "--json", "get", workflow_id).stdout == (
        run_cli(server.url, "get", workflow_id).stdout
    )
    assert isinstance(json_of(run_cli(server.url, "list", "--json")), list)
    added = [
        ("first", "1", ["--action", "echo", "--params", '{"v": "{{ input.v }}"}']),
        ("slow", "2", ["--params", '{"duration": 30}']),
    ]
    for name, order, extra in added:
        task = json_of(
            run_cli(server.url, "--json", "add-task", workflow_id, name, "--order", order, *extra)
        )
        assert task["name"] == name

    started = json_of(run_grpc_cli(server, "--json", "execute", workflow_id, "--input", '{"v": 2}'))
    assert started == {"execution_id": started["execution_id"], "status": "in_progress"}
    execution_id = str(started["execution_id"])
    wait_for(
        lambda: (
            json_of(run_grpc_cli(server, "status", execution_id, "--json"))["tasks"][1]["status"]
            == "running"
        ),
        30,
        "the slow task to start",
    )
    cancelled = json_of(run_grpc_cli(server, "cancel", "--json", execution_id))
    assert cancelled["status"] == "cancelled"
    # status --json is the REST `Execution` shape, as GET /executions/{id} answers it.
    shown = json_of(run_grpc_cli(server, "--json", "status", execution_id))
    assert shown == httpx.get(f"{server.url}/executions/{execution_id}", trust_env=False).json()
    assert shown["output"] == {"first": {"v": 2}}
    retried = json_of(run_grpc_cli(server, "retry", execution_id, "--json"))
    assert retried == {
        "execution_id": retried["execution_id"],
        "status": "in_progress",
        "retry_of": int(execution_id),
    }
    run_grpc_cli(server, "cancel", str(retried["execution_id"]))
    runs = json_of(run_cli(server.url, "executions", workflow_id, "--json"))
    assert [run["id"] for run in runs] == [retried["execution_id"], int(execution_id)]

    # watch: one JSON object a line, even where Rich would draw a live table (FORCE_COLOR).
    quick = json_of(run_cli(server.url, "create", "quick"))
    run_cli(server.url, "add-task", str(quick["id"]), "step", "--order", "1")
    quick_run = json_of(run_grpc_cli(server, "--json", "execute", str(quick["id"])))
    watched = run_cli(
        server.url,
        "watch",
        str(quick_run["execution_id"]),
        "--json",
        grpc_target=server.grpc_target,
        env={"FORCE_COLOR": "1", "TERM": "xterm-256color"},
    )
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "\x1b" not in watched.stdout
    updates = [json.loads(line) for line in watched.stdout.splitlines()]
    assert updates[-1]["status"] == "completed"
    assert updates[-1]["tasks"][0]["name"] == "step"
    failing = make_workflow(server, {"url": "http://127.0.0.1:1/"}, "--action", "http")
    failed_run = json_of(run_grpc_cli(server, "execute", "--json", str(failing)))
    watched = run_grpc_cli(server, "--json", "watch", str(failed_run["execution_id"]))
    assert watched.returncode == 1  # as without --json
    assert json.loads(watched.stdout.splitlines()[-1])["status"] == "failed"

    trigger = json_of(run_cli(server.url, "--json", "trigger", "add", workflow_id, "ci"))
    assert sorted(trigger) == ["id", "name", "path", "secret"]
    assert trigger["path"] == f"/hooks/{trigger['id']}"
    assert json_of(run_cli(server.url, "trigger", "list", "--json"))[-1]["id"] == trigger["id"]
    removed = json_of(run_cli(server.url, "trigger", "rm", trigger["id"], "--json"))
    assert removed == {"id": trigger["id"], "deleted": True}

    schedule = json_of(
        run_cli(
            server.url, "schedule", "add", workflow_id, "--every", "3600", "--disabled", "--json"
        )
    )
    listed = json_of(run_cli(server.url, "--json", "schedule", "list", workflow_id))
    assert listed == [schedule]
    removed = json_of(run_cli(server.url, "--json", "schedule", "rm", schedule["id"]))
    assert removed == {"id": schedule["id"], "deleted": True}

    # An API error with --json: stdout stays empty, the message goes to stderr.
    missing = run_cli(server.url, "--json", "get", "2147483000")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.strip() == "Error: API Error (404): Workflow not found"


def test_json_output_of_the_key_commands(tmp_path: Path) -> None:
    """On a database of their own: a key made on the server's would close it to the others."""
    env = {"DATABASE_URL": f"sqlite://{tmp_path}/keys.sqlite3", "REDIS_URL": ""}
    made = json_of(
        run_cli("http://127.0.0.1:1", "keys", "create", "ci", "--role", "viewer", "--json", env=env)
    )
    assert (made["name"], made["role"]) == ("ci", "viewer")
    assert made["key"].startswith(made["prefix"])
    listed = json_of(run_cli("http://127.0.0.1:1", "--json", "keys", "list", env=env))
    assert [row["id"] for row in listed] == [made["id"]]
    assert made["key"] not in json.dumps(listed)
    revoked = json_of(
        run_cli("http://127.0.0.1:1", "keys", "revoke", str(made["id"]), "--json", env=env)
    )
    assert revoked == {"id": made["id"], "revoked": True}
