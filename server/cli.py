"""The ``segengine`` command line: one handler function per subcommand, listed in ``COMMANDS``.

To add a subcommand, write ``def run_<name>(args) -> int`` and add a ``Command`` to ``COMMANDS``
with its help text and arguments (each an ``Arg`` holding ``add_argument`` parameters).

Errors are one line on stderr, never a traceback: exit status 2 for bad arguments, 1 for work
that failed (``cli_support.CliError``, engine and server errors, files that cannot be read); a
closed stdout (``segengine query ... | head``) ends quietly with status 1. Set SEGENGINE_DEBUG=1
to see the traceback of an unexpected error.

>>> main(["generate", "--profiles", "10", "--events", "50", "--out", __import__("tempfile").mkdtemp()])  # doctest: +ELLIPSIS
generated 10 profiles and 50 events in ... s (wrote ... in ... s) -> ...
0
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import (analytics_commands, commands, destination_commands, export_commands, history_commands, identity_commands,
               info_commands, lookalike_command)
from .cli_support import CliError, check_utf8, count, existing_file, positive, read_schema


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
    """Load profile and event files (JSONL or CSV) into a server, a data dir, or a throwaway engine.

    Exit status 0 when every line was applied, 1 when some were rejected.
    """
    from engine import Engine

    if not args.profiles and not args.events:
        raise CliError("give --profiles and/or --events", status=2)
    if args.server:
        if args.schema or args.data_dir:
            raise CliError("--server loads with the server's schema: drop --schema and --data-dir", status=2)
        return commands.run_load_remote(args)
    if not args.schema:
        raise CliError("give --schema (or --server to load into a running server)", status=2)
    schema = read_schema(args.schema)
    engine = Engine(schema, shards=args.shards, data_dir=args.data_dir)
    try:
        status = load_files(engine, args)
        print(f"profiles in the engine: {engine.count('ALL')}")
    finally:
        engine.close()
    if not args.data_dir:
        print("checked only: nothing was kept (load into a server with --server, or a data dir with --data-dir)",
              file=sys.stderr)
    return status


def load_files(engine: object, args: argparse.Namespace) -> int:
    """Load ``args.profiles`` then ``args.events`` into ``engine``, printing each file's report; the status."""
    from loaders.files import load_file

    status = 0
    for kind in ("profiles", "events"):
        path = getattr(args, kind)
        if not path:
            continue
        started = time.perf_counter()
        report = load_file(kind, engine, path, batch_size=args.batch_size, progress=not args.quiet,  # type: ignore[arg-type]
                           strict_timestamps=args.strict_timestamps)
        print(f"{kind} {path} ({time.perf_counter() - started:.2f} s): {report.summary(args.max_errors)}")
        status = status or (0 if report.ok else 1)
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
            arg("--profiles", type=positive, required=True, help="number of profiles"),
            arg("--events", type=count, required=True, help="number of events (exact)"),
            arg("--out", required=True, help="output directory"),
            arg("--seed", type=int, default=0, help="random seed (default 0)"),
            arg("--now-ms", type=count, default=None, help="the dataset's clock in epoch ms (default: now)"),
            arg("--ts-format", choices=("iso", "ms"), default="iso", help="timestamps as ISO 8601 text or epoch ms"),
        ),
    ),
    "load": Command(
        run_load,
        "load profile/event files into a server (--server), a data dir (--data-dir), or only check them "
        "(--schema alone); report bad lines",
        (
            arg("--schema", help="schema JSON file (not with --server: the server's schema is used)"),
            arg("--profiles", type=existing_file, help="profiles file: .jsonl or .csv"),
            arg("--events", type=existing_file, help="events file: .jsonl or .csv"),
            arg("--data-dir", default=None, help="durable data directory to load into (then: serve --data-dir)"),
            arg("--shards", type=positive, default=1, help="engine shards (default 1; a data dir keeps its count)"),
            arg("--batch-size", type=positive, default=10_000, help="records per engine call"),
            arg("--max-errors", type=count, default=20, help="errors to print per file (default 20)"),
            arg("--strict-timestamps", action="store_true",
                help="refuse event times before 1973-03-03 (epoch ms below 1e11: epoch seconds?) instead of warning"),
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
    "update-schema": Command(commands.run_update_schema,
                             "extend a server's schema: add attributes, event types, properties, consents, retention",
                             commands.update_schema_args()),
    **info_commands.commands(),
    **identity_commands.commands(),
    **history_commands.commands(),
    **export_commands.commands(),
    **analytics_commands.commands(),
    **destination_commands.commands(),
    **lookalike_command.commands(),
    "migrate": Command(
        run_migrate,
        "convert a data directory's snapshot to format 4 (once, with no engine running on the directory)",
        (arg("data_dir", metavar="DIR", help="the data directory"),),
    ),
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``segengine CMD: error: ... (see --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands: dict[str, Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser with one subparser per command."""
    parser = Parser(prog="segengine", description="segengine: in-memory customer segmentation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        for spec in command.args:
            sub.add_argument(*spec.flags, **spec.options)
        sub.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr, see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = " ".join(["segengine", *[a for a in argv[:1] if a in COMMANDS]])
    try:
        check_utf8(argv)
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, or a usage error already printed
            return done.code if isinstance(done.code, int) else 2
        return args.handler(args)
    except BrokenPipeError:
        return _closed_stdout()
    except KeyboardInterrupt:
        return 130
    except CliError as error:
        return _error(prog, str(error), error.status)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        return _error(prog, f"{error.strerror or error}{where}", 1)
    except Exception as error:  # noqa: BLE001 - engine and server errors, and bugs: one line each
        from engine.errors import SegengineError

        if os.environ.get("SEGENGINE_DEBUG"):
            raise
        if isinstance(error, SegengineError):
            return _error(prog, str(error), 1)
        return _error(prog, f"internal error: {type(error).__name__}: {error} (SEGENGINE_DEBUG=1 shows the traceback)", 1)


def _error(prog: str, message: str, status: int) -> int:
    """Print ``message`` as one line on stderr; returns ``status``."""
    try:
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    except (BrokenPipeError, ValueError):
        pass
    return status


def _closed_stdout() -> int:
    """Stdout was closed by the reader (``| head``): end quietly (no flush error at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


if __name__ == "__main__":
    sys.exit(main())
