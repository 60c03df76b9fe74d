"""The `workflow` command: servers to start, and the REST client of the service we replace.

`python cli.py ...` from the checkout is the same as `workflow ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import ModuleType
from typing import Any, NoReturn

import httpx

from exec_service.executors import EXECUTORS

DEFAULT_REST_API_URL = "http://localhost:8000"
DEFAULT_GRPC_API_URL = "localhost:50051"
# Seconds the CLI waits for the API before it gives up.
REQUEST_TIMEOUT = 30.0
# pyproject.toml's `[project] name`: whose installed version `--version` prints
# (tests/test_cli.py checks that the two agree).
DISTRIBUTION = "workflow-engine"


class CliError(Exception):
    """What the CLI prints as `Error: <message>`, ending with `exit_status`."""

    exit_status = 1


class ApiError(CliError):
    """The server answered with an error (its HTTP status, GraphQL or gRPC code)."""

    def __init__(self, status: int | str, detail: Any) -> None:
        super().__init__(f"API Error ({status}): {detail}")


class Unreachable(CliError):
    """No answer at all: the server is down, or the address or the network is wrong."""

    def __init__(self, where: str, reason: object) -> None:
        # Some transport errors (timeouts) carry no text: their class names them.
        told = str(reason) or type(reason).__name__
        super().__init__(f"cannot reach {where}: {told}")


class UsageError(CliError):
    """A mistake in the command line or the environment (caught before any request is sent)."""

    exit_status = 2


class _Parser(argparse.ArgumentParser):
    """argparse's own refusals (an unknown option, a bad number) told as every other local
    mistake is: `Error: <what is wrong>`, after the usage, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"Error: {message}\n")


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked (reading the installed metadata costs a scan
    of sys.path that no other command needs)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"workflow {version()}")
        parser.exit()


def version() -> str:
    """The installed distribution's version; from the checkout's pyproject.toml when it is not
    installed (`python cli.py` in a plain clone)."""
    from importlib import metadata
    from pathlib import Path

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        import tomllib

        try:
            with (Path(__file__).parent / "pyproject.toml").open("rb") as file:
                return str(tomllib.load(file)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise UsageError(f"{option} is not valid JSON: it nests too deeply") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object, e.g. '{{\"key\": 1}}'")
    try:
        _input_rules().check_json_value(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    return value


def _input_rules() -> ModuleType:
    """models.inputs, whose limits it reads from the environment (WORKFLOW_MAX_*) when it is
    imported: a value there that does not parse is a mistake in the environment (exit 2)."""
    try:
        import models.inputs
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return models.inputs


def _text(value: str | None, option: str) -> str | None:
    """Text the server's rules allow. An argument whose bytes are not UTF-8 arrives as lone
    surrogates, which no request can carry: told as a mistake on the command line (exit 2),
    not as a traceback of the encoder."""
    if value is None or value.isascii():  # nothing the rules could refuse in a terminal's text
        return value
    try:
        return str(_input_rules().check_text(value))
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _whole(text: str) -> int:
    """A whole number, refused in words (argparse would say `invalid _whole value`)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _int32(text: str) -> int:
    """An id sent in a gRPC message, whose ids are int32: protobuf cannot encode a larger one
    (the server answers 0 and negative ids itself)."""
    value = _whole(text)
    if not -(2**31) <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{text} is out of range for an id (at most 2147483647)")
    return value


def _seconds(text: str) -> float:
    """A number of seconds JSON can carry: not nan, inf or an overflow such as 1e400."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds")
    return value


def _api_url() -> str:
    """REST_API_URL, checked here: a URL httpx cannot use was told as an unreachable server."""
    url = (os.environ.get("REST_API_URL") or DEFAULT_REST_API_URL).rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UsageError(f"REST_API_URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"REST_API_URL must start with http:// or https://, not {url!r}")
    return url


def _api_key() -> str | None:
    """WORKFLOW_API_KEY, checked here: a header or gRPC metadata cannot carry other characters
    (it was an encoder's traceback, or `API Error (INTERNAL): Invalid metadata`)."""
    key = os.environ.get("WORKFLOW_API_KEY")
    if key and not (key.isascii() and key.isprintable() and " " not in key):
        raise UsageError("WORKFLOW_API_KEY must be printable ASCII without spaces")
    return key or None


def _api_key_headers() -> dict[str, str]:
    """WORKFLOW_API_KEY, sent on every call when set."""
    key = _api_key()
    return {"authorization": f"Bearer {key}"} if key else {}


def _request(method: str, path: str, **kwargs: Any) -> Any:
    url = _api_url() + path
    try:
        response = httpx.request(
            method, url, timeout=REQUEST_TIMEOUT, headers=_api_key_headers(), **kwargs
        )
    except (httpx.ReadTimeout, httpx.WriteTimeout):  # it took the request, then nothing
        raise CliError(f"no answer from {url} within {REQUEST_TIMEOUT:g} s") from None
    except httpx.TransportError as exc:
        raise Unreachable(url, exc) from None
    except httpx.HTTPError as exc:  # an answer httpx could not read (e.g. a broken encoding)
        raise CliError(f"unreadable answer from {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        raise ApiError(response.status_code, detail)
    try:
        return response.json()
    except ValueError:  # not the API: REST_API_URL names some other server
        kind = response.headers.get("content-type") or "no content type"
        raise CliError(
            f"{url} answered HTTP {response.status_code} with something that is not JSON "
            f"({kind}); is REST_API_URL the workflow API?"
        ) from None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _logging(verbose: bool = False) -> None:
    """Human lines, or JSON ones with WORKFLOW_LOG_FORMAT=json (models/logs.py); `--verbose`
    shows SAQ's INFO lines (two per job)."""
    from models.logs import configure

    try:
        configure(verbose)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _metrics(host: str, port: int | None) -> None:
    """`--metrics-port`: this process's metrics on host:port (models/metrics.py)."""
    if port is None:
        return
    from models.metrics import serve

    try:
        serve(host, port)
    except OSError as exc:
        raise UsageError(f"--metrics-port {port}: {exc}") from None


def _tracing(service: str) -> None:
    """OpenTelemetry traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (models/tracing.py);
    `service` is the default `service.name`. Asked for without the otel extra, the server
    does not start: it would run without the traces its operator set it up to send."""
    from models import tracing

    try:
        tracing.configure(service)
    except (tracing.TracingUnavailable, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _tls(args: argparse.Namespace, grpc_side: bool) -> Any:
    """The server's TLS files from --tls-cert/--tls-key (and --tls-client-ca), or None."""
    from exec_service.server import ServerTls

    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    client_ca = getattr(args, "tls_client_ca", None) if grpc_side else None
    if client_ca is not None and args.tls_cert is None:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    for path in (args.tls_cert, args.tls_key, client_ca):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"no such file: {path}")
    if args.tls_cert is None:
        return None
    return ServerTls(args.tls_cert, args.tls_key, client_ca)


def _refuse_open_public_bind(host: str) -> None:
    """An open service (no key made, no WORKFLOW_ADMIN_KEY) listens on loopback only."""
    from models.settings import Settings
    from models.startup import open_service_on_public_address

    problem = asyncio.run(open_service_on_public_address(Settings.from_env(), host))
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        sys.exit(2)


def _serve(args: argparse.Namespace) -> None:
    """HTTP API, and with `serve` the execution service too, in one process."""
    import uvicorn

    from graphql_api.app import EmbeddedExecution, create_app
    from models.settings import Settings

    tls = _tls(args, grpc_side=args.command == "serve")
    _refuse_open_public_bind(args.host)
    _logging()
    _tracing(f"workflow-{args.command}")
    embedded = None
    if args.command == "serve":
        embedded = EmbeddedExecution(
            executor=args.executor, host=args.host, port=args.grpc_port, tls=tls
        )
    app = create_app(Settings.from_env(), embedded, host=args.host)
    from models.logs import uvicorn_log_config

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        log_config=uvicorn_log_config(),
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a server on uvloop where it is installed (uvicorn[standard] brings it, and uvicorn
    already runs `serve` and `api` on it). The execution service and the workers spend their
    time in socket round trips, which uvloop's C event loop and transports make cheaper; on the
    2-core machine the benchmarks ran on, the difference was within run-to-run variation."""
    import asyncio
    import gc

    # What is loaded by now (the modules, their classes and constants) lives as long as the
    # process: out of the collector's way, a full collection no longer walks it every time.
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _grpc(args: argparse.Namespace) -> None:
    from exec_service.standalone import run_execution_service
    from models.settings import Settings

    _refuse_open_public_bind(args.host)
    tls = _tls(args, True)
    _logging()
    _tracing("workflow-grpc")
    _metrics(args.host, args.metrics_port)
    executor = "saq" if args.use_saq else "ray" if args.use_ray else "asyncio"
    _run(run_execution_service(Settings.from_env(), executor, args.host, args.port, tls))


def _worker(args: argparse.Namespace) -> None:
    from models.settings import Settings

    settings = Settings.from_env()
    if not settings.redis_url:
        raise UsageError("workflow worker needs Redis: set REDIS_URL")
    try:
        from exec_service.worker import run_worker
    except ImportError as error:
        raise UsageError(
            f"workflow worker needs SAQ: pip install '{DISTRIBUTION}[saq]' ({error})"
        ) from None
    _logging(args.verbose)
    _tracing("workflow-worker")
    _metrics(args.metrics_host, args.metrics_port)
    _run(run_worker(settings.redis_url, settings.redis_prefix, args.concurrency))


def _grpc_target() -> str:
    return os.environ.get("GRPC_API_URL") or DEFAULT_GRPC_API_URL


def _grpc_call(call: Callable[[Any], Any]) -> Any:
    """Run `call(stub)` against the execution service; gRPC errors become ApiError, and
    UNAVAILABLE (nothing answers at GRPC_API_URL) Unreachable."""
    import grpc

    from protos import execution_pb2_grpc

    ca = os.environ.get("GRPC_TLS_CA")
    if ca:
        try:
            with open(ca, "rb") as pem:
                credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
        except OSError as exc:
            raise UsageError(f"GRPC_TLS_CA: {exc}") from None
        channel = grpc.secure_channel(_grpc_target(), credentials)
    else:
        channel = grpc.insecure_channel(_grpc_target())
    key = _api_key()
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with channel:
        try:
            return call(_WithMetadata(execution_pb2_grpc.WorkflowExecutionStub(channel), metadata))
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "UNKNOWN"
            detail = error.details() if hasattr(error, "details") else str(error)
            if code == "UNAVAILABLE":
                raise Unreachable(_grpc_target(), detail) from None
            raise ApiError(code, detail) from None


class _WithMetadata:
    """A stub whose every call carries the CLI's metadata (its API key)."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            return method(request, metadata=self._metadata, **kwargs)

        return call


def _keys(args: argparse.Namespace) -> None:
    """`workflow keys ...`: straight on the database named by DATABASE_URL (no server needed,
    so that the first key can be made before anything is exposed)."""
    from asyncpg import PostgresError
    from tortoise.exceptions import BaseORMException, ConfigurationError

    from models.db import redact_url
    from models.settings import Settings

    try:  # the settings, and the limits models.inputs reads as it is imported
        database_url = Settings.from_env().database_url
        from models.key_commands import run_key_command
    except ValueError as exc:  # a value in the environment that does not parse
        raise UsageError(str(exc)) from None
    try:
        asyncio.run(run_key_command(database_url, args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except ConfigurationError as exc:  # e.g. a scheme Tortoise does not know
        raise UsageError(f"DATABASE_URL: {exc}") from None
    except OSError as exc:  # refused, no such host: the password stays out of the message
        raise Unreachable(redact_url(database_url), exc) from None
    except (PostgresError, BaseORMException) as exc:  # e.g. a wrong password, no such database
        raise CliError(f"database {redact_url(database_url)}: {exc}") from None


def _graphql(query: str, **variables: Any) -> Any:
    """A GraphQL operation on the REST_API_URL server; its errors as API errors."""
    answer = _request("POST", "/graphql", json={"query": query, "variables": variables})
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if errors:
        code = (errors[0].get("extensions") or {}).get("code", "GRAPHQL")
        raise ApiError(code, errors[0].get("message"))
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise CliError(f"{_api_url()}/graphql answered without data; is REST_API_URL the API?")
    return data


def _deleted(args: argparse.Namespace, what: str, item_id: int) -> None:
    """What `trigger rm` and `schedule rm` print. With --json, the id is text, as GraphQL's
    ids are in `list`."""
    if args.json:
        _print_json({"id": str(item_id), "deleted": True})
    else:
        print(f"Deleted {what} {item_id}")


def _trigger(args: argparse.Namespace) -> None:
    if args.trigger_command == "add":
        made = _graphql(
            "mutation($w: ID!, $n: String!) { createTrigger(workflowId: $w, name: $n) "
            "{ id name path secret } }",
            w=str(args.workflow_id),
            n=args.name,
        )["createTrigger"]
        if args.json:
            _print_json(made)
            return
        print(f"Created trigger {made['id']} {made['name']!r}: POST {made['path']}")
        print("Sign deliveries with this secret; it is shown this once:")
        print(made["secret"])
    elif args.trigger_command == "list":
        variables = {"w": str(args.workflow_id)} if args.workflow_id else {}
        listed = _graphql(
            "query($w: ID) { triggers(workflowId: $w) { id workflowId name path createdAt } }",
            **variables,
        )["triggers"]
        _print_json(listed)
    else:
        _graphql("mutation($id: ID!) { deleteTrigger(id: $id) }", id=str(args.trigger_id))
        _deleted(args, "trigger", args.trigger_id)


_SCHEDULE_FIELDS = "id workflowId cron intervalSeconds timezone input enabled nextRunAt lastRunAt"


def _schedule(args: argparse.Namespace) -> None:
    if args.schedule_command == "add":
        schedule: dict[str, Any] = {"timezone": args.timezone}
        if args.cron is not None:
            schedule["cron"] = args.cron
        else:
            schedule["intervalSeconds"] = args.every
        if args.input is not None:
            schedule["input"] = _json_object(args.input, "--input")
        if args.disabled:
            schedule["enabled"] = False
        made = _graphql(
            "mutation($w: ID!, $s: ScheduleInput!) { createSchedule(workflowId: $w, input: $s) "
            f"{{ {_SCHEDULE_FIELDS} }} }}",
            w=str(args.workflow_id),
            s=schedule,
        )["createSchedule"]
        if args.json:  # as `schedule list` shows it
            _print_json(made)
            return
        next_run = made["nextRunAt"] or "never (disabled)"
        print(f"Created schedule {made['id']} of workflow {made['workflowId']}: next {next_run}")
    elif args.schedule_command == "list":
        variables = {"w": str(args.workflow_id)} if args.workflow_id else {}
        listed = _graphql(
            f"query($w: ID) {{ schedules(workflowId: $w) {{ {_SCHEDULE_FIELDS} }} }}",
            **variables,
        )["schedules"]
        _print_json(listed)
    else:
        _graphql("mutation($id: ID!) { deleteSchedule(id: $id) }", id=str(args.schedule_id))
        _deleted(args, "schedule", args.schedule_id)


def _execute(args: argparse.Namespace) -> None:
    from protos import execution_pb2

    input_json = ""
    if args.input is not None:
        input_json = json.dumps(_json_object(args.input, "--input"), ensure_ascii=False)
    request = execution_pb2.ExecuteWorkflowRequest(
        workflow_id=args.workflow_id, input_json=input_json
    )
    response = _grpc_call(lambda stub: stub.ExecuteWorkflow(request, timeout=REQUEST_TIMEOUT))
    if args.json:
        _print_json({"execution_id": response.execution_id, "status": response.status})
        return
    print(f"Execution started with ID: {response.execution_id}")
    print(f"Status: {response.status}")


def _retry(args: argparse.Namespace) -> None:
    from protos import execution_pb2

    request = execution_pb2.GetWorkflowStatusRequest(execution_id=args.execution_id)
    response = _grpc_call(lambda stub: stub.RetryExecution(request, timeout=REQUEST_TIMEOUT))
    if args.json:
        started = {"execution_id": response.execution_id, "status": response.status}
        _print_json(started | {"retry_of": args.execution_id})
        return
    print(f"Execution started with ID: {response.execution_id}")
    print(f"Status: {response.status}")
    print(f"Retry of: {args.execution_id}")


def _cancel(args: argparse.Namespace) -> None:
    from protos import execution_pb2

    request = execution_pb2.CancelExecutionRequest(execution_id=args.execution_id)
    response = _grpc_call(lambda stub: stub.CancelExecution(request, timeout=REQUEST_TIMEOUT))
    _show_status(args, response)


def _executions(args: argparse.Namespace) -> None:
    params = {"skip": args.skip, "limit": args.limit}
    _print_json(_request("GET", f"/workflows/{args.workflow_id}/executions", params=params))


def _status(args: argparse.Namespace) -> None:
    from protos import execution_pb2

    request = execution_pb2.GetWorkflowStatusRequest(execution_id=args.execution_id)
    response = _grpc_call(lambda stub: stub.GetWorkflowStatus(request, timeout=REQUEST_TIMEOUT))
    _show_status(args, response)


def _execution_json(response: Any) -> dict[str, Any]:
    """A WorkflowStatusResponse in the REST `Execution` shape (`GET /executions/{id}`)."""
    from graphql_api.exec_client import parse_status

    shown = parse_status(response)
    shown["output"] = json.loads(response.output_json) if response.output_json else {}
    return shown


def _show_status(args: argparse.Namespace, response: Any) -> None:
    if args.json:
        _print_json(_execution_json(response))
    else:
        _print_status(response)


def _print_status(response: Any) -> None:
    """The original service's lines, then one line per task (with its error, if any)."""
    print(f"Execution ID: {response.execution_id}")
    print(f"Workflow ID: {response.workflow_id}")
    print(f"Status: {response.status}")
    print(f"Started at: {response.started_at}")
    if response.completed_at:
        print(f"Completed at: {response.completed_at}")
    if response.error:
        print(f"Error: {response.error}")
    if response.tasks:
        print("Tasks:")
    for task in response.tasks:
        line = f"  [{task.order}] {task.name}: {task.status}, attempts {task.attempts}"
        print(line + (f": {task.error}" if task.error else ""))


def _progress_table(response: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"Execution {response.execution_id}: {response.status}")
    for column in ("order", "task", "status", "attempts", "error"):
        table.add_column(column)
    for task in response.tasks:
        table.add_row(str(task.order), task.name, task.status, str(task.attempts), task.error)
    return table


def _follow(stub: Any, execution_id: int, as_json: bool) -> str:
    """Show the execution's progress until it ends; return its final status."""
    from protos import execution_pb2

    stream = stub.WatchExecution(execution_pb2.GetWorkflowStatusRequest(execution_id=execution_id))
    final = ""
    if as_json:  # one object a line (JSON Lines), never Rich, even on a terminal
        for response in stream:
            print(json.dumps(_execution_json(response), ensure_ascii=False), flush=True)
            final = response.status
        return final

    from rich.console import Console
    from rich.live import Live

    console = Console()
    if console.is_terminal:
        with Live(console=console, auto_refresh=False) as live:
            for response in stream:
                live.update(_progress_table(response), refresh=True)
                final = response.status
    else:  # a pipe or a file: one line per change, for scripts and logs
        for response in stream:
            tasks = ", ".join(f"{task.name}={task.status}" for task in response.tasks)
            print(f"Status: {response.status}" + (f" | {tasks}" if tasks else ""), flush=True)
            final = response.status
    return final


def _watch(args: argparse.Namespace) -> None:
    final = _grpc_call(lambda stub: _follow(stub, args.execution_id, args.json))
    if final != "completed":
        sys.exit(1)


def _create(args: argparse.Namespace) -> None:
    body = {
        "name": _text(args.name, "NAME"),
        "description": _text(args.description, "--description"),
    }
    _print_json(_request("POST", "/workflows/", json=body))


def _list(args: argparse.Namespace) -> None:
    _print_json(_request("GET", "/workflows/", params={"skip": args.skip, "limit": args.limit}))


def _get(args: argparse.Namespace) -> None:
    _print_json(_request("GET", f"/workflows/{args.workflow_id}"))


def _add_task(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": _text(args.name, "NAME"),
        "description": _text(args.description, "--description"),
        "order": args.order,
        "execution_type": args.type,
        "parameters": _json_object(args.params, "--params"),
    }
    # Sent only when given, so that the server's defaults stay the defaults.
    for option, field in (
        ("action", "action"),
        ("max_attempts", "max_attempts"),
        ("timeout", "timeout_seconds"),
        ("when", "when"),
    ):
        value = getattr(args, option)
        if isinstance(value, str):
            value = _text(value, f"--{option.replace('_', '-')}")
        if value is not None:
            body[field] = value
    _print_json(_request("POST", f"/workflows/{args.workflow_id}/tasks/", json=body))


# `--json` of a command: absent unless given (SUPPRESS), so that it cannot reset the global
# `workflow --json` (argparse copies a subcommand's defaults over the main parser's values).
_JSON_HELP = "print JSON alone (errors go to stderr)"
_HOST_HELP = "address to listen on (default 127.0.0.1)"


def _client(
    commands: Any, name: str, help: str, handler: Callable[[argparse.Namespace], None]
) -> argparse.ArgumentParser:
    """A subcommand that talks to the API (or, `keys`, to the database): it takes --json."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="workflow", description="Workflow automation backend.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument(
        "--json", action="store_true", help="client commands print JSON alone (errors: stderr)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", help="what to do")

    serve = commands.add_parser(
        "serve", help="run everything in one process: HTTP API, execution service, executor"
    )
    serve.add_argument("--host", default="127.0.0.1", help=_HOST_HELP)
    serve.add_argument("--port", type=_whole, default=8000, help="HTTP port (default 8000)")
    serve.add_argument("--grpc-port", type=_whole, default=50051, help="gRPC port (default 50051)")
    serve.add_argument(
        "--executor", choices=EXECUTORS, default="asyncio", help="where tasks run (default asyncio)"
    )
    _tls_options(serve, grpc_side=True)
    serve.set_defaults(handler=_serve)

    api = commands.add_parser("api", help="run the HTTP API alone (GraphQL, REST, health)")
    api.add_argument("--host", default="127.0.0.1", help=_HOST_HELP)
    api.add_argument("--port", type=_whole, default=8000, help="HTTP port (default 8000)")
    _tls_options(api, grpc_side=False)
    api.set_defaults(handler=_serve)

    grpc_server = commands.add_parser("grpc", help="run the gRPC execution service alone")
    grpc_server.add_argument("--host", default="127.0.0.1", help=_HOST_HELP)
    grpc_server.add_argument("--port", type=_whole, default=50051, help="gRPC port (default 50051)")
    where = grpc_server.add_mutually_exclusive_group()
    where.add_argument(
        "--use-saq", "--use-rq", action="store_true", help="run tasks on SAQ workers (Redis)"
    )
    where.add_argument("--use-ray", action="store_true", help="run tasks on a Ray cluster")
    _tls_options(grpc_server, grpc_side=True)
    _metrics_option(grpc_server)
    grpc_server.set_defaults(handler=_grpc)

    worker = commands.add_parser("worker", help="run a SAQ worker (needs REDIS_URL)")
    worker.add_argument(
        "--concurrency",
        type=_whole,
        default=int(os.environ.get("WORKFLOW_WORKER_CONCURRENCY") or 10),
        help="tasks run at once by this worker (env WORKFLOW_WORKER_CONCURRENCY, default 10)",
    )
    worker.add_argument(
        "--verbose", action="store_true", help="log every job SAQ processes (SAQ's INFO lines)"
    )
    _metrics_option(worker)
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="address --metrics-port listens on"
    )
    worker.set_defaults(handler=_worker)

    create = _client(commands, "create", "create a workflow (admin)", _create)
    create.add_argument("name", help="the workflow's name")
    create.add_argument("--description", default=None, help="what the workflow is for")

    listing = _client(commands, "list", "list workflows by id (viewer)", _list)
    listing.add_argument("--skip", type=_whole, default=0, help="skip this many (default 0)")
    listing.add_argument(
        "--limit", type=_whole, default=5, help="show at most this many (default 5)"
    )

    get = _client(commands, "get", "show a workflow with its tasks (viewer)", _get)
    get.add_argument("workflow_id", type=_whole, help="the workflow's id")

    add_task = _client(commands, "add-task", "add a task to a workflow (admin)", _add_task)
    add_task.add_argument("workflow_id", type=_whole, help="the workflow's id")
    add_task.add_argument("name", help="the task's name (templates refer to it by it)")
    add_task.add_argument(
        "--order", type=_whole, required=True, help="tasks run in ascending order (then id)"
    )
    add_task.add_argument("--description", default=None, help="what the task does")
    add_task.add_argument(
        "--type",
        choices=["sync", "async"],
        default="sync",
        help="sync runs alone; consecutive async tasks run together (default sync)",
    )
    add_task.add_argument(
        "--params",
        default="{}",
        help="task parameters as a JSON object; strings may hold {{ templates }}",
    )
    add_task.add_argument("--action", default=None, help="the action to run (default noop)")
    add_task.add_argument(
        "--max-attempts", type=_whole, default=None, help="attempts before it fails (default 1)"
    )
    add_task.add_argument("--timeout", type=_seconds, default=None, help="seconds per attempt")
    add_task.add_argument(
        "--when",
        default=None,
        help="run only if this expression holds, e.g. 'tasks.check.output.status_code == 200'",
    )

    execute = _client(commands, "execute", "start an execution of a workflow (operator)", _execute)
    execute.add_argument("workflow_id", type=_int32, help="the workflow's id")
    execute.add_argument(
        "--input", default=None, help="the execution's input, a JSON object (templates: input)"
    )

    retry = _client(
        commands,
        "retry",
        "rerun a failed or cancelled execution from where it stopped (operator)",
        _retry,
    )
    retry.add_argument("execution_id", type=_int32, help="the execution's id")

    cancel = _client(
        commands, "cancel", "stop an execution and mark it cancelled (operator)", _cancel
    )
    cancel.add_argument("execution_id", type=_int32, help="the execution's id")

    executions = _client(
        commands, "executions", "list a workflow's executions, newest first (viewer)", _executions
    )
    executions.add_argument("workflow_id", type=_whole, help="the workflow's id")
    executions.add_argument("--skip", type=_whole, default=0, help="skip this many (default 0)")
    executions.add_argument(
        "--limit", type=_whole, default=20, help="show at most this many (default 20)"
    )

    status = _client(commands, "status", "show an execution and its tasks (viewer)", _status)
    status.add_argument("execution_id", type=_int32, help="the execution's id")

    watch = _client(
        commands, "watch", "follow an execution live; exit 0 only if it completed (viewer)", _watch
    )
    watch.add_argument("execution_id", type=_int32, help="the execution's id")

    keys = commands.add_parser(
        "keys", help="make, list and revoke API keys (on the database: DATABASE_URL)"
    )
    key_commands = keys.add_subparsers(
        dest="key_command", metavar="KEY_COMMAND", required=True, help="what to do with keys"
    )
    key_create = _client(
        key_commands,
        "create",
        "make a key; prints it alone on the last line (shown this once)",
        _keys,
    )
    key_create.add_argument("name", help="what executions it starts record as triggered_by")
    key_create.add_argument(
        "--role", choices=["viewer", "operator", "admin"], required=True, help="what it may do"
    )
    _client(key_commands, "list", "list the keys (never their secrets)", _keys)
    key_revoke = _client(key_commands, "revoke", "revoke a key (every process: 5 s)", _keys)
    key_revoke.add_argument("key_id", type=_whole, help="the key's id (see keys list)")

    trigger = commands.add_parser("trigger", help="webhook triggers of workflows (admin)")
    trigger_commands = trigger.add_subparsers(
        dest="trigger_command", metavar="TRIGGER_COMMAND", required=True, help="what to do"
    )
    trigger_add = _client(
        trigger_commands,
        "add",
        "make a trigger; prints its path and its secret (shown this once)",
        _trigger,
    )
    trigger_add.add_argument("workflow_id", type=_whole, help="the workflow it starts")
    trigger_add.add_argument("name", help="what the trigger is for, e.g. github-push")
    trigger_list = _client(
        trigger_commands, "list", "list triggers (never their secrets)", _trigger
    )
    trigger_list.add_argument("workflow_id", type=_whole, nargs="?", help="of this workflow only")
    trigger_rm = _client(trigger_commands, "rm", "delete a trigger", _trigger)
    trigger_rm.add_argument("trigger_id", type=_whole, help="the trigger's id")

    schedule = commands.add_parser(
        "schedule", help="schedules of workflows (list: viewer; add, rm: admin)"
    )
    schedule_commands = schedule.add_subparsers(
        dest="schedule_command", metavar="SCHEDULE_COMMAND", required=True, help="what to do"
    )
    schedule_add = _client(
        schedule_commands,
        "add",
        "start a workflow on a cron schedule or every N seconds (admin)",
        _schedule,
    )
    schedule_add.add_argument("workflow_id", type=_int32, help="the workflow it starts")
    timing = schedule_add.add_mutually_exclusive_group(required=True)
    timing.add_argument(
        "--cron", help="five fields: minute hour day-of-month month day-of-week, e.g. '0 9 * * 1'"
    )
    timing.add_argument("--every", type=_int32, metavar="SECONDS", help="a tick every N seconds")
    schedule_add.add_argument(
        "--timezone", default="UTC", help="IANA zone the cron fields are in (default UTC)"
    )
    schedule_add.add_argument("--input", help="each execution's input, a JSON object")
    schedule_add.add_argument(
        "--disabled", action="store_true", help="make it disabled (no ticks until enabled)"
    )
    schedule_list = _client(schedule_commands, "list", "list schedules as JSON (viewer)", _schedule)
    schedule_list.add_argument("workflow_id", type=_int32, nargs="?", help="of this workflow only")
    schedule_rm = _client(schedule_commands, "rm", "delete a schedule (admin)", _schedule)
    schedule_rm.add_argument("schedule_id", type=_int32, help="the schedule's id")
    return parser


def _metrics_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve this process's Prometheus metrics on this port (/metrics; no key asked)",
    )


def _tls_options(parser: argparse.ArgumentParser, grpc_side: bool) -> None:
    parser.add_argument("--tls-cert", default=None, help="serve over TLS: certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="serve over TLS: private key (PEM)")
    if grpc_side:
        parser.add_argument(
            "--tls-client-ca",
            default=None,
            help="gRPC: accept only clients with a certificate signed by this CA (mutual TLS)",
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return
    try:
        args.handler(args)
    except CliError as exc:
        # On stdout, as the original CLI printed it: scripts parse it there. With --json,
        # stdout holds JSON alone, and errors go to stderr.
        print(f"Error: {exc}", file=sys.stderr if args.json else sys.stdout)
        sys.exit(exc.exit_status)


if __name__ == "__main__":
    main()
