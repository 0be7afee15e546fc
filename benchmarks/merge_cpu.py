"""Merge throughput on a durable engine with worker shards: wall time and CPU time per batch.

    python benchmarks/merge_cpu.py [--profiles 1000000] [--events 5000000] [--batches 10] [--batch 1000]
    python benchmarks/merge_cpu.py --random-pairs [--segments 200]   # existing profiles merged in pairs
    python benchmarks/merge_cpu.py --visitors [--segments 200]   # new visitors merged into customers (logins)
    PYTHONPATH=OTHER_CHECKOUT python benchmarks/merge_cpu.py --random-pairs   # another revision, A/B

Loads the generator's data set into a durable engine (``--shards`` worker processes, a temporary
data directory), then calls ``merge_many`` ``--batches`` times with ``--batch`` pairs each, half of
them across shards, as ``bench_identity.py`` does (sources: generated profiles; targets: fresh ids
chosen by shard), after one warm-up batch. Prints merges per second by wall time and the CPU
seconds per batch spent by the coordinator and by each worker (read from /proc, so a loaded
machine inflates the wall time far more than the CPU time), and the log's mean group commit time
(fsync included) and bytes per batch. The generated data set is dropped after loading: the
collector's full passes over its list of millions of ids would be charged to the coordinator.

``--visitors`` merges new anonymous visitors into existing customers instead, as logins do: before
the timed batches, 4 page views of the last day for each visitor are loaded (new, attribute-less
profiles); each customer is the target of one merge at most.

``--random-pairs`` merges existing profiles instead, in pairs of a random permutation (every profile
a source or a target once, as ``bench_grpc.py --contention merge`` does): their events spread over
every day of the data set, so a batch touches most day bitmaps. ``--segments N`` saves bench_grpc.py's
first N segments first (each merge re-evaluates them on its rows). Each batch's CPU is then split
by phase, coordinator and workers together (a worker's CPU read around each phase from its
threads' schedstat, in ns, and its ended threads' at clock tick resolution): planning (``Identity.plan_merges``: resolving ids, reading the sources' data
from their shards), the prepare phase (``Engine._prepare``: readers go on meanwhile), the exclusive
part (from taking the publish lock for writing to giving it back), within it the sync step (the
saved segments' re-evaluation: only reads of saved segments wait), and the rest (the log's
encoding and group commit, routing). The wall time of each batch's commit (the exclusive part
before the sync step: every read waits for it) is printed as p50, p90 and max. The engine is imported from PYTHONPATH first (then from
this checkout), so ``PYTHONPATH=OTHER_CHECKOUT`` times another revision.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # after PYTHONPATH: another checkout there is the one timed

import numpy as np  # noqa: E402

from engine import Engine, Schema  # noqa: E402
from engine.shard.partition import shard_of  # noqa: E402
from loaders.generator import generate  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
NOW_MS = 1_800_000_000_000  # the generator's clock


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


def random_pairs(ids: list[str], total: int) -> list[tuple[str, str]]:
    """``total`` pairs of existing profiles, from a random permutation (each profile in one pair at most)."""
    order = np.random.default_rng(7).permutation(len(ids))[: 2 * total].tolist()
    return [(ids[order[2 * i]], ids[order[2 * i + 1]]) for i in range(total)]


def visitor_pairs(engine: Engine, ids: list[str], total: int, now_ms: int) -> list[tuple[str, str]]:
    """``total`` pairs (new visitor, existing customer), after loading 4 page views of the last day
    for each visitor (each customer in one pair at most)."""
    from engine.columns import EventBatch, column_from_values
    from loaders.generator import CATEGORIES

    rng = np.random.default_rng(7)
    visitors = [f"visitor-{i}" for i in range(total)]
    named = [visitors[i] for i in np.repeat(np.arange(total), 4).tolist()]
    ts = (now_ms - rng.integers(0, 86_400_000, len(named))).astype(np.int64)
    category = column_from_values("category", [CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), len(named)).tolist()])
    engine.load_events(EventBatch("page_view", named, ts, {"category": category}))
    customers = rng.permutation(len(ids))[:total].tolist()
    return [(visitor, ids[c]) for visitor, c in zip(visitors, customers)]


def _ticks(path: str) -> int:
    """User + system clock ticks of a /proc stat file."""
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def schedstat_ns(pids: list[int]) -> int:
    """The CPU nanoseconds processes ``pids`` have run: their live threads' from
    /proc/PID/task/TID/schedstat (ns resolution), plus the threads that ended (a worker serves a
    background call on a thread of its own), at clock tick resolution: the process's ticks less its
    live threads' ticks."""
    total = 0
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
            process_ticks = _ticks(f"/proc/{pid}/stat")
        except OSError:
            continue
        live_ticks = 0
        for tid in threads:  # a worker answers calls in threads of its own: every thread counts
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
                live_ticks += _ticks(f"/proc/{pid}/task/{tid}/stat")
            except OSError:
                pass  # a thread that ended meanwhile
        total += max(process_ticks - live_ticks, 0) * 1_000_000_000 // TICKS
    return total


class PhaseTimer:
    """CPU seconds (calling thread + ``workers``) spent inside the phases a merge batch goes through."""

    def __init__(self, engine: Engine, workers: list[int]):
        self.workers = workers
        self.spent = {"planning": 0.0, "prepare": 0.0, "exclusive": 0.0, "sync step": 0.0}
        self.commits_ms: list[float] = []  # wall time of each write's commit (what every read waits for)
        self._wrap(engine.identity, "plan_merges", "planning")
        if hasattr(engine, "_prepare"):
            self._wrap(engine, "_prepare", "prepare")
        lock = engine.publish
        acquire, release = lock.acquire_write, lock.release_write
        started: list[tuple[float, int, float]] = []
        opened: list[tuple[float, int, float]] = []  # the sync step's start (PublishLock.open_store)

        def timed_acquire(*args: object, **kwargs: object) -> bool:
            ok = acquire(*args, **kwargs)
            started.append(self._now())
            return ok

        def timed_open() -> None:
            opened.append(self._now())
            open_store()

        def timed_end() -> None:
            end_views()
            if opened:
                own, ns, _ = opened[-1]
                self.spent["sync step"] += time.thread_time() - own + (schedstat_ns(self.workers) - ns) / 1e9

        def timed_release() -> None:
            release()
            own, ns, wall = started.pop()
            self.commits_ms.append(((opened.pop()[2] if opened else time.perf_counter()) - wall) * 1e3)
            self.spent["exclusive"] += time.thread_time() - own + (schedstat_ns(self.workers) - ns) / 1e9

        open_store, end_views = lock.open_store, lock.end_views
        lock.acquire_write, lock.release_write = timed_acquire, timed_release  # type: ignore[method-assign]
        lock.open_store, lock.end_views = timed_open, timed_end  # type: ignore[method-assign]

    def _now(self) -> tuple[float, int, float]:
        """(this thread's CPU s, the workers' CPU ns, the wall clock s)."""
        return time.thread_time(), schedstat_ns(self.workers), time.perf_counter()

    def _wrap(self, owner: object, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            own, ns = time.thread_time(), schedstat_ns(self.workers)
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[phase] += time.thread_time() - own + (schedstat_ns(self.workers) - ns) / 1e9

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.spent = dict.fromkeys(self.spent, 0.0)
        self.commits_ms = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--random-pairs", action="store_true", help="merge existing profiles, in random pairs")
    parser.add_argument("--visitors", action="store_true", help="merge new visitors into existing customers")
    parser.add_argument("--segments", type=int, default=0, help="save bench_grpc.py's first N segments first")
    args = parser.parse_args()
    ds = generate(args.profiles, args.events, seed=1, now_ms=NOW_MS)
    with tempfile.TemporaryDirectory() as data_dir:
        with Engine(Schema.from_dict(ds.schema), shards=args.shards, data_dir=data_dir,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None}) as engine:
            engine.load_profiles(ds.profiles)
            for batch in ds.events:
                engine.load_events(batch)
            total = (args.batches + 1) * args.batch
            pairs = random_pairs(list(ds.profiles.ids), total) if args.random_pairs else \
                visitor_pairs(engine, list(ds.profiles.ids), total, NOW_MS) if args.visitors else \
                merge_pairs(list(ds.profiles.ids), args.shards, total)
            if args.segments:
                from bench_grpc import segment_definitions

                for name, query in segment_definitions(args.segments).items():
                    engine.create_segment(name, query)
            del ds  # the generated ids leave the collector's walks, which would be charged to the coordinator
            gc.collect()
            engine.merge_many(pairs[:args.batch])  # warm-up: kernels compiled or loaded from the cache
            pipeline = engine.durable.pipeline
            commits, commit_s, logged = pipeline.commit_latency.count, pipeline.commit_latency.total, pipeline.bytes_logged
            phases = PhaseTimer(engine, sorted(children_cpu()))
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
            pairing = "random existing pairs" if args.random_pairs else "new visitors into customers" if args.visitors \
                else "fresh targets"
            print(f"{args.profiles} profiles, {args.events} events, {args.shards} shards, "
                  f"{args.segments} saved segments, {pairing}: {merges} merges in "
                  f"{wall:.2f} s = {merges / wall:.0f} merges/s (wall); CPU ms per batch: coordinator "
                  f"{own * 1e3 / args.batches:.0f}, workers {[round(u * 1e3 / args.batches) for u in used[:args.shards]]}; "
                  f"log: {commit_ms:.1f} ms per commit, {log_kb:.0f} KiB per batch")
            whole = own + sum(used)
            split = {name: spent * 1e3 / args.batches for name, spent in phases.spent.items()}
            split["exclusive"] -= split["sync step"]  # the lock is held through the sync step: counted once
            split["log and the rest"] = whole * 1e3 / args.batches - sum(split.values())
            print(f"  CPU ms per batch of {args.batch:,}, coordinator and workers: "
                  f"total {whole * 1e3 / args.batches:.1f} = " + ", ".join(f"{name} {ms:.1f}" for name, ms in split.items()), flush=True)
            commits = np.array(phases.commits_ms)
            print(f"  commit wall ms (reads wait; the sync step excluded): p50 {np.median(commits):.1f}, "
                  f"p90 {np.percentile(commits, 90):.1f}, max {commits.max():.1f}", flush=True)


if __name__ == "__main__":
    main()
