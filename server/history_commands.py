"""``segengine history NAME``: a saved segment's size over time, from a server.

Registered in ``server.cli.COMMANDS`` through :func:`commands`.
"""
from __future__ import annotations

import argparse
import json

from engine.timeparse import format_ts

from .cli_support import clock
from .commands import client_args, connect


def run_history(args: argparse.Namespace) -> int:
    """Print the segment's size history: one line per point, its time (ISO 8601) and the size; or JSON."""
    with connect(args) as client:
        points = client.segment_history(args.name, args.since, args.until)
    if args.json:
        print(json.dumps([[t, size] for t, size in points]))
    else:
        for t, size in points:
            print(f"{format_ts(t)}\t{size}")
    return 0


def commands() -> dict:
    """This subcommand by name (``server.cli`` adds it to its table)."""
    from .cli import Command, arg

    return {
        "history": Command(run_history, "print a saved segment's size over time (a point when it changed)", (
            arg("name", help="saved segment name"),
            arg("--since", type=clock, default=None, help="only points at or after this time (ISO 8601 or epoch ms)"),
            arg("--until", type=clock, default=None, help="only points at or before this time (ISO 8601 or epoch ms)"),
            arg("--json", action="store_true", help="print [[time ms, size], ...] instead of lines"),
            *client_args())),
    }
