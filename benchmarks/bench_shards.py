"""Sharding benchmark: fan-out overhead, single-query latency and concurrent throughput.

    python benchmarks/bench_shards.py                      # 1M profiles, 5M events
    python benchmarks/bench_shards.py --profiles 200000 --events 1000000 --ray
    python benchmarks/bench_shards.py --queries compare   # compare.py's 28 queries instead of the issue's 4

Configurations: one in-process shard (``local``), one and two worker processes (``process``),
and with ``--ray`` two Ray actors on a local Ray instance. Prints medians (and p90) in
milliseconds, and ratios against the in-process shard.

Every configuration is loaded first and stays loaded (memory for all of them at once); then
each of ``--rounds`` rounds measures every configuration in turn. A ratio is taken within a
round, so that both of its sides ran minutes apart at most on a shared, noisy host; the final
table gives the median of the per-round ratios and their range.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from engine import Engine, Schema

#: Queries that select nothing. The category miss is an empty-bitmap lookup, so it measures the
#: fan-out itself; the int miss also runs a range check over the age index in every shard.
NOTHING = {"fan-out": "country = 'nowhere'", "int miss": "age = -12345"}
QUERIES = {
    "attrs": "country IN ('FR', 'DE') AND age BETWEEN 25 AND 40",
    "tags+consent": "interests HAS 'tech' AND CONSENTED(email)",
    "behaviour": "DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d) AND NOT DID(purchase, WITHIN 7d)",
    "contract": ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 "
                 "AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d) "
                 "AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)"),
}
IDS_QUERY = "country = 'FR' AND vip = TRUE"


def timed(run: Callable[[], object], repeat: int, warmup: int = 3) -> list[float]:
    """Wall times of ``repeat`` runs, in ms."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    """(median, p90) of ``times``."""
    ordered = sorted(times)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]


def throughput(engine: Engine, texts: list[str], now: int, threads: int, seconds: float) -> float:
    """Queries per second with ``threads`` clients running ``texts`` in turn for ``seconds``."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            engine.count(texts[i % len(texts)], now=now)
            i += 1
            done[k] += 1

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - started)


def dataset(profiles: int, events: int):
    """The generator's dataset (loaders.generator)."""
    from loaders.generator import generate

    return generate(profiles=profiles, events=events, seed=1)


def compare_queries(now: int) -> dict[str, str]:
    """compare.py's 28 queries (benchmarks/queries.py) at clock ``now``, by name."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from queries import all_queries

    return {query.name: query.seg for query in all_queries(now)}


def measure(engine: Engine, now: int, args: argparse.Namespace, queries: dict[str, str]) -> dict[str, float]:
    """One round of every figure on ``engine``, printed as it comes: latency medians (ms) and
    throughputs (queries/s)."""
    row: dict[str, float] = {}
    for label, text in NOTHING.items():
        median, p90 = summary(timed(lambda: engine.count(text, now=now), args.overhead_repeat, 200))
        row[label] = median
        print(f"{label:<8} ({text}): median {median:.3f} ms, p90 {p90:.3f} ms")
    width = max(map(len, queries))
    for label, text in queries.items():
        count = engine.count(text, now=now)
        median, p90 = summary(timed(lambda: engine.count(text, now=now), args.repeat))
        row[label] = median
        print(f"count {label:<{width}} = {count:>9,}: median {median:8.3f} ms, p90 {p90:8.3f} ms")
    size = len(engine.ids(IDS_QUERY, now=now))
    median, p90 = summary(timed(lambda: engine.ids(IDS_QUERY, now=now), max(5, args.repeat // 3)))
    row["ids"] = median
    print(f"ids   {'(' + format(size, ',') + ' ids)':<13}: median {median:8.3f} ms, p90 {p90:8.3f} ms")
    for label, texts in (("qps mixed", list(queries.values())), ("qps nothing", [NOTHING["fan-out"]])):
        row[label] = throughput(engine, texts, now, args.threads, args.seconds)
        print(f"{label}, {args.threads} threads: {row[label]:,.0f} queries/s")
    return row


def print_ratios(title: str, rounds: dict[str, list[dict[str, float]]]) -> None:
    """Per figure, each configuration's median over the rounds of its per-round ratio to the
    first configuration (and the range of those ratios when there are several rounds)."""
    names = list(rounds)
    base = rounds[names[0]]
    print(f"\n== {title} (latency: lower is better; qps: higher is better)")
    width = max(12, *map(len, base[0]))
    print(f"{'':>{width}}  " + "  ".join(f"{name:>16}" for name in names))
    for metric in base[0]:
        cells = []
        for name in names:
            ratios = sorted(row[metric] / ref[metric] for row, ref in zip(rounds[name], base))
            text = f"{statistics.median(ratios):.2f}"
            if len(ratios) > 1:
                text += f" ({ratios[0]:.2f}-{ratios[-1]:.2f})"
            cells.append(f"{text:>16}")
        print(f"{metric:>{width}}  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=100, help="runs per latency figure")
    parser.add_argument("--overhead-repeat", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each measures every configuration in turn (all stay loaded)")
    parser.add_argument("--ray", action="store_true", help="also run two Ray actors (local instance)")
    parser.add_argument("--queries", choices=["issue", "compare"], default="issue",
                        help="the four queries of the sharding issue, or compare.py's 28 (benchmarks/queries.py)")
    parser.add_argument("--configs", default="local x1,process x1,process x2",
                        help="comma-separated configurations to run (the first is the baseline of the ratios)")
    args = parser.parse_args()

    started = time.perf_counter()
    ds = dataset(args.profiles, args.events)
    print(f"dataset: {args.profiles:,} profiles, {args.events:,} events ({time.perf_counter() - started:.1f} s)")
    schema = Schema.from_dict(ds.schema)
    configs = [("local x1", 1, "local"), ("process x1", 1, "process"), ("process x2", 2, "process")]
    if args.ray:
        configs.append(("ray x2", 2, "ray"))
    wanted = [name.strip() for name in args.configs.split(",")] + (["ray x2"] if args.ray else [])
    configs = sorted((c for c in configs if c[0] in wanted), key=lambda c: wanted.index(c[0]))

    engines: dict[str, Engine] = {}
    try:
        for name, shards, backend in configs:
            started = time.perf_counter()
            engine = engines[name] = Engine(schema, shards=shards, backend=backend)
            engine.load_profiles(ds.profiles)
            for batch in ds.events:
                engine.load_events(batch)
            print(f"{name}: started and loaded in {time.perf_counter() - started:.1f} s")
        now = ds.now_ms
        queries = QUERIES if args.queries == "issue" else compare_queries(now)
        del ds
        gc.collect()
        gc.freeze()  # the loaded data is never collected: no full collection walks it mid-measurement
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
        for index in range(args.rounds):
            for name, engine in engines.items():
                print(f"\n== round {index + 1} of {args.rounds}: {name}")
                rounds[name].append(measure(engine, now, args, queries))
            if args.rounds > 1:
                print_ratios(f"round {index + 1}: ratios against {configs[0][0]}",
                             {name: rows[-1:] for name, rows in rounds.items()})
        print_ratios(f"ratios against {configs[0][0]}, median of {args.rounds} round{'s' * (args.rounds > 1)}", rounds)
    finally:
        for engine in engines.values():
            engine.close()


if __name__ == "__main__":
    main()
