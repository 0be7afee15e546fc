"""Analytics benchmarks: breakdown and overlap against count, and why (docs/analytics.md).

    python benchmarks/bench_analytics.py                                   # 1M profiles, 5M events, 2 shards
    python benchmarks/bench_analytics.py --profiles 10000000 --events 50000000

On an in-memory engine (``--shards`` worker processes) loaded with the generator's dataset at a
fixed clock, it measures (medians of ``--repeat`` runs, the compared calls interleaved so that
the machine's load affects them alike):

1. ``count`` of the contract example against ``breakdown`` of the same query by ``country``
   (category) and by ``interests`` (tags), and the same for a broad query (``CONSENTED(email)``);
2. ``overlap`` of 10 saved segments (attributes, tags, consent, event windows, a sample);
3. ``why(id, contract example)``: the truth tree alone (``events=False``) and with the deciding
   events, over ids inside and outside the segment.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402

NOW_MS = 1_790_000_000_000
CONTRACT_EXAMPLE = ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 "
                    "AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d) "
                    "AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)")
BROAD = "CONSENTED(email)"
SEGMENTS = {
    "fr": "country = 'FR'",
    "de_es": "country IN ('DE', 'ES')",
    "vip": "vip = TRUE",
    "email": "CONSENTED(email)",
    "tech": "interests HAS 'tech'",
    "age_25_40": "age BETWEEN 25 AND 40",
    "buyers_30d": "DID(purchase, WITHIN 30d)",
    "abandoners_7d": "DID(cart_abandoned, WITHIN 7d) AND NOT DID(purchase, AFTER LAST cart_abandoned)",
    "sample_10": "SAMPLE(10, 7)",
    "big_carts": "cart_value > 100",
}


def ms(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def interleaved(calls: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median ms of each call, the calls run in turn ``repeat`` times (after one warm-up round)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            times[name].append(ms(call))
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def bench_breakdown(engine: Engine, query: str, repeat: int) -> dict[str, float]:
    medians = interleaved({
        "count": lambda: engine.count(query, now=NOW_MS),
        "by_country": lambda: engine.breakdown(query, "country", now=NOW_MS),
        "by_interests": lambda: engine.breakdown(query, "interests", now=NOW_MS),
        "by_age_bins": lambda: engine.breakdown(query, "age", now=NOW_MS, bins=[0, 18, 25, 35, 45, 55, 65, 120]),
    }, repeat)
    for key in ("by_country", "by_interests", "by_age_bins"):
        medians[f"{key}_minus_count"] = round(medians[key] - medians["count"], 3)
    medians["members"] = engine.count(query, now=NOW_MS)
    return medians


def bench_overlap(engine: Engine, repeat: int) -> dict[str, float]:
    for name, query in SEGMENTS.items():
        engine.create_segment(name, query)
    texts = [f"SEGMENT('{name}')" for name in SEGMENTS]
    medians = interleaved({"overlap_10_segments": lambda: engine.overlap(texts, now=NOW_MS),
                           "count_1_segment": lambda: engine.count(texts[0], now=NOW_MS)}, repeat)
    medians["overlap_10_queries"] = interleaved({"q": lambda: engine.overlap(list(SEGMENTS.values()), now=NOW_MS)},
                                                max(3, repeat // 3))["q"]
    return medians


def bench_why(engine: Engine, ids: list[str], repeat: int) -> dict[str, Any]:
    rng = random.Random(5)
    members = engine.ids(CONTRACT_EXAMPLE, now=NOW_MS)
    picked = rng.sample(members, min(len(members), repeat // 2)) + rng.sample(ids, repeat - min(len(members), repeat // 2))
    tree, events, count = [], [], []
    for pid in picked:
        tree.append(ms(lambda: engine.why(pid, CONTRACT_EXAMPLE, now=NOW_MS, events=False)))
        events.append(ms(lambda: engine.why(pid, CONTRACT_EXAMPLE, now=NOW_MS)))
        count.append(ms(lambda: engine.count(CONTRACT_EXAMPLE, now=NOW_MS)))
    return {"ids": len(picked), "members_among_them": min(len(members), repeat // 2),
            "tree_ms_p50": round(statistics.median(tree), 3), "tree_ms_max": round(max(tree), 3),
            "with_events_ms_p50": round(statistics.median(events), 3), "with_events_ms_max": round(max(events), 3),
            "count_ms_p50": round(statistics.median(count), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30, help="runs per measured call (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    ds = generate(args.profiles, args.events, seed=args.seed, now_ms=NOW_MS)
    report: dict[str, Any] = {"profiles": args.profiles, "events": args.events, "shards": args.shards,
                              "machine": f"{platform.machine()} {platform.processor() or ''} python "
                                         f"{platform.python_version()}".strip()}
    with Engine(Schema.from_dict(ds.schema), shards=args.shards) as engine:
        engine.clock = lambda: NOW_MS
        engine.load_profiles(ds.profiles)
        for batch in ds.events:
            engine.load_events(batch)
        report["load_s"] = round(time.perf_counter() - started, 1)
        report["breakdown_contract_example"] = bench_breakdown(engine, CONTRACT_EXAMPLE, args.repeat)
        report["breakdown_broad"] = bench_breakdown(engine, BROAD, max(5, args.repeat // 3))
        report["overlap"] = bench_overlap(engine, args.repeat)
        report["why"] = bench_why(engine, list(ds.profiles.ids[:100_000]), args.repeat)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
