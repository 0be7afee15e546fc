"""``segengine lookalike``: rank a server's profiles by resemblance to a seed (a query or an id file).

Prints one line per profile, best first: id, score and the features that drove the score
(tab-separated); a summary (seed size, unknown seed ids, candidates, the model's top features)
goes to stderr. ``--json`` prints the whole result instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_support import CliError, clock, positive
from .commands import client_args, connect


def read_ids(path: str) -> list[str]:
    """The ids of an id file: one per line, blank lines skipped (``-``: standard input)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def threshold(text: str) -> float:
    """An argparse type: a score between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a score between 0 and 1, got {text!r}")
    return value


def run_lookalike(args: argparse.Namespace) -> int:
    """Rank the profiles of ``--within`` outside the seed; print them best first."""
    if (args.seed_query is None) == (args.seed_ids is None):
        raise CliError("give the seed as --seed-query QUERY or --seed-ids FILE (one of them)", status=2)
    if args.size is None and args.threshold is None:
        raise CliError("give --size N, --threshold X, or both", status=2)
    seed = args.seed_query if args.seed_query is not None else read_ids(args.seed_ids)
    with connect(args) as client:
        result = client.lookalike(seed, within=args.within, size=args.size, threshold=args.threshold, now=args.now,
                                  timeout=args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    sys.stdout.write("".join(f"{p['id']}\t{p['score']:.6f}\t{'; '.join(p['features'])}\n" for p in result["profiles"]))
    unknown = result["unknown_seed_ids"]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        print(f"warning: {len(unknown)} seed ids name no live profile and were ignored: {shown}", file=sys.stderr)
    top = "; ".join(f"{t['feature']} ({t['weight']:+.2f})" for t in result["top_features"][:5])
    print(f"seed {result['seed']} profiles, {result['candidates']} candidates, {len(result['profiles'])} returned; "
          f"top features: {top}", file=sys.stderr)
    return 0


def commands() -> dict:
    """This subcommand by name (``server.cli`` adds it to its table)."""
    from .cli import Command, arg

    return {
        "lookalike": Command(
            run_lookalike,
            "rank a server's profiles outside a seed (a query or an id file) by resemblance to it",
            (
                arg("--seed-query", default=None, help="the seed as a segment query"),
                arg("--seed-ids", default=None, metavar="FILE", help="the seed as a file of ids, one per line (- = stdin)"),
                arg("--within", default="ALL", help="the candidates as a segment query (default ALL)"),
                arg("--size", type=positive, default=None, help="how many profiles to print, best first"),
                arg("--threshold", type=threshold, default=None, help="the lowest score printed (0 to 1)"),
                arg("--now", type=clock, default=None, help="query clock: epoch ms or ISO 8601 (default: the server's)"),
                arg("--json", action="store_true", help="print the whole result as JSON"),
                *client_args(),
            ),
        ),
    }

