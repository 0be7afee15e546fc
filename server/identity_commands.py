"""``segengine`` identity and privacy subcommands (a server's admin token): merge, erase, export.

    segengine merge FROM INTO            # FROM becomes an alias of INTO
    segengine merge --file pairs.jsonl   # one [from, into] or {"from": ..., "into": ...} per line, all or none
    segengine erase ID... | --file ids.txt
    segengine export ID                  # the profile as JSON (exit status 1 if unknown)
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.errors import SegengineError

from .commands import _fail, client_args, connect


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _pair(line: str, number: int) -> tuple[str, str]:
    value = json.loads(line)
    if isinstance(value, dict):
        value = [value.get("from"), value.get("into")]
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValueError(f"line {number}: expected [from, into] or {{\"from\": ..., \"into\": ...}}")
    return value[0], value[1]


def _usage(command: str, message: object) -> int:
    print(f"segengine {command}: {message}", file=sys.stderr)
    return 2


def _call(args: argparse.Namespace, method: str, *call_args: Any) -> tuple[bool, Any]:
    """(True, the client method's answer) or (False, the exit status after printing the error)."""
    try:
        with connect(args) as client:
            return True, getattr(client, method)(*call_args)
    except SegengineError as error:
        return False, _fail(error)


def run_merge(args: argparse.Namespace) -> int:
    """Merge profiles on a server: FROM INTO, or the pairs of --file (applied in order, all or none)."""
    try:
        if args.file:
            pairs = [_pair(line, n) for n, line in enumerate(_lines(args.file), 1)]
        elif len(args.ids) == 2:
            pairs = [(args.ids[0], args.ids[1])]
        else:
            return _usage("merge", "give FROM INTO or --file")
    except (OSError, ValueError) as error:
        return _usage("merge", error)
    ok, merged = _call(args, "merge_many", pairs)
    if ok:
        print(f"merged {merged} of {len(pairs)}")
    return 0 if ok else merged


def run_erase(args: argparse.Namespace) -> int:
    """Erase profiles (and all their aliases) on a server: ID... or the ids of --file, one per line."""
    try:
        ids = list(args.ids) + (_lines(args.file) if args.file else [])
    except OSError as error:
        return _usage("erase", error)
    if not ids:
        return _usage("erase", "give ids or --file")
    ok, erased = _call(args, "delete_profiles", ids)
    if ok:
        print(f"erased {erased} profiles")
    return 0 if ok else erased


def run_export(args: argparse.Namespace) -> int:
    """Print everything a server holds about one profile as JSON (exit status 1 if unknown)."""
    ok, record = _call(args, "export_profile", args.id)
    if not ok:
        return record
    if record is None:
        print(f"segengine export: unknown profile {args.id!r}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


def commands() -> dict:
    """These subcommands by name (``server.cli`` adds them to its table)."""
    from .cli import Command, arg

    return {
        "merge": Command(run_merge, "merge profiles on a server: FROM INTO, or --file of pairs (admin token)",
                         (arg("ids", nargs="*", metavar="ID", help="FROM INTO"),
                          arg("--file", default=None, help="JSON lines of [from, into] pairs, applied in order"),
                          *client_args())),
        "erase": Command(run_erase, "erase profiles and all their aliases on a server (admin token)",
                         (arg("ids", nargs="*", metavar="ID", help="profile ids (canonical or alias)"),
                          arg("--file", default=None, help="a file of ids, one per line"),
                          *client_args())),
        "export": Command(run_export, "print everything a server holds about one profile as JSON (admin token)",
                          (arg("id", help="profile id (canonical or alias)"), *client_args())),
    }
