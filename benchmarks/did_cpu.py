"""CPU time of compare.py's event queries in an in-process engine (one shard).

    python benchmarks/did_cpu.py [--profiles 1000000] [--repeat 7] [--only name1,name2] [--all] [--json out.json]

Generates the compare.py data set (5 events per profile, fixed seed and clock), loads it into
``Engine(shards=1)`` (whose shard runs in the calling thread) and times ``Engine.count`` with
``time.thread_time()``, so a loaded machine changes the figures far less than wall-clock time does.
Each query runs once untimed first (kept structures are built on first use; the script waits for
count levels built in the background), then ``--repeat`` times;
the table shows the count and the median CPU ms. ``--all`` also runs compare.py's attribute and
behaviour queries (all 32 of ``queries.py``). Run the same script against another checkout
(``PYTHONPATH`` at it) to compare revisions; the counts must agree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parent), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402
from queries import NOW_MS, attribute_queries, behaviour_queries, event_queries  # noqa: E402


def settled(eng: Engine, limit_s: float = 120.0) -> None:
    """Wait until no shard builds count levels in the background (the first query that can use them
    starts the build and counts the events meanwhile, as do the queries until they are installed)."""
    deadline = time.monotonic() + limit_s
    while any(shard["levels_building"] for shard in eng.stats()["shards"]) and time.monotonic() < deadline:
        time.sleep(0.1)


def cpu_ms(eng: Engine, query: str, repeat: int) -> tuple[int, float]:
    """(count, median CPU ms of ``repeat`` calls after an untimed first call and any level build it started)."""
    count = eng.count(query, now=NOW_MS)
    if "levels_building" in eng.stats()["shards"][0]:
        settled(eng)
    samples = []
    for _ in range(repeat):
        started = time.thread_time()
        eng.count(query, now=NOW_MS)
        samples.append((time.thread_time() - started) * 1e3)
    return count, statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", help="comma-separated query names")
    parser.add_argument("--all", action="store_true", help="also the attribute and behaviour queries")
    parser.add_argument("--json", help="also write {name: [count, ms]} here")
    args = parser.parse_args()
    chosen = [*attribute_queries(NOW_MS), *event_queries(NOW_MS), *behaviour_queries(NOW_MS)] if args.all \
        else event_queries(NOW_MS)
    queries = [q for q in chosen if not args.only or q.name in args.only.split(",")]
    ds = generate(args.profiles, 5 * args.profiles, seed=7, now_ms=NOW_MS)
    results = {}
    with Engine(Schema.from_dict(ds.schema), shards=1) as eng:
        eng.load_profiles(ds.profiles)
        for batch in ds.events:
            eng.load_events(batch)
        print("| query | count | CPU ms |")
        print("|---|---:|---:|")
        for q in queries:
            count, ms = cpu_ms(eng, q.seg, args.repeat)
            results[q.name] = [count, ms]
            print(f"| {q.name} | {count:,} | {ms:.2f} |", flush=True)
    logs = [ms for _, ms in results.values() if ms > 0]
    if logs:
        print(f"geometric mean: {statistics.geometric_mean(logs):.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
