"""CPU time of the bulk profile load (large.py's path: chunks of the generator, durable, shards 1),
optionally against another git revision, in alternating processes.

    python benchmarks/load_cpu.py [--profiles 2000000] [--chunk 500000] [--rounds 2] [--memory] [--against REV]
                                  [--per-chunk]

Each measurement runs in a fresh process: the numba kernels are warmed on a throwaway engine, then
``--profiles`` generated profiles are loaded chunk by chunk with ``Engine.load_profiles`` into a
durable engine (``--memory``: in memory) and the process's CPU time (``time.process_time``: the
write-ahead log's and applier's threads included) is summed over the loads only, generation
excluded. A loaded machine changes CPU time far less than wall time. With ``--against REV`` that
revision's tree (``git archive``) is measured too, the two alternating round by round; prints
profiles per CPU second per run and the median ratio; ``--per-chunk`` also prints each chunk's CPU
seconds (does a chunk cost more as the store grows?).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(root: Path, profiles: int, chunk: int, durable: bool) -> dict:
    """(In a process of its own.) Load the chunks with the tree at ``root``; CPU and wall seconds of the loads."""
    sys.path[:0] = [str(root), str(root / "benchmarks")]
    from engine import Engine, Schema
    from loaders.chunks import generate_chunks
    from loaders.generator import DEMO_SCHEMA
    from queries import NOW_MS

    schema = Schema.from_dict(DEMO_SCHEMA)
    with Engine(schema, shards=1) as warm:
        for part in generate_chunks(3000, 0, seed=1, now_ms=NOW_MS, chunk=1000, events_too=False):
            warm.load_profiles(part.profiles)
    scratch = tempfile.mkdtemp(prefix="segengine-load-cpu-")
    options = {"data_dir": scratch, "durability": {"snapshot_every_s": None, "snapshot_log_bytes": None}}
    engine = Engine(schema, shards=1, **(options if durable else {}))
    cpu = wall = 0.0
    per_chunk: list[float] = []
    try:
        for part in generate_chunks(profiles, 0, seed=7, now_ms=NOW_MS, chunk=chunk, events_too=False):
            started, began = time.process_time(), time.perf_counter()
            engine.load_profiles(part.profiles)
            per_chunk.append(time.process_time() - started)
            cpu += per_chunk[-1]
            wall += time.perf_counter() - began
    finally:
        engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"cpu_s": cpu, "wall_s": wall, "per_chunk_cpu_s": per_chunk}


def run_tree(root: Path, args: argparse.Namespace) -> dict:
    """One measurement of the tree at ``root`` in its own process."""
    command = [sys.executable, __file__, "--worker", str(root), "--profiles", str(args.profiles),
               "--chunk", str(args.chunk), *(["--memory"] if args.memory else [])]
    done = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=2_000_000)
    parser.add_argument("--chunk", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="an in-memory engine (no write-ahead log)")
    parser.add_argument("--against", help="a git revision measured too, alternating")
    parser.add_argument("--per-chunk", action="store_true", help="also print each chunk's CPU seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(Path(args.worker), args.profiles, args.chunk, not args.memory)))
        return 0
    trees = {"this tree": HERE.parent}
    scratch = None
    if args.against:
        scratch = Path(tempfile.mkdtemp(prefix="segengine-against-"))
        archive = subprocess.run(["git", "archive", args.against], cwd=HERE.parent, stdout=subprocess.PIPE, check=True)
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
        trees = {args.against: scratch, **trees}
    print(f"# {args.profiles:,} profiles in chunks of {args.chunk:,}, {'in memory' if args.memory else 'durable'}, "
          f"shards 1; profiles per CPU second of the process (wall rate in brackets)")
    rates: dict[str, list[float]] = {name: [] for name in trees}
    try:
        for round_no in range(args.rounds):
            for name, root in (trees.items() if round_no % 2 == 0 else reversed(trees.items())):
                figures = run_tree(root, args)
                rates[name].append(args.profiles / figures["cpu_s"])
                print(f"  {name:<12} {rates[name][-1]:>10,.0f} ({args.profiles / figures['wall_s']:,.0f})", flush=True)
                if args.per_chunk:
                    print("    CPU s per chunk: " + " ".join(f"{s:.2f}" for s in figures["per_chunk_cpu_s"]), flush=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    for name, values in rates.items():
        print(f"{name:<12} median {statistics.median(values):,.0f} profiles per CPU second")
    if args.against:
        ratio = statistics.median(rates["this tree"]) / statistics.median(rates[args.against])
        print(f"this tree / {args.against}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
