"""``segengine`` subcommands that read a server's state: stats, schema, profile ID, health.

Registered in ``server.cli.COMMANDS`` through :func:`commands`; they share the connection
arguments of :func:`server.commands.client_args`.
"""
from __future__ import annotations

import argparse
import json
import time

from engine.errors import SegengineError

from .cli_support import CliError, say_line, seconds
from .commands import client_args, connect


def run_stats(args: argparse.Namespace) -> int:
    """Print the server's statistics as JSON."""
    with connect(args) as client:
        print(json.dumps(client.stats(), indent=2, sort_keys=True))
    return 0


def run_schema(args: argparse.Namespace) -> int:
    """Print the server's schema as JSON (the format ``--schema`` files use)."""
    with connect(args) as client:
        print(json.dumps(client.schema.to_dict(), indent=2, sort_keys=True))
    return 0


def run_profile(args: argparse.Namespace) -> int:
    """Print one profile's current record as JSON (exit status 1 if it is unknown)."""
    with connect(args) as client:
        print(json.dumps(client.profile(args.id), indent=2, sort_keys=True, default=str))
    return 0


def run_health(args: argparse.Namespace) -> int:
    """Print the server's health (SERVING...); status 0 only when SERVING. ``--wait S`` retries for S seconds."""
    deadline = time.monotonic() + args.wait
    while True:
        try:
            with connect(args) as client:
                status = client.health(args.service)
        except SegengineError as error:
            if time.monotonic() >= deadline:
                raise CliError(f"{args.server}: {error}") from None
            status = None
        if status == "SERVING" or (status is not None and time.monotonic() >= deadline):
            say_line(status)
            return 0 if status == "SERVING" else 1
        time.sleep(0.2)


def commands() -> dict:
    """These subcommands by name (``server.cli`` adds them to its table)."""
    from .cli import Command, arg

    return {
        "stats": Command(run_stats, "print a server's statistics (profiles, events per type, shards, segments)",
                         client_args()),
        "schema": Command(run_schema, "print a server's schema as JSON", client_args()),
        "profile": Command(run_profile, "print one profile of a server (attributes, consents) as JSON",
                           (arg("id", help="profile id"), *client_args())),
        "health": Command(run_health, "print a server's health (SERVING, NOT_SERVING); exit status 0 when SERVING",
                          (arg("--wait", type=seconds, default=0.0,
                               help="keep trying for this many seconds until it is SERVING (default 0)"),
                           arg("--service", default="", help="health service name (default: the server)"),
                           *client_args())),
    }
