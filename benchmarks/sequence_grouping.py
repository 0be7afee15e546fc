"""CPU time of grouping SEQUENCE's gathered events by row: packed int64 keys against three arrays.

    python benchmarks/sequence_grouping.py [--events 1700000] [--rows 236000] [--runs 6] [--repeat 7]

Synthetic events (no engine, so any scale fits in memory): ``--runs`` time-ordered runs whose rows
are drawn with a heavy tail over ``--rows`` candidate rows. Times the pairwise merges by time plus
the counting sort by row of ``engine.exec.sequence_keys`` (one int64 key per event) and of the
three-array path kept for windows too long to pack (``merged_by_time`` + ``group_by_rank``), with
``time.thread_time()``, and checks that both give the same groups. The defaults are the funnel's
figures at 10M profiles (236K candidate rows, 1.7M gathered events).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from engine.exec.grouping import group_by_rank  # noqa: E402
from engine.exec.sequence import merged_by_time  # noqa: E402
from engine.exec.sequence_keys import group_keys, key_layout, merged_keys, packed_keys  # noqa: E402


def cpu_ms(work: Callable[[], object], repeat: int) -> float:
    """Median CPU ms of ``repeat`` calls after a warm-up call."""
    work()
    samples = []
    for _ in range(repeat):
        started = time.thread_time()
        work()
        samples.append((time.thread_time() - started) * 1e3)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_700_000)
    parser.add_argument("--rows", type=int, default=236_000)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    weights = rng.pareto(1.3, args.rows) + 0.05
    window = 30 * 86_400_000
    layout = key_layout(0, window, args.rows, 3)
    assert layout is not None
    columns, keys = [], []
    for size in np.full(args.runs, args.events // args.runs):
        ranks = rng.choice(args.rows, size, p=weights / weights.sum()).astype(np.int64)
        ts = np.sort(rng.integers(0, window, size)).astype(np.int64)
        bits = rng.integers(1, 8, size).astype(np.uint64)
        columns.append((ts, ranks, bits))
        keys.append(packed_keys(ts, ranks, bits, layout))

    def three_arrays() -> tuple:
        runs = list(columns)
        while len(runs) > 1:
            runs.sort(key=lambda run: len(run[0]))
            runs = [merged_by_time(*runs[0], *runs[1]), *runs[2:]]
        return group_by_rank(*runs[0], args.rows)

    def packed() -> tuple:
        runs = list(keys)
        while len(runs) > 1:
            runs.sort(key=len)
            runs = [merged_keys(runs[0], runs[1]), *runs[2:]]
        return group_keys(runs[0], layout.steps, (1 << layout.rank_bits) - 1, args.rows)

    ts, _, offsets = three_arrays()
    grouped, packed_offsets = packed()
    if not (np.array_equal(offsets, packed_offsets) and np.array_equal(ts, grouped >> layout.time_shift)):
        print("MISMATCH")
        return 1
    print(f"{args.events:,} events, {args.rows:,} rows, {args.runs} runs: "
          f"packed keys {cpu_ms(packed, args.repeat):.1f} ms, three arrays {cpu_ms(three_arrays, args.repeat):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
