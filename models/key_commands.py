"""`workflow keys create|list|revoke`, run on the database itself."""

from __future__ import annotations

import argparse
import json

from models import api_keys
from models.access import Role
from models.db import start_database, stop_database
from models.errors import WorkflowError


async def run_key_command(database_url: str, args: argparse.Namespace) -> None:
    """Raises ValueError with what went wrong (printed as the CLI's error). With `--json`,
    each prints one JSON value alone."""
    as_json = getattr(args, "json", False)
    await start_database(database_url)
    try:
        if args.key_command == "create":
            row, secret = await api_keys.create_key(args.name, Role.parse(args.role))
            if as_json:
                print(json.dumps(row | {"key": secret}, indent=2))
                return
            print(f"Created API key {row['id']} {row['name']!r} ({row['role']}).")
            print("This is the only time the key is shown; keep it now:")
            print(secret)
        elif args.key_command == "list":
            print(json.dumps(await api_keys.list_keys(), indent=2))
        elif args.key_command == "revoke":
            await api_keys.revoke_key(args.key_id)
            if as_json:
                print(json.dumps({"id": args.key_id, "revoked": True}, indent=2))
                return
            print(f"Revoked API key {args.key_id}; every process refuses it within 5 s.")
    except WorkflowError as exc:
        raise ValueError(exc.message) from None
    finally:
        await stop_database()
