"""Point reads during snapshots, in the engine: how slow they get and in which snapshot phase.

    python benchmarks/snapshot_stall.py --profiles 1000000 --shards 1 --backend process

Loads a generated dataset (5 events per profile) and ``--segments`` saved segments into a
durable engine, takes one snapshot, then runs ``--threads`` threads calling
``Engine.membership`` for random ids: for ``--duration`` seconds alone, then for as long again
while another thread takes snapshots back to back. Prints the membership latencies of both
phases, each snapshot's capture pause and write time, and how many of the slow calls (above
``--slow-ms``) fell in each phase of a snapshot: ``pause`` (the applier paused while the shards
capture), ``write`` (the shards write their parts in the background), ``commit`` (the manifest
commit and the pruning of the previous part). No gRPC: this isolates the engine's own stalls.
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_grpc import _slice_events, segment_definitions  # noqa: E402
from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (seconds) in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def build(args: argparse.Namespace, data_dir: str) -> Engine:
    """A durable engine holding the generated dataset and the saved segments, snapshotted once."""
    dataset = generate(args.profiles, 5 * args.profiles, seed=0)
    engine = Engine(Schema.from_dict(dataset.schema), shards=args.shards, backend=args.backend, data_dir=data_dir,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None})
    step = 1_000_000
    for start in range(0, len(dataset.profiles), step):
        engine.load_profiles(dataset.profiles.slice(start, start + step))
    for batch in dataset.events:
        for start in range(0, len(batch), step):
            engine.load_events(_slice_events(batch, start, start + step))
    for name, query in segment_definitions(args.segments).items():
        engine.create_segment(name, query)
    engine.snapshot()
    return engine


def phase_of(moment: float, snapshots: list[tuple[float, float, dict[str, Any]]]) -> str:
    """The snapshot phase ``moment`` falls in ("outside" if none)."""
    for began, ended, summary in snapshots:
        if began <= moment <= ended:
            paused = began + summary["pause_wait_s"]
            resumed = paused + summary["paused_s"]
            written = resumed + max(summary["write_ms"]) / 1000
            return "pause" if moment < resumed else "write" if moment < written else "commit"
    return "outside"


def measure(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """Membership latencies alone and during back-to-back snapshots, and the slow calls by phase."""
    stop = threading.Event()
    calls: list[tuple[float, float]] = []  # (start, seconds)
    snapshots: list[tuple[float, float, dict[str, Any]]] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            profile = f"u{rng.randrange(args.profiles):08d}"
            began = time.perf_counter()
            engine.membership(profile)
            calls.append((began, time.perf_counter() - began))

    def snapshotter() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            summary = engine.snapshot()
            snapshots.append((began, time.perf_counter(), summary))

    readers = [threading.Thread(target=reader, args=(k,)) for k in range(args.threads)]
    for thread in readers:
        thread.start()
    time.sleep(args.duration)
    alone = [seconds for _, seconds in calls]
    calls.clear()
    writer = threading.Thread(target=snapshotter)
    writer.start()
    time.sleep(args.duration)
    stop.set()
    writer.join()
    for thread in readers:
        thread.join()
    during = [seconds for _, seconds in calls]
    slow = {"pause": 0, "write": 0, "commit": 0, "outside": 0}
    for began, seconds in calls:
        if seconds * 1000 > args.slow_ms:
            slow[phase_of(began + seconds / 2, snapshots)] += 1
    summaries = [summary for _, _, summary in snapshots]
    return {
        "alone": {"calls": len(alone), "p50_ms": percentile_ms(alone, 0.5), "p99_ms": percentile_ms(alone, 0.99),
                  "max_ms": percentile_ms(alone, 1.0)},
        "during": {"calls": len(during), "p50_ms": percentile_ms(during, 0.5),
                   "p99_ms": percentile_ms(during, 0.99), "max_ms": percentile_ms(during, 1.0)},
        "snapshots": len(summaries),
        "snapshot_s_median": statistics.median(s["seconds"] for s in summaries) if summaries else None,
        "pause_ms": [round(s["paused_s"] * 1000) for s in summaries],
        "write_ms": [max(s["write_ms"]) for s in summaries],
        "slow_calls_by_phase": slow,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--segments", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="membership callers")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--slow-ms", type=float, default=5.0, help="a call above this is slow")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="segengine-stall-")
    try:
        engine = build(args, data_dir)
        try:
            figures = measure(engine, args)
        finally:
            engine.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{args.profiles:,} profiles, {args.shards} shard(s), backend {args.backend}, {args.threads} readers")
    for phase in ("alone", "during"):
        f = figures[phase]
        print(f"  membership {phase:<7} p50 {f['p50_ms']:.3f} ms  p99 {f['p99_ms']:.3f} ms  max {f['max_ms']:.1f} ms"
              f"  ({f['calls']} calls)")
    print(f"  {figures['snapshots']} snapshots, median {figures['snapshot_s_median']} s; "
          f"capture pauses {figures['pause_ms']} ms; writes {figures['write_ms']} ms")
    print(f"  calls above {args.slow_ms} ms by snapshot phase: {figures['slow_calls_by_phase']}")


if __name__ == "__main__":
    main()
