"""Interleaved CPU A/B of compare.py's queries: this checkout against another commit.

    python benchmarks/did_ab.py --against a6e5c06 [--profiles 1000000] [--rounds 7] [--only n1,n2] [--all]

Extracts ``--against`` (``git archive``) into a temporary directory and starts one worker process per
side; each generates the compare.py data set (as ``did_cpu.py`` does: 5 events per profile, fixed
seed and clock), loads it into ``Engine(shards=1)`` and runs each query once untimed. Then, per
query, the sides take turns for ``--rounds`` rounds of ``--calls`` calls each, timed with
``time.thread_time()`` (the side that goes first alternates), so both sides see the same load on a
busy machine. The table shows each
side's median CPU ms per call and the ratio (this checkout / the other: below 1 is faster); the
counts must agree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The worker: reads query names on stdin, answers one JSON line per command.
WORKER = r"""
import json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
from engine import Engine, Schema
from loaders.generator import generate
from queries import NOW_MS, attribute_queries, behaviour_queries, event_queries
queries = {q.name: q.seg for q in [*attribute_queries(NOW_MS), *event_queries(NOW_MS), *behaviour_queries(NOW_MS)]}
n = int(sys.argv[2])
ds = generate(n, 5 * n, seed=7, now_ms=NOW_MS)
with Engine(Schema.from_dict(ds.schema), shards=1) as eng:
    eng.load_profiles(ds.profiles)
    for batch in ds.events:
        eng.load_events(batch)
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        name, calls = line.split()
        if calls == "0":  # the untimed first call, then wait for background level builds
            count = eng.count(queries[name], now=NOW_MS)
            deadline = time.monotonic() + 120
            while any(s.get("levels_building") for s in eng.stats()["shards"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            print(json.dumps(count), flush=True)
            continue
        started = time.thread_time()
        for _ in range(int(calls)):
            eng.count(queries[name], now=NOW_MS)
        print(json.dumps((time.thread_time() - started) * 1e3 / int(calls)), flush=True)
"""


class Side:
    """One worker process running the queries of one source tree."""

    def __init__(self, tree: Path, profiles: int):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tree), str(profiles)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": str(tree)})

    def ask(self, name: str = "", calls: int = 0) -> object:
        """Send a command (none: wait for the worker's first line) and return its JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if name:
            self.proc.stdin.write(f"{name} {calls}\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("worker exited")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit to compare with")
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="calls per round")
    parser.add_argument("--only", help="comma-separated query names")
    parser.add_argument("--all", action="store_true", help="also the attribute and behaviour queries")
    args = parser.parse_args()
    sys.path[:0] = [str(HERE.parent), str(HERE)]
    from queries import NOW_MS, attribute_queries, behaviour_queries, event_queries

    chosen = [*attribute_queries(NOW_MS), *event_queries(NOW_MS), *behaviour_queries(NOW_MS)] if args.all \
        else event_queries(NOW_MS)
    names = [q.name for q in chosen if not args.only or q.name in args.only.split(",")]
    with tempfile.TemporaryDirectory() as other:
        archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", args.against],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", other], input=archive, check=True)
        sides = [Side(HERE.parent, args.profiles), Side(Path(other), args.profiles)]
        for side in sides:
            side.ask()
        print(f"| query | count | this ms | {args.against} ms | ratio |")
        print("|---|---:|---:|---:|---:|")
        ratios = []
        for name in names:
            counts = [side.ask(name, 0) for side in sides]
            if counts[0] != counts[1]:
                raise SystemExit(f"{name}: counts differ {counts}")
            samples: list[list[float]] = [[], []]
            for round_ in range(args.rounds):
                for i in (0, 1) if round_ % 2 == 0 else (1, 0):  # neither side always goes first
                    samples[i].append(sides[i].ask(name, args.calls))  # type: ignore[arg-type]
            mine, theirs = (statistics.median(s) for s in samples)
            ratios.append(mine / theirs)
            print(f"| {name} | {counts[0]:,} | {mine:.3f} | {theirs:.3f} | {mine / theirs:.2f} |", flush=True)
        for side in sides:
            side.close()
    print(f"geometric mean of the ratios: {statistics.geometric_mean(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
