"""The ``segengine`` command line: one handler function per subcommand, listed in ``COMMANDS``.

To add a subcommand, write ``def run_<name>(args) -> int`` and add a ``Command`` to ``COMMANDS``
with its help text and arguments (each an ``Arg`` holding ``add_argument`` parameters).

>>> main(["generate", "--profiles", "10", "--events", "50", "--out", __import__("tempfile").mkdtemp()])  # doctest: +ELLIPSIS
generated 10 profiles and 50 events in ... s (wrote ... in ... s) -> ...
0
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import commands


@dataclass(frozen=True)
class Arg:
    """The parameters of one ``ArgumentParser.add_argument`` call."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    """Shorthand for ``Arg(flags, options)``."""
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: its handler (``args -> exit status``), help text and arguments."""

    run: Callable[[argparse.Namespace], int]
    help: str
    args: tuple[Arg, ...] = ()


def run_generate(args: argparse.Namespace) -> int:
    """Generate a synthetic dataset and write it as schema.json, profiles.jsonl and events.jsonl."""
    from loaders.generator import generate
    from loaders.writer import write_dataset

    started = time.perf_counter()
    ds = generate(args.profiles, args.events, seed=args.seed, now_ms=args.now_ms)
    generated = time.perf_counter()
    paths = write_dataset(ds, args.out, ts_format=args.ts_format)
    written = time.perf_counter()
    size = sum(path.stat().st_size for path in paths.values())
    print(
        f"generated {len(ds.profiles)} profiles and {sum(len(b) for b in ds.events)} events "
        f"in {generated - started:.2f} s (wrote {size / 1e6:.1f} MB in {written - generated:.2f} s) "
        f"-> {Path(args.out)} (now_ms={ds.now_ms})"
    )
    return 0


def run_load(args: argparse.Namespace) -> int:
    """Load profile (JSONL or CSV) and event (JSONL) files into an in-process engine; report errors.

    Exit status 0 when every line was applied, 1 when some were rejected.
    """
    from engine import Engine
    from engine.schema import Schema
    from loaders.csv_profiles import load_profiles_csv
    from loaders.jsonl import load_events_jsonl, load_profiles_jsonl

    if not args.profiles and not args.events:
        print("load: give --profiles and/or --events", file=sys.stderr)
        return 2
    if args.server:
        return commands.run_load_remote(args)
    if not args.schema:
        print("load: give --schema (or --server to load into a running server)", file=sys.stderr)
        return 2
    schema = Schema.from_file(args.schema)
    status = 0
    engine = Engine(schema, shards=args.shards)
    try:
        steps = []
        if args.profiles:
            loader = load_profiles_csv if Path(args.profiles).suffix.lower() == ".csv" else load_profiles_jsonl
            steps.append(("profiles", args.profiles, loader))
        if args.events:
            steps.append(("events", args.events, load_events_jsonl))
        for label, path, loader in steps:
            started = time.perf_counter()
            report = loader(engine, path, batch_size=args.batch_size, progress=not args.quiet)
            print(f"{label} {path} ({time.perf_counter() - started:.2f} s): {report.summary(args.max_errors)}")
            status = status or (0 if report.ok else 1)
        print(f"profiles in the engine: {engine.count('ALL')}")
    finally:
        engine.close()
    return status


def run_migrate(args: argparse.Namespace) -> int:
    """Convert a data directory's snapshot from a pickle format (1 or 3) to format 4, in place.

    Exit status 0 when the directory now opens (converted, or nothing to convert), 1 when refused.
    """
    from engine.errors import SegengineError
    from engine.persist.migrate import migrate

    try:
        migrate(args.data_dir, say=print)
    except SegengineError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    return 0


COMMANDS: dict[str, Command] = {
    "generate": Command(
        run_generate,
        "generate a synthetic e-commerce dataset (schema.json, profiles.jsonl, events.jsonl)",
        (
            arg("--profiles", type=int, required=True, help="number of profiles"),
            arg("--events", type=int, required=True, help="number of events (exact)"),
            arg("--out", required=True, help="output directory"),
            arg("--seed", type=int, default=0, help="random seed (default 0)"),
            arg("--now-ms", type=int, default=None, help="the dataset's clock in epoch ms (default: now)"),
            arg("--ts-format", choices=("iso", "ms"), default="iso", help="timestamps as ISO 8601 text or epoch ms"),
        ),
    ),
    "load": Command(
        run_load,
        "load profile/event files into an in-process engine (or a server: --server) and report bad lines",
        (
            arg("--schema", help="schema JSON file (not with --server: the server's schema is used)"),
            arg("--profiles", help="profiles file: .jsonl or .csv"),
            arg("--events", help="events file: .jsonl"),
            arg("--shards", type=int, default=1, help="engine shards (default 1)"),
            arg("--batch-size", type=int, default=10_000, help="records per engine call"),
            arg("--max-errors", type=int, default=20, help="errors to print per file"),
            arg("--quiet", action="store_true", help="no progress bar"),
            *commands.client_args(server_default=None),
        ),
    ),
    "serve": Command(commands.run_serve, "serve the gRPC API (--demo N: generate and load a demo dataset first)",
                     commands.serve_args()),
    "query": Command(commands.run_query, "run a segment query on a server (ids, --count or --explain)",
                     commands.query_args()),
    "segments": Command(commands.run_segments,
                        "saved segments on a server: list | get NAME | create NAME QUERY | delete NAME | "
                        "membership ID | watch [NAME...]", commands.segments_args()),
    "snapshot": Command(commands.run_snapshot, "ask a server to write a snapshot now", commands.client_args()),
    "migrate": Command(
        run_migrate,
        "convert a data directory's snapshot to format 4 (once, with no engine running on the directory)",
        (arg("data_dir", metavar="DIR", help="the data directory"),),
    ),
}


def build_parser(commands: dict[str, Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="segengine", description="segengine: in-memory customer segmentation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        for spec in command.args:
            sub.add_argument(*spec.flags, **spec.options)
        sub.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
