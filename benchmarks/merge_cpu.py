"""Merge throughput on a durable engine with worker shards: wall time and CPU time per batch.

    python benchmarks/merge_cpu.py [--profiles 1000000] [--events 5000000] [--batches 10] [--batch 1000]

Loads the generator's data set into a durable engine (``--shards`` worker processes, a temporary
data directory), then calls ``merge_many`` ``--batches`` times with ``--batch`` pairs each, half of
them across shards, as ``bench_identity.py`` does (sources: generated profiles; targets: fresh ids
chosen by shard), after one warm-up batch. Prints merges per second by wall time and the CPU
seconds per batch spent by the coordinator and by each worker (read from /proc, so a loaded
machine inflates the wall time far more than the CPU time), and the log's mean group commit time
(fsync included) and bytes per batch. The generated data set is dropped after loading: the
collector's full passes over its list of millions of ids would be charged to the coordinator.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Engine, Schema  # noqa: E402
from engine.shard.partition import shard_of  # noqa: E402
from loaders.generator import generate  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def children_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each child process of this one."""
    out = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def merge_pairs(ids: list[str], shards: int, total: int) -> list[tuple[str, str]]:
    """``total`` pairs: generated sources, fresh targets, every second one on another shard."""
    fresh: list[list[str]] = [[] for _ in range(shards)]
    i = 0
    while min(len(f) for f in fresh) < total:
        candidate = f"merged-into-{i}"
        owner = shard_of(candidate, shards)
        if len(fresh[owner]) < total:
            fresh[owner].append(candidate)
        i += 1
    pairs = []
    for i, source in enumerate(ids[:total]):
        home = shard_of(source, shards)
        target_shard = (home + 1) % shards if i % 2 == 1 and shards > 1 else home
        pairs.append((source, fresh[target_shard][i]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    ds = generate(args.profiles, args.events, seed=1, now_ms=1_800_000_000_000)
    with tempfile.TemporaryDirectory() as data_dir:
        with Engine(Schema.from_dict(ds.schema), shards=args.shards, data_dir=data_dir,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None}) as engine:
            engine.load_profiles(ds.profiles)
            for batch in ds.events:
                engine.load_events(batch)
            pairs = merge_pairs(list(ds.profiles.ids), args.shards, (args.batches + 1) * args.batch)
            del ds  # the generated ids leave the collector's walks, which would be charged to the coordinator
            gc.collect()
            engine.merge_many(pairs[:args.batch])  # warm-up: kernels compiled or loaded from the cache
            pipeline = engine.durable.pipeline
            commits, commit_s, logged = pipeline.commit_latency.count, pipeline.commit_latency.total, pipeline.bytes_logged
            workers, own, wall = children_cpu(), time.process_time(), time.perf_counter()
            for start in range(args.batch, len(pairs), args.batch):
                engine.merge_many(pairs[start:start + args.batch])
            wall = time.perf_counter() - wall
            own = time.process_time() - own
            after = children_cpu()
            used = sorted((after[pid] - workers.get(pid, 0.0) for pid in after), reverse=True)
            merges = args.batches * args.batch
            commit_ms = (pipeline.commit_latency.total - commit_s) * 1e3 / max(pipeline.commit_latency.count - commits, 1)
            log_kb = (pipeline.bytes_logged - logged) / 1024 / args.batches
            print(f"{args.profiles} profiles, {args.events} events, {args.shards} shards: {merges} merges in "
                  f"{wall:.2f} s = {merges / wall:.0f} merges/s (wall); CPU ms per batch: coordinator "
                  f"{own * 1e3 / args.batches:.0f}, workers {[round(u * 1e3 / args.batches) for u in used[:args.shards]]}; "
                  f"log: {commit_ms:.1f} ms per commit, {log_kb:.0f} KiB per batch")


if __name__ == "__main__":
    main()
