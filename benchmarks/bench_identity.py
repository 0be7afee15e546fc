"""Identity benchmarks: merges, erasure, export and the memory of aliases (docs/identity.md).

    python benchmarks/bench_identity.py                                  # 200k profiles, 1M events
    python benchmarks/bench_identity.py --profiles 10000000 --events 50000000

On a durable engine (``--shards`` worker processes, a temporary data directory) loaded with the
generator's dataset, it measures:

1. merges: ``--merge-batches`` calls of ``merge_many`` with ``--batch`` pairs each, half of the
   pairs across shards (sources are generated profiles, targets new ids chosen by shard), durable;
2. erasure: ``delete_profiles`` of ``--erase`` profiles, then the ``snapshot()`` that compacts the
   stores, against a snapshot before it;
3. export: ``export_profile`` of a profile given 1,000 events (median and max of 20 calls);
4. memory: bytes per alias held by the shards (``AliasStore``) and by the coordinator's index,
   beyond the alias ids' own bytes (an in-process engine with ``--aliases`` aliases);
5. event ids: bytes per event id beyond its own bytes (the shard's ``EventIdStore`` and the runs'
   entry column) and the columnar load time with and without ids, for ``--event-ids`` events
   carrying 36-character ids (UUID text) over a quarter as many profiles (in-process, 1 shard).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Engine, Schema  # noqa: E402
from engine.shard.partition import shard_of  # noqa: E402
from loaders.generator import generate  # noqa: E402


def targets_by_shard(shards: int, count: int, prefix: str) -> list[list[str]]:
    """``count`` fresh ids per shard (ids that hash to it)."""
    out: list[list[str]] = [[] for _ in range(shards)]
    i = 0
    while min(len(ids) for ids in out) < count:
        candidate = f"{prefix}{i}"
        owner = shard_of(candidate, shards)
        if len(out[owner]) < count:
            out[owner].append(candidate)
        i += 1
    return out


def bench_merges(engine: Engine, ids: list[str], shards: int, batches: int, batch: int) -> dict[str, float]:
    total = batches * batch
    fresh = targets_by_shard(shards, total, "merged-into-")
    sources = ids[:total]
    pairs = []
    for i, source in enumerate(sources):
        home = shard_of(source, shards)
        cross = i % 2 == 1 and shards > 1
        target_shard = (home + 1) % shards if cross else home
        pairs.append((source, fresh[target_shard][i]))
    began = time.perf_counter()
    calls = []
    for start in range(0, total, batch):
        called = time.perf_counter()
        engine.merge_many(pairs[start:start + batch])
        calls.append(time.perf_counter() - called)
    seconds = time.perf_counter() - began
    later = statistics.median(calls[1:]) if len(calls) > 1 else calls[0]
    # the first call also builds each shard's event locator (engine/store/event_locator.py)
    return {"merges": total, "seconds": round(seconds, 3), "merges_per_s": round(total / seconds),
            "first_call_s": round(calls[0], 3), "later_call_median_s": round(later, 3),
            "later_merges_per_s": round(batch / later)}


def bench_erasure(engine: Engine, ids: list[str], count: int) -> dict[str, float]:
    began = time.perf_counter()
    engine.snapshot()
    normal = time.perf_counter() - began
    began = time.perf_counter()
    erased = engine.delete_profiles(ids[-count:])
    call = time.perf_counter() - began
    began = time.perf_counter()
    summary = engine.snapshot()
    after = time.perf_counter() - began
    return {"erased": erased, "call_s": round(call, 3), "normal_snapshot_s": round(normal, 3),
            "snapshot_after_erasure_s": round(after, 3), "ratio": round(after / normal, 2),
            "compaction_s": summary["compacted"]["seconds"] if summary.get("compacted") else None}


def bench_export(engine: Engine, now: int) -> dict[str, float]:
    engine.track_events([{"id": "exported", "event": "page_view", "ts": now - i * 1000} for i in range(1000)])
    times = []
    for _ in range(20):
        began = time.perf_counter()
        record = engine.export_profile("exported")
        times.append((time.perf_counter() - began) * 1000)
    assert record is not None and len(record["events"]) == 1000
    return {"events": 1000, "median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def bench_alias_memory(schema: Schema, aliases: int) -> dict[str, float]:
    with Engine(schema, shards=1, backend="local") as engine:
        engine.upsert_profiles([{"id": f"c{i}"} for i in range(aliases // 4)])
        pairs = [(f"alias-{i:09d}", f"c{i % (aliases // 4)}") for i in range(aliases)]
        for start in range(0, aliases, 10_000):
            engine.merge_many(pairs[start:start + 10_000])
        store = engine.shards[0].aliases
        id_bytes = sum(len(a.encode()) for a, _ in pairs)
        shard_bytes = store.nbytes - store.ids.buffer.nbytes  # the buffer holds the ids' own bytes
        index_bytes = engine.identity.index.nbytes
        return {"aliases": len(store), "id_bytes_each": round(id_bytes / aliases, 1),
                "shard_bytes_each": round(shard_bytes / aliases, 1),
                "index_bytes_each": round(index_bytes / aliases, 1),
                "total_beyond_id_each": round((shard_bytes + index_bytes) / aliases, 1)}


def bench_event_id_memory(schema: Schema, count: int) -> dict[str, float]:
    import uuid

    import numpy as np

    from engine.columns import EventBatch

    pids = [f"p{i % max(count // 4, 1)}" for i in range(count)]
    ts = 1_800_000_000_000 - np.arange(count, dtype=np.int64) * 1000
    event_ids = [str(uuid.UUID(int=i)) for i in range(count)]
    timings = {}
    for label, ids in (("without", None), ("with", event_ids)):
        with Engine(schema, shards=1, backend="local") as engine:
            began = time.perf_counter()
            for start in range(0, count, 1_000_000):
                engine.load_events(EventBatch("page_view", pids[start:start + 1_000_000], ts[start:start + 1_000_000],
                                              {}, None if ids is None else ids[start:start + 1_000_000]))
            timings[label] = time.perf_counter() - began
            if ids is not None:
                events = engine.shards[0].events
                store = events.event_ids
                column = sum(run.eids.nbytes for t in events.types.values() for run in t.runs if run.eids is not None)
                used = (store.size * (8 + 8 + 4 + 4) + len(store.table) * 4 + column)  # logical sizes, no slack
                allocated = store.nbytes - store.buffer.nbytes + column
                id_bytes = sum(len(i) for i in event_ids)
                retried = engine.load_events(EventBatch("page_view", pids[:100_000], ts[:100_000], {}, ids[:100_000]))
                assert retried == 0 and len(store) == count
    return {"event_ids": count, "id_bytes_each": round(id_bytes / count, 1),
            "bytes_each_used": round(used / count, 1), "bytes_each_allocated": round(allocated / count, 1),
            "load_s_without_ids": round(timings["without"], 2), "load_s_with_ids": round(timings["with"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--merge-batches", type=int, default=20)
    parser.add_argument("--erase", type=int, default=10_000)
    parser.add_argument("--aliases", type=int, default=100_000)
    parser.add_argument("--event-ids", type=int, default=1_000_000)
    parser.add_argument("--only-event-ids", action="store_true", help="measure the event ids only")
    parser.add_argument("--only-alias-memory", action="store_true", help="measure the memory of aliases only")
    parser.add_argument("--only-merges", action="store_true", help="measure the merges only")
    args = parser.parse_args()
    now = 1_800_000_000_000
    ds = generate(args.profiles, args.events, seed=1, now_ms=now)
    schema = Schema.from_dict(ds.schema)
    if args.only_alias_memory:
        print("alias memory", bench_alias_memory(schema, args.aliases))
        return
    if args.only_event_ids:
        print("event id memory", bench_event_id_memory(schema, args.event_ids))
        return
    with tempfile.TemporaryDirectory() as data_dir:
        with Engine(schema, shards=args.shards, data_dir=data_dir,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None}) as engine:
            began = time.perf_counter()
            engine.load_profiles(ds.profiles)
            for batch in ds.events:
                engine.load_events(batch)
            print(f"loaded {args.profiles} profiles, {args.events} events in {time.perf_counter() - began:.1f} s")
            # only the ids the benchmark names are kept: millions of id strings held by this process
            # would make every garbage collection of the coordinator walk them (not the engine's cost)
            ids = ds.profiles.ids
            ids = list(ids[:args.merge_batches * args.batch]) + list(ids[len(ids) - args.erase:])
            del ds
            gc.collect()
            print("merges", bench_merges(engine, ids, args.shards, args.merge_batches, args.batch))
            if args.only_merges:
                return
            print("erasure", bench_erasure(engine, ids, args.erase))
            print("export", bench_export(engine, now))
    print("alias memory", bench_alias_memory(schema, args.aliases))
    print("event id memory", bench_event_id_memory(schema, args.event_ids))


if __name__ == "__main__":
    main()
