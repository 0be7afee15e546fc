"""Where a profile's bytes go: RSS per profile of a bulk load, and the bytes of each structure.

``python benchmarks/memory_breakdown.py --profiles 10000000`` generates the benchmark profiles
(``loaders.generator``, ids ``u`` + 8 digits, no events), loads them into ``Engine(shards=1)``
and prints the RSS growth per profile (as compare.py measures it: numba kernels warmed up
first) and the allocated bytes per profile of the id map's arrays, each attribute's column and
bitmaps, and the consent bitmaps.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pyroaring import BitMap, FrozenBitMap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare import rss_bytes  # noqa: E402
from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402

NOW_MS = 1_800_000_000_000


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    n = parser.parse_args().profiles
    dataset = generate(n, 0, seed=7, now_ms=NOW_MS)
    warm = generate(2000, 0, seed=1, now_ms=NOW_MS)
    with Engine(Schema.from_dict(warm.schema), shards=1) as engine:
        engine.load_profiles(warm.profiles)
    gc.collect()
    engine = Engine(Schema.from_dict(dataset.schema), shards=1)
    empty = rss_bytes()
    started = time.perf_counter()
    engine.load_profiles(dataset.profiles)
    seconds = time.perf_counter() - started
    gc.collect()
    print(f"{n:,} profiles: RSS {(rss_bytes() - empty) / n:.1f} B/profile, load {n / seconds:,.0f} profiles/s")
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
    engine.close()


if __name__ == "__main__":
    main()
