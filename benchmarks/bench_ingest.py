"""Durable ingest over gRPC: events/s acknowledged after the write-ahead log's fsync.

    python benchmarks/bench_ingest.py                                      # 1M profiles + 5M events stored
    python benchmarks/bench_ingest.py --profiles 10000000 --events 50000000 --shards 2
    python benchmarks/bench_ingest.py --query "DID(page_view WHERE category = 'books')"   # with kept bin bitmaps

This process generates a dataset, loads it into a durable engine (``data_dir`` in a temporary
directory, or ``--data-dir``), takes a snapshot (so the log starts empty, as after a restart)
and serves it on 127.0.0.1. Client processes then send fresh generated events for a bounded
time, as pre-encoded messages (a producer's encoding is not the server's cost):

- ``LoadEvents``: columnar ``EventColumns`` of ``--batch`` events of one type;
- ``TrackEvents``: ``EventRecord`` lists of ``--record-batch`` events (the record path).

Every call returns after its batch is in the log and fsync'd (``Engine(data_dir=...)``). Prints
events/s and the p50/p99 latency of a call per phase, and checks that the stored event count
grew by exactly the acknowledged events.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NOW_MS = 1_790_000_000_000


def _messages(kind: str, profiles: int, events: int, batch: int, seed: int) -> list[bytes]:
    """Fresh events (new and existing profile ids) as serialised request messages of ~``batch`` events."""
    from loaders.generator import generate
    from server import convert
    from server.proto_gen import segmentation_pb2 as pb

    ds = generate(profiles, events, seed=1000 + seed, now_ms=NOW_MS)
    out = []
    for full in ds.events:
        for start in range(0, len(full), batch):
            part = _slice(full, start, start + batch)
            if kind == "LoadEvents":
                out.append(convert.event_columns(part).SerializeToString())
            else:
                records = [convert.event_message(r) for r in _records(part)]
                out.append(pb.TrackEventsRequest(events=records).SerializeToString())
    return out


def _slice(batch: Any, start: int, stop: int) -> Any:
    from engine.columns import EventBatch, slice_column

    return EventBatch(batch.event, batch.ids[start:stop], batch.ts[start:stop],
                      {k: slice_column(c, start, stop) for k, c in batch.props.items()})


def _records(batch: Any) -> list[dict]:
    from engine.columns import column_value

    return [{"id": pid, "event": batch.event, "ts": int(batch.ts[i]),
             **{k: column_value(c, i) for k, c in batch.props.items()}} for i, pid in enumerate(batch.ids)]


def client_process(queue: Any, address: str, kind: str, profiles: int, events: int, batch: int, duration: float,
                   seed: int, start_at: float) -> None:
    """Send pre-encoded batches one after another for ``duration`` s; report acknowledged events and latencies."""
    import grpc

    from server.proto_gen import segmentation_pb2 as pb

    messages = _messages(kind, profiles, events, batch, seed)
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    call = channel.unary_unary(f"/segengine.v1.Segmentation/{kind}", request_serializer=None,
                               response_deserializer=pb.WriteResponse.FromString)
    while time.time() < start_at:
        time.sleep(0.01)
    applied, latencies, k = 0, [], 0
    began = time.perf_counter()
    while time.perf_counter() - began < duration:
        t = time.perf_counter()
        applied += call(messages[k % len(messages)], timeout=120).applied
        latencies.append((time.perf_counter() - t) * 1000)
        k += 1
    queue.put({"applied": applied, "latencies": latencies, "elapsed": time.perf_counter() - began})
    channel.close()


def run_phase(address: str, kind: str, args: argparse.Namespace, batch: int) -> dict[str, float]:
    """``--procs`` producers for ``--duration`` s; events/s over the phase."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + args.prepare_s
    events = max(batch * 20, args.client_events)
    procs = [ctx.Process(target=client_process, args=(queue, address, kind, args.profiles, events, batch,
                                                      args.duration, seed, start_at)) for seed in range(args.procs)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    applied = sum(r["applied"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    latencies = sorted(v for r in results for v in r["latencies"])
    figures = {"events_per_s": applied / elapsed, "applied": applied, "calls": len(latencies),
               "p50_ms": statistics.median(latencies), "p99_ms": latencies[min(len(latencies) - 1,
                                                                                int(0.99 * len(latencies)))]}
    print(f"  {kind:<12} batches of {batch:>6}: {figures['events_per_s']:>10,.0f} events/s acknowledged after fsync"
          f"   call p50 {figures['p50_ms']:.1f} ms p99 {figures['p99_ms']:.1f} ms ({len(latencies)} calls,"
          f" {args.procs} producer(s))", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=None, help="stored events before the test (default 5 per profile)")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100_000, help="events per LoadEvents call")
    parser.add_argument("--record-batch", type=int, default=10_000, help="events per TrackEvents call")
    parser.add_argument("--procs", type=int, default=2, help="producer processes")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--client-events", type=int, default=2_000_000, help="distinct events each producer cycles through")
    parser.add_argument("--prepare-s", type=float, default=20.0, help="seconds producers get to encode before the clock starts")
    parser.add_argument("--data-dir", default=None, help="default: a temporary directory, removed at the end")
    parser.add_argument("--skip-records", action="store_true", help="only the columnar phase")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--query", action="append", default=[],
                        help="count this query once before the phases (builds the kept structures it uses, which "
                             "every write then maintains); repeatable")
    args = parser.parse_args(argv)

    from engine import Engine, Schema
    from loaders.generator import generate
    from server.app import SegengineServer, ServerConfig

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="segengine-ingest-")
    stored = args.events if args.events is not None else 5 * args.profiles
    try:
        started = time.perf_counter()
        ds = generate(args.profiles, stored, seed=0, now_ms=NOW_MS)
        engine = Engine(Schema.from_dict(ds.schema), shards=args.shards, data_dir=data_dir,
                        durability={"snapshot_every_s": None, "snapshot_log_bytes": None})
        for start in range(0, len(ds.profiles), 1_000_000):
            engine.load_profiles(ds.profiles.slice(start, start + 1_000_000))
        for full in ds.events:
            for start in range(0, len(full), 1_000_000):
                engine.load_events(_slice(full, start, start + 1_000_000))
        del ds
        engine.snapshot()
        for query in args.query:
            engine.count(query, now=NOW_MS)
        before = engine.stats()["events"]
        print(f"durable ingest over gRPC: {engine.stats()['profiles']:,} profiles and {before:,} events stored"
              f" ({time.perf_counter() - started:.0f} s to generate, load durably and snapshot), {args.shards} shard(s),"
              f" data dir {data_dir}", flush=True)
        server = SegengineServer(engine, ServerConfig(port=0, max_message_bytes=64 << 20, refresh_ms=0)).start()
        figures: dict[str, Any] = {}
        try:
            figures["LoadEvents"] = run_phase(server.address, "LoadEvents", args, args.batch)
            if not args.skip_records:
                figures["TrackEvents"] = run_phase(server.address, "TrackEvents", args, args.record_batch)
        finally:
            server.stop(grace_s=5)
        acknowledged = sum(f["applied"] for f in figures.values())
        after = engine.stats()["events"]
        print(f"  stored events grew by {after - before:,}; acknowledged {acknowledged:,}:"
              f" {'OK' if after - before == acknowledged else 'MISMATCH'}")
        engine.close()
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"args": vars(args), **figures}, indent=2))
        return 0 if after - before == acknowledged else 1
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
