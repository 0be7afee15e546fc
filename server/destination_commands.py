"""``segengine destination``: the webhooks of a server's saved segments (adding and removing need the
admin token when the server has one).

    segengine destination add SEGMENT URL --secret-file FILE [--name NAME] [--batch-size N] ...
    segengine destination list [--json]     # name, segment, state, pending, delivered, failures, url
    segengine destination remove NAME
"""
from __future__ import annotations

import argparse
import json
import sys

from engine.errors import SegengineError

from .commands import _fail, client_args, connect

ACTIONS = ("add", "list", "remove")
ARGUMENTS = {"add": 2, "list": 0, "remove": 1}
OPTIONS = ("batch_size", "timeout_s", "retry_base_s", "retry_max_s", "max_pending")


def _usage(message: str) -> int:
    print(f"segengine destination: error: {message} (see segengine destination --help)", file=sys.stderr)
    return 2


def read_secret(path: str) -> str:
    """The secret in ``path`` (its first line, without the line end)."""
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\r\n")


def run_destination(args: argparse.Namespace) -> int:
    """add SEGMENT URL --secret-file F | list | remove NAME."""
    wanted = ARGUMENTS[args.action]
    if len(args.params) != wanted:
        return _usage(f"{args.action} takes {wanted} argument(s), got {len(args.params)}")
    secret = ""
    if args.action == "add":
        if not args.secret_file:
            return _usage("add needs --secret-file FILE (the HMAC key, first line of the file)")
        try:
            secret = read_secret(args.secret_file)
        except OSError as error:
            return _usage(f"cannot read the secret file: {error.strerror}: {args.secret_file}")
        if not secret:
            return _usage(f"the secret file {args.secret_file} is empty")
    try:
        with connect(args) as client:
            if args.action == "add":
                options = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
                info = client.add_destination(args.params[0], args.params[1], secret, args.name, **options)
                print(json.dumps(info, indent=2, sort_keys=True))
            elif args.action == "remove":
                client.remove_destination(args.params[0])
                print(f"removed {args.params[0]}")
            else:
                infos = client.list_destinations()
                if args.json:
                    print(json.dumps(infos, indent=2, sort_keys=True))
                for info in [] if args.json else infos:
                    print("\t".join(str(info[k]) for k in ("name", "segment", "state", "pending", "delivered",
                                                           "failures", "url")))
    except SegengineError as error:
        return _fail(error)
    return 0


def commands() -> dict:
    """This subcommand by name (``server.cli`` adds it to its table)."""
    from .cli import Command, arg
    from .cli_support import positive, seconds

    return {
        "destination": Command(
            run_destination,
            "webhooks of a server's saved segments: add SEGMENT URL --secret-file F | list | remove NAME",
            (arg("action", choices=ACTIONS, help="what to do"),
             arg("params", nargs="*", help="add: SEGMENT URL; remove: NAME"),
             arg("--secret-file", default=None, help="add: a file whose first line is the HMAC-SHA256 secret"),
             arg("--name", default=None, help="add: the destination's name (default: the segment's)"),
             arg("--batch-size", dest="batch_size", type=positive, default=None,
                 help="add: changes per request (default 1000)"),
             arg("--timeout-s", dest="timeout_s", type=seconds, default=None,
                 help="add: request timeout in seconds (default 10)"),
             arg("--retry-base-s", dest="retry_base_s", type=seconds, default=None,
                 help="add: first retry's maximum wait in seconds (default 0.5; doubles per failure)"),
             arg("--retry-max-s", dest="retry_max_s", type=seconds, default=None,
                 help="add: the longest wait between retries in seconds (default 60)"),
             arg("--max-pending", dest="max_pending", type=positive, default=None,
                 help="add: changes held before the outbox is rebuilt from the members (default 1000000)"),
             arg("--json", action="store_true", help="list: the full state as JSON"),
             *client_args())),
    }
