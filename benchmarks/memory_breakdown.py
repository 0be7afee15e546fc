"""Where a profile's and an event's bytes go: RSS and the bytes of each structure, after a load,
after every compare.py query and after merges and an export.

``python benchmarks/memory_breakdown.py --profiles 2000000 --events 10000000`` generates the
benchmark data set (``loaders.generator``), loads it into ``Engine(shards=1)`` (an in-process shard,
so its structures can be read; numba kernels warmed up first, count levels built synchronously) and
prints, per profile, the RSS growth of the profile load and the bytes of the id map, each attribute's
column and bitmaps and the consent bitmaps; then, per event, the RSS growth since the profile load
(read after ``malloc_trim``: the data held, not the allocator's free pages) and the bytes of every
event structure (``events_breakdown``) and of the shard's DID caches: after the event load, after
every query of ``benchmarks/queries.py`` (plus ``--sequence-all``: a SEQUENCE over all four types
and a year, which reaches every run) and after ``--merges`` merges in batches of 1,000
(sources: generated profiles; targets: other generated profiles, so events move) and one
``export_profile``; the worst case (the measured total with the events deleted by marking at their
bound, ``COMPACT_DEAD_SHARE``); last, the RSS each kept structure holds (``attribute_rss``). With
``--events 0`` only the profile part runs.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("SEGENGINE_LEVELS_SYNC", "1")  # count levels built in the querying thread: measurable

import numpy as np  # noqa: E402
from pyroaring import BitMap, FrozenBitMap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare import rss_bytes  # noqa: E402
from benchmarks.queries import NOW_MS, attribute_queries, behaviour_queries, event_queries  # noqa: E402
from engine import Engine, Schema  # noqa: E402
from engine.store.event_rows import COMPACT_DEAD_SHARE  # noqa: E402
from engine.store.events import EventStore  # noqa: E402
from engine.store.memory import release_free_memory  # noqa: E402
from loaders.generator import generate  # noqa: E402

#: A SEQUENCE that reads every run of every type (the row indexes' worst case).
SEQUENCE_ALL = "SEQUENCE(page_view THEN add_to_cart THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 365d)"
MERGE_BATCH = 1000


def bitmap_bytes(bitmap: BitMap) -> int:
    """Bytes of a bitmap's containers."""
    stats = bitmap.get_statistics()
    return stats["n_bytes_array_containers"] + stats["n_bytes_bitset_containers"] + stats["n_bytes_run_containers"]


def held_bytes(value: Any, depth: int = 0) -> int:
    """Bytes of the arrays and bitmaps ``value`` holds (through dicts, lists and attributes)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (BitMap, FrozenBitMap)):
        return bitmap_bytes(value)
    if isinstance(value, dict):
        return sum(held_bytes(v, depth) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, depth) for v in value)
    if hasattr(value, "__dict__") and depth < 4:
        return sum(held_bytes(v, depth + 1) for v in vars(value).values())
    return 0


def events_breakdown(events: EventStore) -> dict[str, float]:
    """Bytes of each structure of a shard's event store (containers of bitmaps, arrays' bytes)."""
    parts = dict.fromkeys(("runs (live events)", "runs (events deleted by marking)", "day bitmaps + ever",
                           "slot bitmaps", "latest times", "kept bin bitmaps", "count levels (types and bins)",
                           "kept window sums", "row indexes", "event locator", "event ids"), 0.0)
    for typed in events.types.values():
        runs = typed.runs
        stored = sum(held_bytes([run.ts, run.rows, run.props, run.valid, run.eids]) for run in runs)
        held = sum(len(run) for run in runs)
        dead = stored * typed.dead_events / held if held else 0.0
        parts["runs (live events)"] += stored - dead
        parts["runs (events deleted by marking)"] += dead
        parts["day bitmaps + ever"] += held_bytes(typed.days) + bitmap_bytes(typed.ever) + bitmap_bytes(typed.dead)
        parts["slot bitmaps"] += held_bytes(typed.slots)
        parts["latest times"] += typed.last_ts.nbytes if typed.last_ts is not None else 0
        for kept in typed.prop_bitmaps.values():
            levels = kept.levels
            parts["kept bin bitmaps"] += held_bytes(kept.days) + held_bytes(kept.ever)
            parts["count levels (types and bins)"] += held_bytes(levels) if levels is not None else 0
        parts["count levels (types and bins)"] += held_bytes(typed.count_levels) if typed.count_levels else 0
        parts["kept window sums"] += typed.window_sums.nbytes
        parts["row indexes"] += sum(run.row_index.nbytes for run in runs if run.row_index is not None)
    parts["event locator"] = events.locator.nbytes if events.locator is not None else 0
    parts["event ids"] = held_bytes(events.event_ids)
    return parts


def profile_side_bytes(shard: Any) -> int:
    """Bytes of a shard's profile side: the id map's and the aliases' logical arrays and table, every
    attribute index and the consent bitmaps (merges change them: fills, departures, aliases)."""
    store = shard.profiles
    idmap, aliases = store.idmap, shard.aliases
    total = idmap.offsets.view().nbytes + idmap.buffer.view().nbytes + idmap.table.nbytes
    total += aliases.ids.offsets.view().nbytes + aliases.ids.buffer.view().nbytes + aliases.ids.table.nbytes
    total += sum(part.view().nbytes for part in (aliases.target, aliases.next, aliases.head))
    total += sum(held_bytes(vars(index)) for index in store.indexes.values())
    return total + sum(bitmap_bytes(b) for b in [*store.consents.values(), *store.consents_set.values(), store.live])


def trimmed_rss() -> int:
    """RSS after a full GC and ``malloc_trim`` (the data held, not the allocator's free pages)."""
    gc.collect()
    release_free_memory()
    return rss_bytes()


def report_events(label: str, engine: Engine, base_rss: int, n_events: int, base_profiles: int) -> dict[str, float]:
    """Print RSS per event since ``base_rss`` and the bytes per event of each event structure, of the
    shard's DID caches and of the profile side's growth since it held ``base_profiles`` bytes."""
    rss = (trimmed_rss() - base_rss) / n_events
    shard = engine.shards[0]
    parts = {name: size / n_events for name, size in events_breakdown(shard.events).items()}
    parts["DID query caches (window unions, count-level spans)"] = \
        shard.did.cache.nbytes / n_events
    parts["profile side since the profile load"] = (profile_side_bytes(shard) - base_profiles) / n_events
    shown = ", ".join(f"{name} {size:.2f}" for name, size in parts.items() if size >= 0.005)
    print(f"{label}: RSS {rss:.2f} B/event; structures {sum(parts.values()):.2f} = {shown}", flush=True)
    return {"rss": rss, **parts}


def profile_part(engine: Engine, n: int) -> None:
    """Print the bytes per profile of the id map, each attribute and the consents."""
    store = engine.shards[0].profiles
    idmap = store.idmap
    print(f"id map: offsets {idmap.offsets.nbytes / n:.1f} ({idmap.offsets.data.dtype}), ids {idmap.buffer.nbytes / n:.1f}, "
          f"table {idmap.table.nbytes / n:.1f} ({idmap.table.dtype}, {n / len(idmap.table):.0%} full)")
    for name, index in store.indexes.items():
        parts = {key: held_bytes(value) / n for key, value in vars(index).items()}
        shown = ", ".join(f"{key} {size:.2f}" for key, size in parts.items() if size >= 0.01)
        print(f"{name} ({index.kind}): {sum(parts.values()):.2f} = {shown}")
    print(f"consents: {sum(bitmap_bytes(b) for b in store.consents.values()) / n:.2f}, "
          f"live: {bitmap_bytes(store.live) / n:.2f}")


def attribute_rss(engine: Engine, n_events: int) -> None:
    """Print the RSS each kept structure holds, per event: dropped one after another (the query
    scratch, the DID query cache, count levels, bin bitmaps, slot bitmaps, latest times, window
    sums, row indexes) with the RSS read after each (``trimmed_rss``). Unlike the structures' own
    bytes this includes what they cost the allocator (Roaring containers' headers and slack, heap
    pages they leave partly used). The engine is not usable afterwards."""
    shard = engine.shards[0]
    types = list(shard.events.types.values())

    def drop_levels() -> None:
        for typed in types:
            typed.count_levels = None
            for kept in typed.prop_bitmaps.values():
                kept.levels = None

    def drop(attribute: str, empty: Any) -> None:
        for typed in types:
            setattr(typed, attribute, empty() if callable(empty) else empty)

    def drop_row_indexes() -> None:
        for typed in types:
            for run in typed.runs:
                run.row_index = None

    steps = [("query scratch buffers", shard.did.buffers.free.clear), ("DID query cache", shard.did.cache.clear),
             ("count levels", drop_levels), ("kept bin bitmaps", lambda: drop("prop_bitmaps", dict)),
             ("slot bitmaps", lambda: drop("slots", dict)), ("latest times", lambda: drop("last_ts", None)),
             ("kept window sums", lambda: drop("window_sums", lambda: type(types[0].window_sums)())),
             ("row indexes", drop_row_indexes)]
    before = trimmed_rss()
    shown = []
    for name, step in steps:
        step()
        after = trimmed_rss()
        shown.append(f"{name} {(before - after) / n_events:.2f}")
        before = after
    print("RSS held, dropped one by one (B/event): " + ", ".join(shown), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, help="events (default 5 per profile; 0: profiles only)")
    parser.add_argument("--merges", type=int, default=10_000, help="merges after the queries, in batches of 1,000")
    parser.add_argument("--sequence-all", action="store_true", help="also run a SEQUENCE over every type and a year")
    parser.add_argument("--skip", help="comma-separated names of queries.py's queries to leave out")
    args = parser.parse_args()
    n = args.profiles
    n_events = 5 * n if args.events is None else args.events
    dataset = generate(n, n_events, seed=7, now_ms=NOW_MS)
    skipped = set(args.skip.split(",")) if args.skip else set()
    queries = [q for q in [*attribute_queries(), *event_queries(), *behaviour_queries()] if q.name not in skipped]
    warm = generate(2000, 10000, seed=1, now_ms=NOW_MS)
    with Engine(Schema.from_dict(warm.schema), shards=1) as engine:
        engine.load_profiles(warm.profiles)
        for batch in warm.events:
            engine.load_events(batch)
        for query in queries:
            engine.count(query.seg, now=NOW_MS)
        engine.merge_many([(f"u{i:08d}", f"u{i + 1000:08d}") for i in range(10)])
    engine = Engine(Schema.from_dict(dataset.schema), shards=1)
    empty = trimmed_rss()
    started = time.perf_counter()
    engine.load_profiles(dataset.profiles)
    seconds = time.perf_counter() - started
    after_profiles = trimmed_rss()
    print(f"{n:,} profiles: RSS {(after_profiles - empty) / n:.1f} B/profile, load {n / seconds:,.0f} profiles/s")
    profile_part(engine, n)
    profiles_bytes = profile_side_bytes(engine.shards[0])
    if n_events:
        for batch in dataset.events:
            engine.load_events(batch)
        report_events(f"{n_events:,} events loaded", engine, after_profiles, n_events, profiles_bytes)
        for query in queries:
            engine.count(query.seg, now=NOW_MS)
        report_events(f"after the {len(queries)} queries of queries.py", engine, after_profiles, n_events, profiles_bytes)
        if args.sequence_all:
            engine.count(SEQUENCE_ALL, now=NOW_MS)
            report_events("after a SEQUENCE over every type and a year", engine, after_profiles, n_events, profiles_bytes)
        ids = list(dataset.profiles.ids)
        merges = min(args.merges, len(ids) // 2)
        if merges:
            for start in range(0, merges, MERGE_BATCH):
                stop = min(start + MERGE_BATCH, merges)
                engine.merge_many(list(zip(ids[start:stop], ids[merges + start:merges + stop])))
            engine.export_profile(ids[-1])
            last = report_events(f"after {merges:,} merges and one export", engine, after_profiles, n_events,
                                 profiles_bytes)
            bound = last["runs (live events)"] / COMPACT_DEAD_SHARE
            print(f"worst case: RSS {last['rss'] - last['runs (events deleted by marking)'] + bound:.2f} B/event "
                  f"(events deleted by marking at their bound, {bound:.2f} B/event, before compaction)")
        attribute_rss(engine, n_events)
    engine.close()


if __name__ == "__main__":
    main()
