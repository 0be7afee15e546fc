"""Member export: a saved segment of N members with 3 attributes written as Parquet, CSV and JSON Lines.

    python benchmarks/bench_export.py --profiles 1000000 --shards 2

Loads ``--profiles`` generated profiles (no events), saves the segment ``ALL`` (every profile a
member), then times ``Engine.export_members`` of ``country``, ``age`` and ``interests`` to a file
in each format (median of ``--repeat`` runs) and reports the rows per second and the file size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402

ATTRIBUTES = ["country", "age", "interests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", default="parquet,csv,jsonl")
    args = parser.parse_args()
    ds = generate(args.profiles, 0, seed=1, now_ms=1_800_000_000_000)
    with Engine(Schema.from_dict(ds.schema), shards=args.shards) as engine, tempfile.TemporaryDirectory() as out:
        engine.load_profiles(ds.profiles)
        info = engine.create_segment("everyone", "ALL")
        print(f"{info['count']} members, {args.shards} shards, attributes {', '.join(ATTRIBUTES)}")
        for fmt in args.formats.split(","):
            path = os.path.join(out, f"members.{fmt}")
            times = []
            for _ in range(args.repeat):
                began = time.perf_counter()
                rows = engine.export_members(path, ATTRIBUTES, fmt, segment="everyone")
                times.append(time.perf_counter() - began)
            median = statistics.median(times)
            print(f"{fmt:8s} {median:6.2f} s median of {args.repeat} ({min(times):.2f}-{max(times):.2f}), "
                  f"{rows / median:,.0f} rows/s, {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
