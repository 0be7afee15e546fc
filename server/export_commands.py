"""``segengine export-members``: a saved segment's (or a query's) members with chosen attributes to a
CSV, JSON Lines or Parquet file, streamed from a server.

Registered in ``server.cli.COMMANDS`` through :func:`commands`.
"""
from __future__ import annotations

import argparse
import sys

from engine.export_formats import FORMATS

from .cli_support import CliError, clock
from .commands import client_args, connect

SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def export_format(args: argparse.Namespace) -> str:
    """``--format``, else the one the output file's suffix names, else CSV."""
    if args.format:
        return args.format
    for suffix, name in SUFFIXES.items():
        if args.out and args.out.lower().endswith(suffix):
            return name
    return "csv"


def run_export_members(args: argparse.Namespace) -> int:
    """Stream the export into ``--out`` (or stdout); report the member count on stderr."""
    if (args.segment is None) == (args.query is None):
        raise CliError("name a saved segment or give --query (one of them)", status=2)
    attributes = [name.strip() for name in args.attributes.split(",") if name.strip()] if args.attributes else []
    fmt = export_format(args)
    with connect(args) as client:
        if args.out and args.out != "-":
            rows = client.export_members(args.out, attributes, fmt, args.segment, args.query, args.now)
        else:
            rows = client.export_members(sys.stdout.buffer, attributes, fmt, args.segment, args.query, args.now)
            sys.stdout.buffer.flush()
    print(f"exported {rows} members", file=sys.stderr)
    return 0


def commands() -> dict:
    """This subcommand by name (``server.cli`` adds it to its table)."""
    from .cli import Command, arg

    return {
        "export-members": Command(
            run_export_members,
            "export a saved segment's (or a query's) members with chosen attributes to CSV, JSON Lines or Parquet",
            (arg("segment", nargs="?", default=None, metavar="SEGMENT", help="saved segment name"),
             arg("--query", default=None, help="export the members of this query instead of a saved segment"),
             arg("--now", type=clock, default=None, help="the query's clock (ISO 8601 or epoch ms; default now)"),
             arg("--attributes", default="", help="comma-separated attribute names (columns after id)"),
             arg("--format", choices=FORMATS, default=None,
                 help="file format (default: from the --out suffix, else csv; parquet needs pyarrow)"),
             arg("--out", default=None, help="output file (default: standard output)"),
             *client_args())),
    }
