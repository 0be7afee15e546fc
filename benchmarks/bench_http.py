"""HTTP API and metrics benchmark: Membership and Count over HTTP and gRPC, metrics on and off.

    python benchmarks/bench_http.py                                  # 200k profiles, 4 rounds of 3 s per condition
    python benchmarks/bench_http.py --profiles 1000000 --rounds 6 --duration 5

This process generates and loads one engine, saves ``--segments`` segments and serves the engine
twice on 127.0.0.1: server ON with ``http_port`` (metrics on every gRPC call through the
interceptor, the HTTP API and the console) and server OFF without. One client process
(``--concurrency`` calls in flight, grpc.aio or aiohttp with keep-alive) drives one condition at a
time, for ``--duration`` s or ``--max-requests`` calls, whichever ends first; the conditions are
interleaved round by round (their order rotates), so machine noise falls on all of them alike:

- ``grpc-off`` / ``grpc-on``: gRPC Membership (random ids), then gRPC Count of the contract
  example with one call in flight, on OFF and on ON (metrics on vs off: the p99 ratio, paired
  by round, target within 10%);
- ``http``: Membership over HTTP on ON (``GET /v1/profiles/{id}/segments``; target: p99 within
  2x gRPC's on the same server), and Count over HTTP (``POST /v1/count``).

``--conditions`` keeps some of them (``bench_grpc.py --metrics-ab`` runs ``grpc-off,grpc-on``).
Prints per condition p50/p99 pooled over rounds, the per-round p99 ratios and their median, and
the time the metrics interceptor's wrapper adds to one call, measured in process (no network).
Loopback only; bounded in time (about ``rounds x conditions x duration``) and requests.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grpc import CONTRACT_EXAMPLE, percentile, segment_definitions  # noqa: E402

CONDITIONS = ("grpc-off", "grpc-on", "http")


# -- the client process -----------------------------------------------------------------------
async def _grpc_round(address: str, rpc: str, seconds: float, limit: int, concurrency: int, profiles: int,
                      seed: int) -> list[float]:
    import grpc

    from server.proto_gen import segmentation_pb2 as pb
    from server.proto_gen import segmentation_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SegmentationStub(channel)
        await channel.channel_ready()

        def call(rng: random.Random) -> Any:
            if rpc == "Membership":
                return stub.Membership(pb.MembershipRequest(id=f"u{rng.randrange(profiles):08d}"), timeout=30)
            return stub.Count(pb.QueryRequest(query=CONTRACT_EXAMPLE), timeout=30)

        return await _drive(call, seconds, limit, concurrency, seed)


async def _http_round(base: str, rpc: str, seconds: float, limit: int, concurrency: int, profiles: int,
                      seed: int) -> list[float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        async def one(rng: random.Random) -> None:
            if rpc == "Membership":
                request = session.get(f"/v1/profiles/u{rng.randrange(profiles):08d}/segments")
            else:
                request = session.post("/v1/count", json={"query": CONTRACT_EXAMPLE})
            async with request as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return await _drive(one, seconds, limit, concurrency, seed)


async def _drive(call: Any, seconds: float, limit: int, concurrency: int, seed: int) -> list[float]:
    """Latencies (ms) of calls from ``concurrency`` loops, after 50 warm-up calls each."""
    latencies: list[float] = []
    for k in range(concurrency):
        rng = random.Random(seed + k)
        for _ in range(50 // concurrency + 1):
            await call(rng)
    stop_at = time.perf_counter() + seconds

    async def loop(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.perf_counter() < stop_at and len(latencies) < limit:
            started = time.perf_counter()
            await call(rng)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    return latencies


def client_loop(requests: Any, answers: Any) -> None:
    """The client process: run each (transport, target, rpc, seconds, limit, concurrency, profiles, seed)."""
    while True:
        job = requests.get()
        if job is None:
            return
        transport, *args = job
        run = _grpc_round if transport == "grpc" else _http_round
        answers.put(asyncio.run(run(*args)))


# -- the instrumentation's own cost -----------------------------------------------------------
class _Context:
    """What the metrics interceptor reads of a finished call's context."""

    def code(self) -> None:
        return None


def instrumentation_cost(calls: int = 200_000) -> float:
    """Microseconds the metrics interceptor's wrapper adds to one unary call (in process, no network):
    the same trivial handler awaited bare and wrapped, alternating blocks, best of 5."""
    import grpc

    from server.metrics import MetricsInterceptor, ServerMetrics

    async def behaviour(request: Any, context: Any) -> int:
        return 1

    metrics = ServerMetrics(gate=None)
    wrapped = MetricsInterceptor(metrics)._wrap(grpc.unary_unary_rpc_method_handler(behaviour), "Membership")
    handlers = {"bare": behaviour, "wrapped": wrapped.unary_unary}

    async def timed(handler: Any) -> float:
        context = _Context()
        started = time.perf_counter()
        for _ in range(calls):
            await handler(None, context)
        return (time.perf_counter() - started) / calls * 1e6

    async def run() -> dict[str, float]:
        best = {name: float("inf") for name in handlers}
        for _ in range(5):
            for name, handler in handlers.items():
                best[name] = min(best[name], await timed(handler))
        return best

    best = asyncio.run(run())
    return best["wrapped"] - best["bare"]


# -- the benchmark ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=None, help="default: 5 per profile")
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per condition and round")
    parser.add_argument("--max-requests", type=int, default=20_000, help="calls per condition and round at most")
    parser.add_argument("--concurrency", type=int, default=4, help="Membership calls in flight")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma list of the conditions to interleave (of {','.join(CONDITIONS)})")
    args = parser.parse_args(argv)
    conditions = tuple(c for c in CONDITIONS if c in args.conditions.split(","))
    if set(args.conditions.split(",")) - set(CONDITIONS) or not conditions:
        parser.error(f"--conditions: a comma list of {','.join(CONDITIONS)}")

    from engine import Engine, Schema
    from loaders.generator import generate
    from server.app import SegengineServer, ServerConfig

    ds = generate(args.profiles, args.events if args.events is not None else 5 * args.profiles, seed=0)
    engine = Engine(Schema.from_dict(ds.schema), shards=1)
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    del ds
    for name, query in segment_definitions(args.segments).items():
        engine.create_segment(name, query)
    config = {"port": 0, "max_concurrent_rpcs": 1024, "refresh_ms": 1000}
    on = SegengineServer(engine, ServerConfig(http_port=0, **config)).start()
    off = SegengineServer(engine, ServerConfig(**config)).start()
    ctx = multiprocessing.get_context("spawn")
    requests, answers = ctx.Queue(), ctx.Queue()
    client = ctx.Process(target=client_loop, args=(requests, answers), daemon=True)
    client.start()
    print(f"segengine HTTP/metrics benchmark: {args.profiles:,} profiles, {args.segments} saved segments, "
          f"{args.rounds} rounds x {args.duration:.0f} s (at most {args.max_requests:,} calls) per condition, "
          f"Membership {args.concurrency} in flight, Count 1 in flight")
    targets = {"grpc-off": ("grpc", off.address), "grpc-on": ("grpc", on.address),
               "http": ("http", f"http://127.0.0.1:{on.http_port}")}
    results: dict[tuple[str, str], list[list[float]]] = {}
    try:
        for round_no in range(args.rounds):
            turn = round_no % len(conditions)
            order = conditions[turn:] + conditions[:turn]
            for rpc, concurrency in (("Membership", args.concurrency), ("Count", 1)):
                for condition in order:
                    transport, target = targets[condition]
                    requests.put((transport, target, rpc, args.duration, args.max_requests, concurrency,
                                  args.profiles, round_no))
                    results.setdefault((condition, rpc), []).append(answers.get())
            print(f"  round {round_no + 1}/{args.rounds} done")
    finally:
        requests.put(None)
        client.join(timeout=10)
        on.stop(grace_s=1)
        off.stop(grace_s=1)
        engine.close()
    report(results)
    print(f"the metrics interceptor's wrapper costs {instrumentation_cost():.1f} us per unary call (in process)")
    return 0


def report(results: dict[tuple[str, str], list[list[float]]]) -> None:
    """Print pooled p50/p99 per condition and the per-round p99 ratios."""
    print(f"{'condition':<12} {'rpc':<11} {'calls':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for (condition, rpc), rounds in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
        pooled = [v for values in rounds for v in values]
        print(f"{condition:<12} {rpc:<11} {len(pooled):>8,} {percentile(pooled, 0.5):>8.3f} {percentile(pooled, 0.99):>8.3f}")
    for rpc in ("Membership", "Count"):
        for label, a, b in (("metrics on / off", "grpc-on", "grpc-off"), ("HTTP / gRPC (on)", "http", "grpc-on")):
            if (a, rpc) not in results or (b, rpc) not in results:
                continue
            ratios = [percentile(x, 0.99) / percentile(y, 0.99) for x, y in zip(results[(a, rpc)], results[(b, rpc)])]
            print(f"p99 {rpc:<10} {label:<18} per round {' '.join(f'{r:.2f}' for r in ratios)}"
                  f"   median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
