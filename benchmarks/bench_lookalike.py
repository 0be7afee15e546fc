"""Lookalike benchmark: quality (ROC AUC on a planted group) and time (training + scoring everyone).

    python benchmarks/bench_lookalike.py                                   # 1M profiles, 5M events, 2 shards
    python benchmarks/bench_lookalike.py --profiles 10000000 --events 50000000 --seed-size 50000

The generator plants a hidden group (``loaders/planted.py``: twice ``--seed-size`` profiles,
each given each part of ``age BETWEEN 25 AND 40 AND country IN ('ES', 'NL') AND DID(purchase,
COUNT >= 2, WITHIN 30d) AND interests HAS 'travel'`` with probability 0.6). A random half of the
group, as an id list, is the seed; the other half is held out. The timed call ranks every
profile outside the seed and returns the best ``--size``; a second call returns every score, and
the ROC AUC of the held-out half against the non-members is computed from it (scikit-learn).
For comparison it prints the AUC of ranking by each single part of the pattern (in it or not),
by the whole pattern, and of the model with pairwise features (``--pairs N``: the pairs of the N
strongest features). At 10M profiles, returning every score builds 10M Python dicts; ``--auc-within
"SAMPLE(10, 99)"`` scores a uniform 10% of the candidates instead (an unbiased estimate of the AUC).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from sklearn.metrics import roc_auc_score

import engine.lookalike as lookalike
from engine import Engine, Schema
from loaders.generator import generate
from loaders.planted import PARTS, PATTERN, PlantedGroup

NOW = 1_795_168_800_000  # 2026-11-20T10:00:00Z


def load(profiles: int, events: int, seed_size: int, shards: int) -> tuple[Engine, list[str], set[str]]:
    """An engine over a generated dataset with a planted group; the seed half and the held-out half."""
    started = time.perf_counter()
    ds = generate(profiles, events, seed=1, now_ms=NOW, plant=PlantedGroup(share=2 * seed_size / profiles))
    members = np.array(ds.planted)
    order = np.random.default_rng(2).permutation(len(members))
    seed, held_out = sorted(members[order[:seed_size]].tolist()), set(members[order[seed_size:]].tolist())
    generated = time.perf_counter()
    eng = Engine(Schema.from_dict(ds.schema), shards=shards)
    eng.load_profiles(ds.profiles)
    for batch in ds.events:
        eng.load_events(batch)
    print(f"generated in {generated - started:.1f} s, loaded in {time.perf_counter() - generated:.1f} s: "
          f"{profiles:,} profiles, {sum(len(b) for b in ds.events):,} events, {shards} shards, "
          f"planted group {len(members):,}, seed {len(seed):,}")
    return eng, seed, held_out


def auc(result: dict, held_out: set[str]) -> float:
    """ROC AUC of the scores: held-out members against non-members."""
    profiles = result["profiles"]
    return roc_auc_score([p["id"] in held_out for p in profiles], [p["score"] for p in profiles])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed-size", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=10_000, help="profiles returned by the timed call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=0, help="also measure the model with the pairs of N features")
    parser.add_argument("--auc-within", default="ALL", help="candidates of the call that measures the AUC")
    args = parser.parse_args()
    eng, seed, held_out = load(args.profiles, args.events, args.seed_size, args.shards)
    with eng:
        eng.lookalike(seed, size=args.size, now=NOW)  # warm-up (numba, imports)
        times, rounds = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = eng.lookalike(seed, size=args.size, now=NOW)
            times.append(time.perf_counter() - started)
            rounds.append(result["ms"])
        print(f"lookalike, seed {len(seed):,}, top {args.size:,} of {result['candidates']:,}: "
              f"median {statistics.median(times):.2f} s over {args.repeat} (min {min(times):.2f}, max {max(times):.2f}); "
              f"rounds (ms) {rounds[times.index(statistics.median(times))] if args.repeat % 2 else rounds[-1]}")
        print(f"trained on {result['trained_on']}")
        started = time.perf_counter()
        everything = eng.lookalike(seed, within=args.auc_within, threshold=0.0, now=NOW)
        print(f"every score returned ({len(everything['profiles']):,} of {args.auc_within}): "
              f"{time.perf_counter() - started:.2f} s")
        print(f"ROC AUC (held-out half vs non-members): {auc(everything, held_out):.4f}")
        ids = [p["id"] for p in everything["profiles"]]
        labels = [i in held_out for i in ids]
        for part in PARTS + (PATTERN,):
            hits = set(eng.ids(part, now=NOW))
            print(f"  AUC by membership of {part!r}: {roc_auc_score(labels, [i in hits for i in ids]):.4f}")
        print("top features:", ", ".join(f"{t['feature']} ({t['weight']:+.2f})" for t in everything["top_features"][:6]))
        if args.pairs:
            lookalike.PAIR_BASE = args.pairs
            with_pairs = eng.lookalike(seed, within=args.auc_within, threshold=0.0, now=NOW)
            print(f"ROC AUC with {with_pairs['trained_on']['pairs']} pairwise features: {auc(with_pairs, held_out):.4f}")


if __name__ == "__main__":
    main()
