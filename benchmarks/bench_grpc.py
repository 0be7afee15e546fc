"""gRPC load benchmark: Membership and Count from concurrent clients on loopback.

    python benchmarks/bench_grpc.py                               # 1M profiles, 5M events, 200 segments
    python benchmarks/bench_grpc.py --profiles 10000000 --events 50000000 --duration 30

This process generates the dataset, loads it, saves ``--segments`` segments and serves them on
127.0.0.1; client processes (grpc.aio, ``--concurrency`` calls in flight each) drive it for a
bounded time per phase. Phases:

1. in-engine: ``Engine.membership`` on random ids, and ``Engine.count`` of the contract example;
2. Membership only over gRPC;
3. the mix: Membership plus Count (``--count-share`` of the calls: the contract example or a
   random saved segment, half each);
4. Count of the contract example over gRPC with one call in flight, compared with the engine's
   own time of the same calls (``Engine.count`` timed inside the server: the same moments, the
   same machine noise) and with phase 1's back-to-back in-engine Counts (a tight loop keeps the
   caches warm: at 10M its p99 reads 0.5-1.5 ms lower than calls paced like a client's).

Prints QPS, p50 and p99 per RPC and phase. Time-relative segments follow the wall clock: the
server's refresh timer runs during the phases, as in production.

With ``--contention query,ingest,snapshot`` it measures instead how a foreground client fares
while a background client loads the server, against the same client on an idle server:
Membership (``--concurrency`` calls in flight) and Count of the contract example (one call in
flight), each for ``--duration`` s, first idle, then under each background load in turn:

- ``query``: a client looping Count of ``HEAVY_QUERY``, a 30-day COUNT above the kept count levels
  cap (so it counts the window's events: about 130 ms at 10M profiles / 50M events on an idle engine);
- ``ingest``: a producer streaming ``LoadEvents`` of 10,000 page views at ``--ingest-rate``
  events/s (each batch leaves at its scheduled time, at most 4 unacknowledged) to a durable server;
- ``snapshot``: Snapshot RPCs back to back on a durable server (prints the capture pauses);
- ``merge`` (last: it changes the data): an identity feed streaming ``Merge`` requests of 1,000 pairs at ``--merge-rate``
  merges/s (open loop, at most 4 unacknowledged) to a durable server; every profile is a source or
  a target once (pairs of a random permutation), so with several shards about half of the merges
  cross shards;
- ``stream`` (it changes the data too): ingest with identity merges in the stream, as a site's tracking feed carries logins:
  one ``Write`` client stream at ``--ingest-rate`` events/s, each message of 10,000 page views of the
  last day followed by a merge message. A batch's page views are 8,000 of known customers and 4 of
  each of 500 anonymous visitors (new ids, so new profiles); its merge message names each of those
  visitors into a known customer (one merge per 20 events, each customer merged into at most once),
  half of them across shards with several shards. The stream's messages are applied in order, one
  at a time; the rate acknowledged is read from the stream's reply.

A durable server (``ingest``, ``snapshot``, ``merge``, ``stream``) keeps its data directory in ``--data-dir`` or a
temporary directory. Prints p50/p99 per condition and the ratio of each p99 to the idle one.

    python benchmarks/bench_grpc.py --profiles 2000000 --events 10000000 --contention query,ingest,snapshot

With ``--metrics-ab`` it measures instead what metrics cost a caller: the loaded engine is served
twice at once, with metrics on (``http_port``: the metrics interceptor on every call, ``/metrics``,
the HTTP API and the console) and off, and Membership (``--concurrency`` in flight) then Count of
the contract example (one in flight) alternate between the two servers for ``--rounds`` paired
rounds of ``--duration`` s, the order swapped every round (bench_http.py's protocol, its two gRPC
conditions). Prints each condition's p50/p99 and the per-round p99 ratios on/off with their median.

    python benchmarks/bench_grpc.py --profiles 1000000 --metrics-ab --rounds 6 --duration 5
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpc_loads import HEAVY_QUERY, background_process, percentile  # noqa: E402

CONTENTION_MODES = ("query", "ingest", "snapshot", "merge", "stream")
CONTRACT_EXAMPLE = ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 "
                    "AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d) "
                    "AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)")


def segment_definitions(n: int) -> dict[str, str]:
    """``n`` saved segments: attributes, tags, consents, event windows, counts, samples, references."""
    from loaders.generator import COUNTRIES, INTERESTS

    defs: dict[str, str] = {}
    defs.update({f"country_{c}": f"country = '{c}'" for c in COUNTRIES})
    defs.update({f"age_{a}s": f"age BETWEEN {a} AND {a + 9}" for a in range(18, 78, 10)})
    defs.update({f"likes_{t}": f"interests HAS '{t}'" for t in INTERESTS})
    defs.update({f"consent_{p}": f"CONSENTED({p})" for p in ("email", "sms", "push", "ads")})
    defs.update({f"vip_{p}": f"vip = TRUE AND CONSENTED({p})" for p in ("email", "sms", "push", "ads")})
    for event in ("page_view", "add_to_cart", "cart_abandoned", "purchase"):
        defs.update({f"{event}_{d}d": f"DID({event}, WITHIN {d}d)" for d in (1, 7, 30)})
    defs.update({f"big_carts_{d}d": f"DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN {d}d)"
                 for d in (7, 30)})
    defs["abandoned_unbought"] = "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)"
    defs["lapsed_buyers"] = "DID(purchase, BEFORE NOW - 30d) AND NOT DID(purchase, WITHIN 30d)"
    defs.update({f"signed_up_{d}d": f"signup_at > NOW - {d}d" for d in (30, 90, 365)})
    defs.update({f"sample_{p}": f"SAMPLE({p}, {p})" for p in (1, 5, 10, 25, 50)})
    defs["contract_example"] = CONTRACT_EXAMPLE
    rng = random.Random(0)
    bases = list(defs)
    while len(defs) < n:
        a, b = rng.sample(bases, 2)
        name = f"{a}__and__{b}"
        if name not in defs:
            defs[name] = f"SEGMENT('{a}') AND SEGMENT('{b}')"
    return dict(list(defs.items())[:n])


# -- client processes -------------------------------------------------------------------------
async def _drive(address: str, duration: float, concurrency: int, profiles: int, count_share: float,
                 count_queries: list[str], segment_names: list[str], seed: int) -> dict[str, Any]:
    import grpc

    from server.proto_gen import segmentation_pb2 as pb
    from server.proto_gen import segmentation_pb2_grpc as pb_grpc

    latencies: dict[str, list[float]] = {"Membership": [], "Count": []}
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SegmentationStub(channel)
        await channel.channel_ready()
        stop_at = time.perf_counter() + duration

        async def worker(k: int) -> None:
            rng = random.Random(seed * 1000 + k)
            while time.perf_counter() < stop_at:
                if rng.random() < count_share:
                    name = "Count"
                    query = rng.choice(count_queries)
                    if query == "SEGMENT":
                        query = f"SEGMENT('{rng.choice(segment_names)}')"
                    call = stub.Count(pb.QueryRequest(query=query), timeout=30)
                else:
                    name = "Membership"
                    call = stub.Membership(pb.MembershipRequest(id=f"u{rng.randrange(profiles):08d}"), timeout=30)
                started = time.perf_counter()
                try:
                    await call
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                    continue
                latencies[name].append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def client_process(queue: Any, *args: Any) -> None:
    """Entry point of one client process: run the load and send back the latencies."""
    queue.put(asyncio.run(_drive(*args)))


def run_phase(address: str, label: str, procs: int, concurrency: int, duration: float, profiles: int,
              count_share: float, count_queries: list[str], segment_names: list[str]) -> dict[str, Any]:
    """Run ``procs`` client processes for ``duration`` seconds; print and return per-RPC figures."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=client_process, args=(queue, address, duration, concurrency, profiles, count_share,
                                                        count_queries, segment_names, seed))
               for seed in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = max(r["elapsed"] for r in results)
    figures = {}
    for rpc in ("Membership", "Count"):
        values = [v for r in results for v in r["latencies"][rpc]]
        if values:
            figures[rpc] = {"qps": len(values) / elapsed, "p50": percentile(values, 0.5),
                            "p99": percentile(values, 0.99), "calls": len(values)}
            print(f"  {label:<28} {rpc:<10} {figures[rpc]['qps']:>8.0f} QPS   p50 {figures[rpc]['p50']:6.2f} ms"
                  f"   p99 {figures[rpc]['p99']:6.2f} ms   ({len(values)} calls)")
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    if errors:
        print(f"  {label:<28} errors: {errors}")
    return figures


# -- contention: background load ------------------------------------------------------------
def contention(address: str, args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The foreground client idle and under each background load; prints p99s and their ratios."""
    modes = [m for m in args.contention.split(",") if m]
    ctx = multiprocessing.get_context("spawn")

    def foreground(label: str) -> dict[str, Any]:
        membership = run_phase(address, f"{label}: Membership", 1, args.concurrency, args.duration,
                               args.profiles, 0.0, [CONTRACT_EXAMPLE], names)["Membership"]
        count = run_phase(address, f"{label}: Count example", 1, 1, args.duration, args.profiles, 1.0,
                          [CONTRACT_EXAMPLE], names)["Count"]
        return {"membership": membership, "count": count}

    results = {"idle": foreground("idle")}
    for mode in modes:
        queue, stop, ready = ctx.Queue(), ctx.Event(), ctx.Event()
        process = ctx.Process(target=background_process,
                              args=(queue, stop, ready, address, mode, args.profiles,
                                    {"ingest": args.ingest_rate, "merge": args.merge_rate}, args.duration))
        process.start()
        ready.wait()
        time.sleep(1.0)
        results[mode] = foreground(mode)
        stop.set()
        results[mode]["background"] = queue.get()
        process.join()
        bg = results[mode]["background"]
        extra = (f", {bg['items_per_s']:,.0f} events/s acknowledged" if mode == "ingest" else
                 f", {bg['items_per_s']:,.0f} merges/s acknowledged" if mode == "merge" else
                 f", {bg['items_per_s']:,.0f} events/s and {bg['merges_per_s']:,.0f} merges/s acknowledged"
                 if mode == "stream" else
                 f", capture pause p50 {percentile(bg['pause_ms'], 0.5):.0f} ms, max {max(bg['pause_ms'], default=0):.0f} ms"
                 f" (per shard: capture p50 {percentile(bg['capture_ms'], 0.5):.0f} ms, its fork() p50"
                 f" {percentile(bg['fork_ms'], 0.5):.1f} ms, max {max(bg['fork_ms'], default=0):.1f} ms)"
                 if mode == "snapshot" else "")
        print(f"  background {mode}: {bg['calls']} calls, p50 {bg['p50']:.1f} ms, p99 {bg['p99']:.1f} ms{extra}")
    idle = results["idle"]
    print(f"contention summary ({args.shards} shard(s); Membership {args.concurrency} in flight, Count 1 in flight):")
    print(f"  {'condition':<10} {'Membership p50/p99 ms':>22} {'p99 x idle':>10} {'Count p50/p99 ms':>18} {'p99 x idle':>10}")
    for label, r in results.items():
        m, c = r["membership"], r["count"]
        print(f"  {label:<10} {m['p50']:>10.2f} / {m['p99']:<9.2f} {m['p99'] / idle['membership']['p99']:>10.2f}"
              f" {c['p50']:>8.2f} / {c['p99']:<7.2f} {c['p99'] / idle['count']['p99']:>10.2f}")
    return results


# -- the benchmark ----------------------------------------------------------------------------
def timed_counts(engine: Any) -> list[float]:
    """From now on, the milliseconds of every ``engine.count`` call (the engine's own time of a
    served call, without gRPC and without waiting at the gate); ``del engine.count`` stops it."""
    times: list[float] = []
    count = type(engine).count

    def timed(*args: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            return count(engine, *args, **kwargs)
        finally:
            times.append((time.perf_counter() - started) * 1000)

    engine.count = timed
    return times


def warm_up(engine: Any, query: str, limit_s: float = 120.0) -> float:
    """Run ``query`` once and wait until the kept structures it starts building in the background
    are built (at most ``limit_s``), so the phases measure a warm engine; returns the seconds."""
    from compare import settled

    started = time.perf_counter()
    engine.count(query)
    settled(engine, limit_s)
    return time.perf_counter() - started


def in_engine(engine: Any, profiles: int, samples: int, count_runs: int) -> dict[str, float]:
    """Engine.membership p50/p99 on random ids (µs) and Engine.count of the contract example (ms)."""
    rng = random.Random(1)
    ids = [f"u{rng.randrange(profiles):08d}" for _ in range(samples)]
    for pid in ids[:1000]:
        engine.membership(pid)
    times = []
    sizes = []
    for pid in ids:
        started = time.perf_counter()
        names = engine.membership(pid)
        times.append((time.perf_counter() - started) * 1e6)
        sizes.append(len(names))
    count_times = []
    for _ in range(count_runs + 2):
        started = time.perf_counter()
        engine.count(CONTRACT_EXAMPLE)
        count_times.append((time.perf_counter() - started) * 1000)
    count_times = count_times[2:]
    result = {"membership_p50_us": percentile(times, 0.5), "membership_p99_us": percentile(times, 0.99),
              "segments_per_profile": statistics.mean(sizes), "count_p50_ms": percentile(count_times, 0.5),
              "count_p99_ms": percentile(count_times, 0.99)}
    print(f"  in-engine Membership: p50 {result['membership_p50_us']:.1f} us, p99 {result['membership_p99_us']:.1f} us"
          f" ({samples} random ids, {result['segments_per_profile']:.1f} segments per profile on average)")
    print(f"  in-engine Count (contract example): p50 {result['count_p50_ms']:.2f} ms,"
          f" p99 {result['count_p99_ms']:.2f} ms ({count_runs} runs)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=None, help="default: 5 per profile")
    parser.add_argument("--segments", type=int, default=200)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per gRPC phase")
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight per client process")
    parser.add_argument("--count-share", type=float, default=0.05, help="share of Count calls in the mix")
    parser.add_argument("--workers", type=int, default=16, help="server RPC threads")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--refresh-ms", type=int, default=1000, help="server refresh period of time-relative segments")
    parser.add_argument("--samples", type=int, default=20_000, help="in-engine membership samples")
    parser.add_argument("--contention", default="", help=f"comma list of background loads: {','.join(CONTENTION_MODES)}")
    parser.add_argument("--ingest-rate", type=float, default=100_000, help="events/s of --contention ingest and stream")
    parser.add_argument("--merge-rate", type=float, default=5_000, help="merges/s of --contention merge")
    parser.add_argument("--heavy-nice", type=int, default=None, help="server: nice of the heavy-query threads")
    parser.add_argument("--data-dir", default=None, help="durable server's directory (default: a temporary one)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--metrics-ab", action="store_true",
                        help="paired rounds, metrics on vs off on the same engine (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=6, help="--metrics-ab: paired rounds")
    args = parser.parse_args(argv)
    if args.metrics_ab:
        import bench_http

        return bench_http.main(["--profiles", str(args.profiles), "--segments", str(args.segments),
                                "--rounds", str(args.rounds), "--duration", str(args.duration),
                                "--concurrency", str(args.concurrency), "--conditions", "grpc-off,grpc-on",
                                *(["--events", str(args.events)] if args.events is not None else [])])
    unknown = set(filter(None, args.contention.split(","))) - set(CONTENTION_MODES)
    if unknown:
        parser.error(f"unknown --contention modes {sorted(unknown)}")
    durable = bool({"ingest", "snapshot", "merge", "stream"} & set(args.contention.split(",")))
    data_dir = (args.data_dir or tempfile.mkdtemp(prefix="segengine-bench-")) if durable else None
    try:
        return run(args, data_dir)
    finally:
        if durable and args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def run(args: argparse.Namespace, data_dir: str | None) -> int:
    """Load, serve and measure (see the module docstring)."""

    from engine import Engine, Schema
    from loaders.generator import generate
    from server.app import SegengineServer, ServerConfig

    events = args.events if args.events is not None else 5 * args.profiles
    started = time.perf_counter()
    ds = generate(args.profiles, events, seed=0)
    engine = Engine(Schema.from_dict(ds.schema), shards=args.shards, data_dir=data_dir,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None})
    step = 1_000_000 if data_dir else None  # a durable engine logs each load: in slices
    for start in range(0, len(ds.profiles), step or len(ds.profiles)):
        engine.load_profiles(ds.profiles.slice(start, start + step) if step else ds.profiles)
    for batch in ds.events:
        for start in range(0, len(batch), step or len(batch)):
            engine.load_events(_slice_events(batch, start, start + step) if step else batch)
    del ds
    loaded = time.perf_counter()
    definitions = segment_definitions(args.segments)
    for name, query in definitions.items():
        engine.create_segment(name, query)
    created = time.perf_counter()
    if data_dir:
        engine.snapshot()  # the log starts empty, as after a restart
    stats = engine.stats()
    print(f"segengine gRPC benchmark: {stats['profiles']:,} profiles, {stats['events']:,} events, "
          f"{len(definitions)} saved segments ({sum(engine.catalog.get(n).clocked for n in definitions)} "
          f"time-relative), {args.shards} shard(s), refresh every {args.refresh_ms} ms")
    print(f"  generate+load {loaded - started:.1f} s, create segments {created - loaded:.1f} s, "
          f"segment memory {sum(s.get('segment_bytes', 0) for s in stats['shards']) / 1e6:.0f} MB")

    if args.contention:
        print("in-engine (idle)")
        in_engine(engine, args.profiles, args.samples, 300)
        print(f"  the background query's kept structures built in {warm_up(engine, HEAVY_QUERY):.1f} s")
        config = ServerConfig(port=0, workers=args.workers, max_concurrent_rpcs=1024, refresh_ms=args.refresh_ms,
                              max_message_bytes=64 << 20)
        if args.heavy_nice is not None:
            config.heavy_nice = args.heavy_nice
        server = SegengineServer(engine, config).start()
        try:
            print(f"contention on {server.address}: {args.duration:.0f} s per phase"
                  f"{', durable in ' + data_dir if data_dir else ''}")
            contention(server.address, args, list(definitions))
        finally:
            server.stop(grace_s=1)
            engine.close()
        return 0

    print("phase 1: in-engine")
    count_runs = 500 if args.profiles <= 2_000_000 else 300  # enough for a p99 (not just the max)
    figures: dict[str, Any] = {"in_engine": in_engine(engine, args.profiles, args.samples, count_runs)}

    config = ServerConfig(port=0, workers=args.workers, max_concurrent_rpcs=1024, refresh_ms=args.refresh_ms)
    server = SegengineServer(engine, config).start()
    try:
        names = list(definitions)
        print(f"phase 2-4: gRPC on {server.address}, {args.procs} client process(es) x {args.concurrency} in flight, "
              f"{args.duration:.0f} s each")
        figures["membership"] = run_phase(server.address, "Membership only", args.procs, args.concurrency,
                                          args.duration, args.profiles, 0.0, [CONTRACT_EXAMPLE], names)
        figures["mix"] = run_phase(server.address, f"mix ({args.count_share:.0%} Count)", args.procs,
                                   args.concurrency, args.duration, args.profiles, args.count_share,
                                   [CONTRACT_EXAMPLE, "SEGMENT"], names)
        served = timed_counts(engine)
        figures["count"] = run_phase(server.address, "Count example, 1 in flight", 1, 1, min(args.duration, 10.0),
                                     args.profiles, 1.0, [CONTRACT_EXAMPLE], names)
        del engine.count  # the class's method again
        figures["served"] = {"p50": percentile(served, 0.5), "p99": percentile(served, 0.99)}
        print(f"  {'  the same calls in-engine':<28} {'Count':<10} {'':>8}       p50 {figures['served']['p50']:6.2f} ms"
              f"   p99 {figures['served']['p99']:6.2f} ms   ({len(served)} calls, Engine.count inside the server)")
    finally:
        server.stop(grace_s=1)
        engine.close()
    mem, count = figures["membership"]["Membership"], figures["count"].get("Count", {})
    inside, served = figures["in_engine"], figures["served"]
    grpc_p99 = count.get("p99", float("nan"))
    print("summary (targets: in-engine Membership p99 <= 50 us; gRPC Membership >= 2,000 QPS with p99 <= 3 ms;"
          " gRPC Count p99 within 2 ms of in-engine):")
    print(f"  in-engine Membership p99 {inside['membership_p99_us']:.1f} us;"
          f" gRPC Membership {mem['qps']:.0f} QPS p99 {mem['p99']:.2f} ms;")
    print(f"  Count p99 {grpc_p99:.2f} ms over gRPC vs {served['p99']:.2f} ms in-engine for the same calls"
          f" (+{grpc_p99 - served['p99']:.2f} ms) and {inside['count_p99_ms']:.2f} ms in-engine back to back"
          f" (+{grpc_p99 - inside['count_p99_ms']:.2f} ms)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), **figures}, indent=2))
    return 0


def _slice_events(batch: Any, start: int, stop: int) -> Any:
    from engine.columns import EventBatch, slice_column

    return EventBatch(batch.event, batch.ids[start:stop], batch.ts[start:stop],
                      {k: slice_column(c, start, stop) for k, c in batch.props.items()})


if __name__ == "__main__":
    sys.exit(main())
