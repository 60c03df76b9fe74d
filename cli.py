"""The `workflow` command: servers to start, and the REST client of the service we replace.

`python cli.py ...` from the checkout is the same as `workflow ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx

DEFAULT_REST_API_URL = "http://localhost:8000"
# Seconds the CLI waits for the API before it gives up.
REQUEST_TIMEOUT = 30.0


class ApiError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"API Error ({status}): {detail}")


def _api_url() -> str:
    return (os.environ.get("REST_API_URL") or DEFAULT_REST_API_URL).rstrip("/")


def _request(method: str, path: str, **kwargs: Any) -> Any:
    url = _api_url() + path
    try:
        response = httpx.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiError(0, f"cannot reach {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        raise ApiError(response.status_code, detail)
    return response.json()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _serve_http(args: argparse.Namespace) -> None:
    import uvicorn

    from graphql_api.app import create_app
    from models.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(Settings.from_env()), host=args.host, port=args.port, log_level="info")


def _create(args: argparse.Namespace) -> None:
    body = {"name": args.name, "description": args.description}
    _print_json(_request("POST", "/workflows/", json=body))


def _list(args: argparse.Namespace) -> None:
    _print_json(_request("GET", "/workflows/", params={"skip": args.skip, "limit": args.limit}))


def _get(args: argparse.Namespace) -> None:
    _print_json(_request("GET", f"/workflows/{args.workflow_id}"))


def _add_task(args: argparse.Namespace) -> None:
    try:
        parameters = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise ApiError(0, f"--params is not valid JSON: {exc}") from None
    body = {
        "name": args.name,
        "description": args.description,
        "order": args.order,
        "execution_type": args.type,
        "parameters": parameters,
    }
    _print_json(_request("POST", f"/workflows/{args.workflow_id}/tasks/", json=body))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workflow", description="Workflow automation backend.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, help_text in (
        ("serve", "run the HTTP API (GraphQL, REST, GraphiQL, health) in one process"),
        ("api", "run the HTTP API alone"),
    ):
        server = commands.add_parser(name, help=help_text)
        server.add_argument("--host", default="127.0.0.1")
        server.add_argument("--port", type=int, default=8000)
        server.set_defaults(handler=_serve_http)

    create = commands.add_parser("create", help="create a workflow")
    create.add_argument("name")
    create.add_argument("--description", default=None)
    create.set_defaults(handler=_create)

    listing = commands.add_parser("list", help="list workflows")
    listing.add_argument("--skip", type=int, default=0)
    listing.add_argument("--limit", type=int, default=5)
    listing.set_defaults(handler=_list)

    get = commands.add_parser("get", help="show a workflow with its tasks")
    get.add_argument("workflow_id", type=int)
    get.set_defaults(handler=_get)

    add_task = commands.add_parser("add-task", help="add a task to a workflow")
    add_task.add_argument("workflow_id", type=int)
    add_task.add_argument("name")
    add_task.add_argument("--order", type=int, required=True)
    add_task.add_argument("--description", default=None)
    add_task.add_argument("--type", choices=["sync", "async"], default="sync")
    add_task.add_argument("--params", default="{}", help="task parameters as a JSON object")
    add_task.set_defaults(handler=_add_task)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return
    try:
        args.handler(args)
    except ApiError as exc:
        # On stdout, as the original CLI printed it: scripts parse it there.
        print(f"Error: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
