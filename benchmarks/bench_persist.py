"""Durability benchmark: snapshot save and restore, restart-to-serving, durable ingest.

    python benchmarks/bench_persist.py --profiles 1000000 --events 5000000 --shards 2

Loads a generated dataset (loaders.generator) into a durable engine (columnar batches of
``--batch`` rows, each logged and fsync'd before it is acknowledged), then measures:

- ``snapshot``: Engine.snapshot() wall time (capture pause, background write, manifest commit):
  ``--snapshots`` in a row, ``--snapshot-gap`` seconds apart, the median from the third on
  (steady state) with its details, and every one's time; snapshot bytes and the size of the
  data directory;
- ``restart``: close, then Engine(..., data_dir=D) until it answers ``count('ALL')``, and the
  per-shard snapshot read/load times;
- ``durable_ingest``: events/s with acknowledgement after fsync, for dict records
  (track_events, ``--threads`` writers, batches of ``--record-batch``) and for columnar batches;
  the same without a data_dir for comparison;
- ``snapshot_while_writing``: a snapshot taken while writers run; write latency during it.

Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402

NO_AUTO_SNAPSHOTS = {"snapshot_every_s": None, "snapshot_log_bytes": None}


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path``."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def event_slices(dataset, size: int):
    for batch in dataset.events:
        for start in range(0, len(batch), size):
            yield batch.take(np.arange(start, min(start + size, len(batch))))


def load(engine: Engine, dataset, size: int) -> dict:
    began = time.perf_counter()
    for start in range(0, len(dataset.profiles), size):
        engine.load_profiles(dataset.profiles.slice(start, start + size))
    profiles_s = time.perf_counter() - began
    began = time.perf_counter()
    events = sum(engine.load_events(batch) for batch in event_slices(dataset, size))
    events_s = time.perf_counter() - began
    return {"profiles_s": round(profiles_s, 2), "events_s": round(events_s, 2),
            "events_per_s": round(events / events_s)}


def record_batches(count: int, size: int, profiles: int, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, profiles, size=count * size)
    return [[{"id": f"u{ids[b * size + i]}", "event": "page_view", "ts": 1_700_000_000_000 + b * size + i,
              "category": "c%d" % (i % 10)} for i in range(size)] for b in range(count)]


def ingest(engine: Engine, batches: list[list[dict]], threads: int) -> dict:
    """Write ``batches`` from ``threads`` writers; events/s and batch latency percentiles."""
    latencies: list[float] = []

    def run(k: int) -> None:
        for batch in batches[k::threads]:
            began = time.perf_counter()
            engine.track_events(batch)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"events_per_s": round(sum(map(len, batches)) / elapsed), "batches": len(batches),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1)}


def columnar_ingest(engine: Engine, dataset, size: int, limit: int) -> dict:
    slices = []
    for batch in event_slices(dataset, size):
        slices.append(batch)
        if sum(map(len, slices)) >= limit:
            break
    began = time.perf_counter()
    total = sum(engine.load_events(batch) for batch in slices)
    return {"events_per_s": round(total / (time.perf_counter() - began)), "batch": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch", type=int, default=500_000, help="rows per columnar load batch")
    parser.add_argument("--threads", type=int, default=4, help="writer threads for record ingest")
    parser.add_argument("--record-batch", type=int, default=10_000, help="events per track_events call")
    parser.add_argument("--record-batches", type=int, default=60)
    parser.add_argument("--snapshots", type=int, default=5, help="snapshots in a row after the load (>= 3)")
    parser.add_argument("--snapshot-gap", type=float, default=5.0,
                        help="seconds before each of them (periodic snapshots are minutes apart; on a VM that "
                             "returns freed memory to its host, memory freed seconds ago is cold again)")
    parser.add_argument("--data-dir", default=None, help="default: a temporary directory (removed)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the report to this JSON file")
    args = parser.parse_args()

    base = Path(args.data_dir or tempfile.mkdtemp(prefix="segengine-bench-"))
    data_dir = base / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    report: dict = {"profiles": args.profiles, "events": args.events, "shards": args.shards,
                    "backend": args.backend, "cpus": os.cpu_count()}
    began = time.perf_counter()
    dataset = generate(args.profiles, args.events, seed=1, now_ms=1_800_000_000_000)
    schema = Schema.from_dict(dataset.schema)
    report["generate_s"] = round(time.perf_counter() - began, 1)

    with Engine(schema, shards=args.shards, backend=args.backend, data_dir=str(data_dir),
                durability=NO_AUTO_SNAPSHOTS) as engine:
        report["durable_load"] = load(engine, dataset, args.batch)
        expected = engine.count("ALL"), engine.count("DID(purchase)", now=dataset.now_ms)
        # 1st: the capture memory is new, and so is the file; 2nd: the file is new (the 1st one is the
        # current snapshot); from the 3rd on (steady state): each shard copies into the memory of
        # its previous capture and writes into the file of the snapshot before last. Reported: the
        # median of the steady ones, and every one's time.
        snapshots = []
        for _ in range(max(args.snapshots, 3)):
            time.sleep(args.snapshot_gap)
            snapshots.append(engine.snapshot())
        steady = sorted(snapshots[2:], key=lambda s: s["seconds"])
        report["snapshot"] = {**steady[len(steady) // 2], "first_s": snapshots[0]["seconds"],
                              "second_s": snapshots[1]["seconds"], "all_s": [s["seconds"] for s in snapshots],
                              "data_dir_bytes": dir_bytes(data_dir)}

    began = time.perf_counter()
    engine = Engine(schema, shards=args.shards, backend=args.backend, data_dir=str(data_dir),
                    durability=NO_AUTO_SNAPSHOTS)
    opened = time.perf_counter() - began
    answers = engine.count("ALL"), engine.count("DID(purchase)", now=dataset.now_ms)
    report["restart"] = {"to_serving_s": round(time.perf_counter() - began, 3), "open_s": round(opened, 3),
                         "same_answers": answers == expected,
                         "shards": [{k: v for k, v in s.items() if k in ("snapshot", "seconds", "replayed_records")}
                                    for s in engine.durable.recovery["shards"]]}

    batches = record_batches(args.record_batches, args.record_batch, args.profiles)
    report["durable_ingest"] = {"records": ingest(engine, batches, args.threads),
                                "records_1_thread": ingest(engine, batches[: len(batches) // 2], 1),
                                "columnar": columnar_ingest(engine, dataset, 100_000, 2_000_000)}

    latencies: list[float] = []
    stop = threading.Event()

    def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            engine.track_events(batches[i % len(batches)][:1000])
            latencies.append(time.perf_counter() - started)
            i += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    time.sleep(0.5)
    during = engine.snapshot()
    stop.set()
    writer.join()
    report["snapshot_while_writing"] = {"snapshot_s": during["seconds"], "paused_s": during["paused_s"],
                                        "capture_ms": during["capture_ms"], "write_ms": during["write_ms"],
                                        "writes": len(latencies),
                                        "write_p50_ms": round(statistics.median(latencies) * 1000, 1),
                                        "write_max_ms": round(max(latencies) * 1000, 1)}
    engine.close()

    with Engine(schema, shards=args.shards, backend="local" if args.shards == 1 else args.backend) as memory:
        memory.load_profiles(dataset.profiles)
        report["memory_ingest"] = {"records": ingest(memory, batches, args.threads),
                                   "columnar": columnar_ingest(memory, dataset, 100_000, 2_000_000)}
    if args.data_dir is None:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
