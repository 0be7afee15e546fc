"""segengine vs DuckDB vs a NumPy/numba scan on the same generated data.

    python benchmarks/compare.py [--profiles 1000000] [--events 5000000] [--repeat 15] [--shards 1] [--also-shards 2]
                                 [--clients 4] [--qps-seconds 3] [--only attr|events] [--json out.json]
                                 [--profile-query NAME]

Generates a dataset (fixed seed and clock), bulk-loads it into segengine (reporting load rates
and resident memory per profile / per event), DuckDB and the NumPy baseline, checks that the
three agree on every query's count (a disagreement prints MISMATCH and the exit status is 1),
then times each query (median of --repeat runs after one warm-up run) and prints a table, and
the throughput of --clients threads running every query in turn (for each shard count).
Finally it measures segengine's planning + dispatch overhead: a 2-predicate count through
``Engine.count`` against a bare pyroaring ``intersection_cardinality`` of the same two bitmaps.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parent), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import psutil  # noqa: E402

from baselines import DuckDBBaseline, NumpyBaseline, event_pids, profile_hashes  # noqa: E402
from bench_shards import throughput  # noqa: E402
from engine import Engine, Schema  # noqa: E402
from engine.store.memory import release_free_memory  # noqa: E402
from loaders.generator import generate  # noqa: E402
from queries import NOW_MS, Query, all_queries  # noqa: E402

OVERHEAD_QUERY = "country = 'FR' AND CONSENTED(email)"


def rss_bytes() -> int:
    """Resident memory of this process and all its children (shard workers), after a full GC."""
    gc.collect()
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def settled(engine: Engine, limit_s: float = 300.0) -> float:
    """Wait until ``engine``'s shards build nothing in the background (the count levels a query's
    first run started building: engine/store/levels_build.py), at most ``limit_s``; the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if not any(shard.get("levels_building") for shard in engine.stats()["shards"]):
            break
        time.sleep(0.1)
    return time.perf_counter() - started


def timed(fn, repeat: int, engine: Engine | None = None) -> tuple[float, float, object]:
    """(first-call ms, median ms over ``repeat`` further calls, first result); with ``engine``, the
    further calls wait until what the first one started building in the background is built."""
    started = time.perf_counter()
    result = fn()
    first = (time.perf_counter() - started) * 1e3
    if engine is not None:
        settled(engine)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e3)
    return first, statistics.median(samples), result


def warm_up_jit(schema: Schema, shards: int, queries: list[Query], now: int) -> None:
    """Compile (or load from cache) every numba kernel on a tiny dataset, outside the measurements."""
    tiny = generate(2000, 10000, seed=1, now_ms=now)
    with Engine(schema, shards=shards) as eng:
        eng.load_profiles(tiny.profiles)
        for batch in tiny.events:
            eng.load_events(batch)
        for q in queries:
            eng.count(q.seg, now=now)
    nb = NumpyBaseline(tiny)
    for q in queries:
        q.scan(nb, now)


def other_clocks(dataset, now: int, k: int) -> list[int]:
    """Query clocks other than the data's: 2.5 days earlier (newer events must not count), then
    exactly the timestamps of a few events (the ts <= now edge), alternating between types."""
    clocks = [now - 2 * 86_400_000 - 43_210_123]
    batches = [b for b in dataset.events if len(b)]
    for i in range(max(k - 1, 0)):
        if not batches:
            break
        batch = batches[i % len(batches)]
        clocks.append(int(batch.ts[(i * 7919) % len(batch)]))
    return clocks[:k]


def load_engine(dataset, shards: int) -> tuple[Engine, dict]:
    """Bulk-load ``dataset`` into a fresh engine; returns it and the load figures."""
    schema = Schema.from_dict(dataset.schema)
    gc.collect()
    release_free_memory()  # the baseline without the generator's freed memory, so the deltas are the engine's
    base = rss_bytes()
    eng = Engine(schema, shards=shards)
    empty = rss_bytes()
    started = time.perf_counter()
    eng.load_profiles(dataset.profiles)
    profile_s = time.perf_counter() - started
    after_profiles = rss_bytes()
    n_events = 0
    started = time.perf_counter()
    for batch in dataset.events:
        eng.load_events(batch)
        n_events += len(batch)
    event_s = time.perf_counter() - started
    after_events = rss_bytes()
    n_profiles = len(dataset.profiles)
    return eng, {
        "profiles": n_profiles,
        "events": n_events,
        "profile_load_s": profile_s,
        "event_load_s": event_s,
        "profiles_per_s": n_profiles / profile_s if profile_s else 0.0,
        "events_per_s": n_events / event_s if event_s else 0.0,
        "engine_start_rss_bytes": empty - base,
        "bytes_per_profile": (after_profiles - empty) / max(n_profiles, 1),
        "bytes_per_event": (after_events - after_profiles) / max(n_events, 1),
    }


def overhead(eng: Engine, now: int, loops: int = 3000) -> dict | None:
    """Engine.count of a 2-bitmap AND vs the bare pyroaring intersection_cardinality (shards=1 only)."""
    shard = eng.shards[0]
    if eng.n_shards != 1 or not hasattr(shard, "profiles"):
        return None
    a = shard.profiles.indexes["country"].eq("FR")
    b = shard.profiles.consents["email"]
    bare_count = a.intersection_cardinality(b)
    engine_count = eng.count(OVERHEAD_QUERY, now=now)

    def per_call_us(fn) -> float:
        samples = []
        for _ in range(loops):
            started = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - started)
        return statistics.median(samples) / 1e3

    for _ in range(100):
        eng.count(OVERHEAD_QUERY, now=now)
    engine_us = per_call_us(lambda: eng.count(OVERHEAD_QUERY, now=now))
    bare_us = per_call_us(lambda: a.intersection_cardinality(b))
    return {"query": OVERHEAD_QUERY, "engine_us": engine_us, "bare_us": bare_us,
            "ratio": engine_us / bare_us if bare_us else float("inf"), "overhead_us": engine_us - bare_us,
            "engine_count": engine_count, "bare_count": bare_count}


def geometric_means(rows: list[dict]):
    """(kind, geo) per query kind present, where geo(key) is the geometric mean of that column."""
    for kind in ("attr", "events"):
        subset = [r for r in rows if r["kind"] == kind]
        if subset:
            yield kind, lambda key, subset=subset: statistics.geometric_mean([r[key] for r in subset])


def markdown(report: dict) -> str:
    """The load figures, the query table and the overhead probe of ``report`` as Markdown."""
    a, load = report["args"], report["segengine_load"]
    base = report["baseline_load"]
    lines = [
        f"Scale: {a['profiles']:,} profiles, {a['events']:,} events, shards={a['shards']}, "
        f"median of {a['repeat']} runs after a warm-up, {report['machine']['cpus']} CPUs.",
        "",
        "| load | profiles/s | events/s | RSS B/profile | RSS B/event |",
        "|---|---:|---:|---:|---:|",
        f"| segengine | {load['profiles_per_s']:,.0f} | {load['events_per_s']:,.0f} | "
        f"{load['bytes_per_profile']:.1f} | {load['bytes_per_event']:.1f} |",
        "",
        f"Baselines: DuckDB load {base['duckdb']['profile_load_s']:.1f} s + {base['duckdb']['event_load_s']:.1f} s, "
        f"RSS {base['duckdb']['rss_bytes'] / 2**20:,.0f} MiB; NumPy load {base['numpy']['profile_load_s']:.1f} s + "
        f"{base['numpy']['event_load_s']:.1f} s, RSS {base['numpy']['rss_bytes'] / 2**20:,.0f} MiB "
        f"(plus {base['id_resolution_s']:.1f} s of shared id resolution and hashing).",
        "",
        "| query | kind | count | segengine ms | seg first ms | DuckDB ms | NumPy ms | DuckDB/seg | NumPy/seg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["queries"]:
        flag = "" if r["agree"] else " **MISMATCH**"
        lines.append(f"| {r['name']}{flag} | {r['kind']} | {r['count']:,} | {r['segengine_ms']:.3f} | "
                     f"{r['segengine_first_ms']:.3f} | {r['duckdb_ms']:.2f} | {r['numpy_ms']:.2f} | "
                     f"{r['duckdb_over_segengine']:.1f}x | {r['numpy_over_segengine']:.1f}x |")
    for kind, geo in geometric_means(report["queries"]):
        lines.append(f"| *geometric mean* | {kind} | | {geo('segengine_ms'):.3f} | {geo('segengine_first_ms'):.3f} | "
                     f"{geo('duckdb_ms'):.2f} | {geo('numpy_ms'):.2f} | {geo('duckdb_over_segengine'):.1f}x | "
                     f"{geo('numpy_over_segengine'):.1f}x |")
    sharded = report.get("sharded")
    if sharded:
        n, load = sharded["shards"], sharded["load"]
        lines += ["", f"The same queries with shards={n} (worker processes): load {load['profiles_per_s']:,.0f} "
                      f"profiles/s, {load['events_per_s']:,.0f} events/s; RSS of all processes "
                      f"{load['bytes_per_profile']:.1f} B/profile, {load['bytes_per_event']:.1f} B/event.", "",
                  f"| query | kind | x{n} ms | x{n} first ms | x1 ms | x1/x{n} | DuckDB/seg | NumPy/seg |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in report["queries"]:
            lines.append(f"| {r['name']} | {r['kind']} | {r['sharded_ms']:.3f} | {r['sharded_first_ms']:.3f} | "
                         f"{r['segengine_ms']:.3f} | {r['segengine_ms'] / r['sharded_ms']:.2f}x | "
                         f"{r['duckdb_over_sharded']:.1f}x | {r['numpy_over_sharded']:.1f}x |")
        for kind, geo in geometric_means(report["queries"]):
            lines.append(f"| *geometric mean* | {kind} | {geo('sharded_ms'):.3f} | {geo('sharded_first_ms'):.3f} | "
                         f"{geo('segengine_ms'):.3f} | | {geo('duckdb_over_sharded'):.1f}x | "
                         f"{geo('numpy_over_sharded'):.1f}x |")
    qps, sharded_qps = report.get("throughput"), (sharded or {}).get("throughput")
    if qps:
        line = (f"Throughput, {qps['clients']} client threads running every query in turn for {qps['seconds']:g} s: "
                f"{qps['qps']:,.0f} counts/s with shards={qps['shards']}")
        if sharded_qps:
            line += (f", {sharded_qps['qps']:,.0f} with shards={sharded_qps['shards']} "
                     f"({sharded_qps['qps'] / qps['qps']:.2f}x)")
        lines += ["", line + "."]
    cost = report.get("overhead")
    if cost:
        lines += ["", f"Planning + dispatch overhead (`{cost['query']}`): `Engine.count` {cost['engine_us']:.1f} µs vs "
                      f"bare `intersection_cardinality` {cost['bare_us']:.1f} µs: {cost['ratio']:.1f}x "
                      f"(+{cost['overhead_us']:.1f} µs per query)."]
    return "\n".join(lines) + "\n"


def sharded_run(dataset, shards: int, queries: list[Query], rows: list[dict], counts: dict, now: int, repeat: int,
                mismatches: list[str]) -> dict:
    """Load a ``shards``-shard engine, check every count against the first run, time each query."""
    eng, load = load_engine(dataset, shards)
    print(f"\n# segengine with shards={shards}: load {load['profiles_per_s']:,.0f} profiles/s, "
          f"{load['events_per_s']:,.0f} events/s; RSS (all processes) {load['bytes_per_profile']:.1f} B/profile, "
          f"{load['bytes_per_event']:.1f} B/event", flush=True)
    header = (f"{'query':<28} {'kind':<6} {'seg ms':>9} {'seg 1st':>9} {'x1 ms':>9} {'x1/xN':>7} {'duck/seg':>9} "
              f"{'numpy/seg':>9}")
    print(header + "\n" + "-" * len(header), flush=True)
    for q, row in zip(queries, rows):
        got = eng.count(q.seg, now=now)
        if got != counts[q.name][0]:
            mismatches.append(f"{q.name}@shards={shards}")
            print(f"!!! MISMATCH {q.name} with shards={shards}: {got} vs {counts[q.name][0]}", flush=True)
        first, ms, _ = timed(lambda: eng.count(q.seg, now=now), repeat, eng)
        row.update({"sharded_ms": ms, "sharded_first_ms": first, "duckdb_over_sharded": row["duckdb_ms"] / ms,
                    "numpy_over_sharded": row["numpy_ms"] / ms})
        print(f"{q.name:<28} {q.kind:<6} {ms:>9.3f} {first:>9.3f} {row['segengine_ms']:>9.3f} "
              f"{row['segengine_ms'] / ms:>6.2f}x {fmt_ratio(row['duckdb_over_sharded'])} "
              f"{fmt_ratio(row['numpy_over_sharded'])}", flush=True)
    return {"shards": shards, "load": load, "engine": eng}


def measure_throughput(eng: Engine, shards: int, queries: list[Query], now: int, clients: int,
                       seconds: float) -> dict | None:
    """Counts per second with ``clients`` threads running every query in turn for ``seconds``."""
    if seconds <= 0:
        return None
    qps = throughput(eng, [q.seg for q in queries], now, clients, seconds)
    print(f"throughput, shards={shards}, {clients} client threads, the {len(queries)} queries in turn: "
          f"{qps:,.0f} counts/s", flush=True)
    return {"shards": shards, "clients": clients, "seconds": seconds, "qps": qps}


def client_counts(text: str) -> list[int]:
    """``--clients``: one count or a comma list of positive counts."""
    counts = [int(part) for part in text.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive client counts, got {text!r}")
    return counts


def fmt_ratio(x: float) -> str:
    return f"{x:8.1f}x" if x < 1000 else f"{x:8.0f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--also-shards", type=int, default=0,
                        help="then load a second segengine with this many shards (worker processes), check its "
                             "counts and time it against the same baselines (a second table)")
    parser.add_argument("--only", choices=("attr", "events"))
    parser.add_argument("--names", help="comma-separated names of the queries to run (default: all)")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--markdown", dest="markdown_out", help="also write the results as a Markdown table")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--now-ms", type=int, default=NOW_MS, help="the data's clock, passed to every query")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="DuckDB threads")
    parser.add_argument("--clients", type=client_counts, default=[4],
                        help="client threads of the throughput run (every query in turn, counts); a comma list "
                             "(1,2,4) runs one throughput run per count")
    parser.add_argument("--qps-seconds", type=float, default=3.0, help="length of each throughput run (0: skip)")
    parser.add_argument("--extra-clocks", type=int, default=2,
                        help="also check the counts (untimed) at this many other clocks: before the newest events "
                             "and exactly at an event's timestamp (tests ts <= now and the window edges)")
    parser.add_argument("--profile-query", action="append", default=[],
                        help="cProfile segengine on this query (by name) and print the top functions")
    args = parser.parse_args(argv)
    now = args.now_ms

    names = set(args.names.split(",")) if args.names else None
    queries = [q for q in all_queries(now) if (args.only is None or q.kind == args.only)
               and (names is None or q.name in names)]
    if names is not None and len(queries) != len(names):
        parser.error(f"unknown query names: {sorted(names - {q.name for q in queries})}")
    report: dict = {"args": vars(args), "machine": {"cpus": os.cpu_count(),
                                                    "ram_bytes": psutil.virtual_memory().total}}
    print(f"# segengine benchmark: {args.profiles:,} profiles, {args.events:,} events, shards={args.shards}, "
          f"repeat={args.repeat}, now_ms={now}, {os.cpu_count()} CPUs", flush=True)

    started = time.perf_counter()
    dataset = generate(args.profiles, args.events, seed=args.seed, now_ms=now)
    print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)

    warm_up_jit(Schema.from_dict(dataset.schema), args.shards, queries, now)

    eng, load = load_engine(dataset, args.shards)
    report["segengine_load"] = load
    print(f"segengine load: {load['profiles_per_s']:,.0f} profiles/s ({load['profile_load_s']:.2f} s), "
          f"{load['events_per_s']:,.0f} events/s ({load['event_load_s']:.2f} s); "
          f"RSS {load['bytes_per_profile']:.1f} B/profile, {load['bytes_per_event']:.1f} B/event", flush=True)

    # Shared preparation of the baselines: SAMPLE hashes and event -> profile row numbers.
    started = time.perf_counter()
    hashes = profile_hashes(dataset.profiles.ids)
    row_of = {pid: row for row, pid in enumerate(dataset.profiles.ids)}
    pids = [event_pids(batch, row_of) for batch in dataset.events]
    del row_of
    prep_s = time.perf_counter() - started
    before = rss_bytes()
    duck = DuckDBBaseline(dataset, threads=args.threads, hashes=hashes, pids=pids)
    duck_rss = rss_bytes() - before
    before = rss_bytes()
    scan = NumpyBaseline(dataset, hashes=hashes, pids=pids)
    scan_rss = rss_bytes() - before
    report["baseline_load"] = {
        "id_resolution_s": prep_s,
        "duckdb": {"profile_load_s": duck.profile_seconds, "event_load_s": duck.event_seconds, "rss_bytes": duck_rss},
        "numpy": {"profile_load_s": scan.profile_seconds, "event_load_s": scan.event_seconds, "rss_bytes": scan_rss},
    }
    print(f"baselines: id resolution {prep_s:.1f} s (shared); DuckDB load {duck.profile_seconds:.1f} + "
          f"{duck.event_seconds:.1f} s, RSS {duck_rss / 2**20:,.0f} MiB; NumPy load {scan.profile_seconds:.1f} + "
          f"{scan.event_seconds:.1f} s, RSS {scan_rss / 2**20:,.0f} MiB", flush=True)

    # Correctness first: all three must agree on every count.
    mismatches = []
    counts = {}
    for q in queries:
        got = (eng.count(q.seg, now=now), duck.count(q.sql, now), int(q.scan(scan, now).sum()))
        counts[q.name] = got
        if len(set(got)) != 1:
            mismatches.append(q.name)
            print(f"!!! MISMATCH {q.name}: segengine={got[0]} duckdb={got[1]} numpy={got[2]}\n    {q.seg}",
                  flush=True)
    print(f"counts checked: {len(queries) - len(mismatches)}/{len(queries)} agree", flush=True)
    for clock in other_clocks(dataset, now, args.extra_clocks):
        bad = 0
        for q in queries:
            got = (eng.count(q.seg, now=clock), duck.count(q.sql, clock), int(q.scan(scan, clock).sum()))
            if len(set(got)) != 1:
                bad += 1
                mismatches.append(f"{q.name}@{clock}")
                print(f"!!! MISMATCH {q.name} at now={clock}: segengine={got[0]} duckdb={got[1]} numpy={got[2]}",
                      flush=True)
        print(f"counts at now={clock} ({(clock - now) / 3.6e6:+.2f} h): {len(queries) - bad}/{len(queries)} agree",
              flush=True)

    rows = []
    header = (f"{'query':<28} {'kind':<6} {'count':>9} {'seg ms':>9} {'seg 1st':>9} {'duck ms':>9} "
              f"{'numpy ms':>9} {'duck/seg':>9} {'numpy/seg':>9}")
    print("\n" + header + "\n" + "-" * len(header), flush=True)
    for q in queries:
        seg_first, seg_ms, _ = timed(lambda: eng.count(q.seg, now=now), args.repeat, eng)
        duck_first, duck_ms, _ = timed(lambda: duck.count(q.sql, now), args.repeat)
        np_first, np_ms, _ = timed(lambda: int(q.scan(scan, now).sum()), args.repeat)
        row = {"name": q.name, "kind": q.kind, "seg": q.seg, "count": counts[q.name][0],
               "segengine_ms": seg_ms, "segengine_first_ms": seg_first, "duckdb_ms": duck_ms,
               "duckdb_first_ms": duck_first, "numpy_ms": np_ms, "numpy_first_ms": np_first,
               "duckdb_over_segengine": duck_ms / seg_ms, "numpy_over_segengine": np_ms / seg_ms,
               "agree": q.name not in mismatches}
        rows.append(row)
        flag = "" if row["agree"] else "  MISMATCH"
        print(f"{q.name:<28} {q.kind:<6} {row['count']:>9} {seg_ms:>9.3f} {seg_first:>9.3f} {duck_ms:>9.2f} "
              f"{np_ms:>9.2f} {fmt_ratio(row['duckdb_over_segengine'])} {fmt_ratio(row['numpy_over_segengine'])}{flag}",
              flush=True)
    report["queries"] = rows

    for kind, geo in geometric_means(rows):
        print(f"geometric mean ({kind}): segengine {geo('segengine_ms'):.3f} ms, duckdb {geo('duckdb_ms'):.2f} ms, "
              f"numpy {geo('numpy_ms'):.2f} ms; duck/seg {geo('duckdb_over_segengine'):.1f}x, "
              f"numpy/seg {geo('numpy_over_segengine'):.1f}x")

    report["throughput_by_clients"] = [measure_throughput(eng, args.shards, queries, now, clients, args.qps_seconds)
                                       for clients in args.clients]
    report["throughput"] = report["throughput_by_clients"][-1]

    cost = overhead(eng, now)
    report["overhead"] = cost
    if cost is None:
        print("\nplanning+dispatch overhead: skipped (needs --shards 1 with an in-process shard)")
    else:
        print(f"\nplanning+dispatch overhead ({cost['query']}): Engine.count {cost['engine_us']:.1f} us vs bare "
              f"intersection_cardinality {cost['bare_us']:.1f} us -> ratio {cost['ratio']:.1f}x "
              f"(+{cost['overhead_us']:.1f} us per query; counts {cost['engine_count']} / {cost['bare_count']})")
        if cost["engine_count"] != cost["bare_count"]:
            print("!!! MISMATCH overhead probe: engine and bare bitmap counts differ")
            mismatches.append("overhead_probe")

    if args.also_shards:
        eng.close()
        report["sharded"] = sharded_run(dataset, args.also_shards, queries, rows, counts, now, args.repeat,
                                        mismatches)
        eng = report["sharded"].pop("engine")
        report["sharded"]["throughput"] = measure_throughput(eng, args.also_shards, queries, now, args.clients[-1],
                                                             args.qps_seconds)

    by_name = {q.name: q for q in queries}
    for name in args.profile_query:
        q = by_name.get(name)
        if q is None:
            print(f"--profile-query: unknown query {name!r}")
            continue
        print(f"\n# cProfile of segengine on {name} (x{max(args.repeat, 1)}): {q.seg}")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(max(args.repeat, 1)):
            eng.count(q.seg, now=now)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(18)

    report["mismatches"] = mismatches
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\npeak RSS of this process: {report['peak_rss_bytes'] / 2**30:.2f} GiB")
    if args.markdown_out:
        Path(args.markdown_out).write_text(markdown(report))
        print(f"wrote {args.markdown_out}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_out}")
    duck.close()
    eng.close()
    if mismatches:
        print(f"\n!!! MISMATCH in {len(mismatches)} queries: {', '.join(mismatches)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
