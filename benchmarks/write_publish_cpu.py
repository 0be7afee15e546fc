"""CPU time of an event batch's write in an in-process engine (one shard): the whole write, its
prepare phase (readers go on meanwhile), and the part of it that holds the publish lock
exclusively (the commit: readers wait only for that part).

    python benchmarks/write_publish_cpu.py [--profiles 2000000] [--batches 20] [--segments 200]
    python benchmarks/write_publish_cpu.py --profiles 1000000 4000000   # does the cost follow the store's size?

Loads ``--profiles`` generated profiles with 5 events each, saves ``--segments`` segments (those of
bench_grpc.py), runs bench_grpc.py's background query once and waits for the count levels it
starts building (unless ``--cold``), then writes ``--batches`` columnar batches of 10,000 page views of known profiles
(as bench_grpc.py's ``--contention ingest`` producer does) and times each with
``time.thread_time()`` (CPU time of the calling thread, where an in-process shard runs, so a
loaded machine changes the figures far less than wall time does). The exclusive part is timed
from the moment the write takes the engine's publish lock to the moment it gives it back. With
several ``--profiles``, each size is measured in a process of its own, one after the other. The
engine is imported from PYTHONPATH first (then from this checkout), so
``PYTHONPATH=OTHER_CHECKOUT python benchmarks/write_publish_cpu.py`` times another revision.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # after PYTHONPATH: another checkout there is the one timed

import numpy as np  # noqa: E402

from engine import Engine, Schema  # noqa: E402  (before bench_grpc, which puts this checkout first)
from engine.columns import EventBatch, column_from_values  # noqa: E402
from loaders.generator import CATEGORIES, generate  # noqa: E402

from bench_grpc import HEAVY_QUERY, segment_definitions, warm_up  # noqa: E402

BATCH = 10_000


def page_views(rng: np.random.Generator, profiles: int, now: int) -> EventBatch:
    """A batch of page views of known profiles over the last day (ids as the generator spells them)."""
    ids = [f"u{i:08d}" for i in rng.integers(0, profiles, BATCH).tolist()]
    ts = (now - rng.integers(0, 86_400_000, BATCH)).astype(np.int64)
    category = column_from_values("category", [CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), BATCH).tolist()])
    return EventBatch("page_view", ids, ts, {"category": category})


def exclusive_timer(engine: Engine) -> list[float]:
    """Record, per write, the CPU seconds spent holding ``engine.publish`` exclusively."""
    spans: list[float] = []
    lock = engine.publish
    acquire, release = lock.acquire_write, lock.release_write
    started: list[float] = []

    def timed_acquire(timeout: float | None = None, *more: bool) -> bool:
        ok = acquire(timeout, *more)
        started.append(time.thread_time())
        return ok

    def timed_release() -> None:
        release()
        spans.append(time.thread_time() - started.pop())

    lock.acquire_write, lock.release_write = timed_acquire, timed_release  # type: ignore[method-assign]
    return spans


def prepare_timer(engine: Engine) -> list[float]:
    """Record, per write, the CPU seconds of its prepare phase (``Engine._prepare``, before the lock)."""
    spans: list[float] = []
    prepare = getattr(engine, "_prepare", None)
    if prepare is None:  # a revision without a prepare phase: the whole write holds the lock
        return spans

    def timed_prepare(calls: list) -> list:
        began = time.thread_time()
        commits = prepare(calls)
        spans.append(time.thread_time() - began)
        return calls if commits is None else commits  # a revision whose prepare returns nothing

    engine._prepare = timed_prepare  # type: ignore[method-assign]
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, nargs="+", default=[2_000_000])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--segments", type=int, default=200)
    parser.add_argument("--cold", action="store_true",
                        help="skip bench_grpc's background query, so no count levels are kept by the writes")
    args = parser.parse_args()
    if len(args.profiles) > 1:  # one process per size: each starts from a fresh heap
        for profiles in args.profiles:
            argv = [sys.executable, __file__, "--profiles", str(profiles), "--batches", str(args.batches),
                    "--segments", str(args.segments), *(["--cold"] if args.cold else [])]
            subprocess.run(argv, check=True)
        return
    measure(args.profiles[0], args.batches, args.segments, args.cold)


def measure(profiles: int, batches_timed: int, segments: int, cold: bool) -> None:
    """Build the engine of ``profiles`` profiles, write the batches, print the CPU figures."""
    ds = generate(profiles, 5 * profiles, seed=0)
    engine = Engine(Schema.from_dict(ds.schema), shards=1, backend="local")
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    del ds
    for name, query in segment_definitions(segments).items():
        engine.create_segment(name, query)
    if not cold:  # the count levels it uses are built, then kept by every write (as in bench_grpc.py)
        warm_up(engine, HEAVY_QUERY)
    rng = np.random.default_rng(1)
    now = time.time_ns() // 1_000_000
    batches = [page_views(rng, profiles, now) for _ in range(batches_timed + 3)]
    for batch in batches[:3]:  # warm up (compilation, first slot days)
        engine.load_events(batch)
    spans = exclusive_timer(engine)
    prepares = prepare_timer(engine)
    whole = []
    for batch in batches[3:]:
        began = time.thread_time()
        engine.load_events(batch)
        whole.append(time.thread_time() - began)
    excl = spans[-len(whole):]
    prep = prepares[-len(whole):]
    print(f"{profiles:,} profiles, {segments} saved segments, {len(whole)} batches of {BATCH:,} page views "
          f"(CPU ms per batch, median / max)")
    print(f"  whole write      {statistics.median(whole) * 1e3:7.2f} / {max(whole) * 1e3:7.2f}")
    if prep:
        print(f"  prepare          {statistics.median(prep) * 1e3:7.2f} / {max(prep) * 1e3:7.2f}")
    print(f"  exclusive part   {statistics.median(excl) * 1e3:7.2f} / {max(excl) * 1e3:7.2f}", flush=True)
    engine.close()


if __name__ == "__main__":
    main()
