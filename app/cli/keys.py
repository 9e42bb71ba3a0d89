"""``keys create|revoke|list``: API keys, in the same database as ``serve``."""

from __future__ import annotations

import argparse
from typing import Any

from app.auth import service as auth
from app.cli.common import open_database
from app.config import add_database_arguments


def _create(ns: argparse.Namespace) -> int:
    with open_database(ns) as engine, engine.begin() as conn:
        info, key = auth.create_key(conn, scope=ns.scope, org=ns.org, name=ns.name)
    confined = f" confined to org {info.org}" if info.org else " for every org"
    print(f"created {info.scope} key {info.key_id}{confined}; it is shown only once:")
    print(key)
    return 0


def _revoke(ns: argparse.Namespace) -> int:
    with open_database(ns) as engine, engine.begin() as conn:
        auth.revoke_key(conn, key_id=ns.key_id)
    print(f"revoked {ns.key_id}")
    return 0


def _list(ns: argparse.Namespace) -> int:
    with open_database(ns) as engine, engine.connect() as conn:
        keys = auth.list_keys(conn)
    for key in keys:
        state = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "active"
        print(f"{key.key_id}\t{key.scope}\t{key.org or '*'}\t{state}\t{key.name}")
    return 0


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("keys", help="Create, revoke and list API keys.")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="Create a key (printed alone on the last line).")
    add_database_arguments(create)
    create.add_argument("--scope", required=True, choices=auth.SCOPES)
    create.add_argument("--org", default=None, help="Confine the key to this org.")
    create.add_argument("--name", default="", help="A label for people.")
    create.set_defaults(func=_create)

    revoke = actions.add_parser("revoke", help="Revoke a key by its id.")
    add_database_arguments(revoke)
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_revoke)

    listing = actions.add_parser("list", help="List keys (never their secrets).")
    add_database_arguments(listing)
    listing.set_defaults(func=_list)
