"""The background loads of ``bench_grpc.py --contention``: a client process that loads a served
engine until told to stop (a looping heavy query, event batches, snapshots, merge requests, or a
``Write`` stream of events and logins), and what it sends, generated ahead.

See bench_grpc.py's docstring for each load."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

#: The background query of ``--contention query`` (>= 50 ms on an idle server at 10M profiles).
HEAVY_QUERY = "DID(page_view, COUNT >= 10, WITHIN 30d)"
INGEST_BATCH = 10_000
MERGE_BATCH = 1_000
STREAM_IN_FLIGHT = 4
#: ``--contention stream``: events per merge, and each anonymous visitor's page views before it logs in.
IDENTIFY_EVERY = 20
VISITOR_EVENTS = 4


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _page_view_columns(rng: Any, ids: list[str]) -> Any:
    """EventColumns of a page view of the last day for each of ``ids`` (random times and categories)."""
    import numpy as np

    from engine.columns import EventBatch, column_from_values
    from loaders.generator import CATEGORIES
    from server import convert

    ts = time.time_ns() // 1_000_000 - rng.integers(0, 86_400_000, len(ids))
    category = column_from_values("category", [CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), len(ids)).tolist()])
    return convert.event_columns(EventBatch("page_view", ids, ts.astype(np.int64), {"category": category}))


def _page_views(profiles: int, batches: int, seed: int) -> list[bytes]:
    """``batches`` serialised LoadEvents requests of INGEST_BATCH page views of the last day."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [_page_view_columns(rng, [f"u{i:08d}" for i in rng.integers(0, profiles, INGEST_BATCH).tolist()])
            .SerializeToString() for _ in range(batches)]


def _identity_stream(profiles: int, batches: int, seed: int) -> list[tuple[int, bytes]]:
    """``batches`` pairs of serialised Write messages, each with the events it carries (0 for a merge
    message): INGEST_BATCH page views, VISITOR_EVENTS of each of the batch's anonymous visitors (new
    ids) and the rest of random known customers, then the merges of those visitors into known
    customers (every customer the target of one merge at most)."""
    import numpy as np

    from server.proto_gen import segmentation_pb2 as pb

    rng = np.random.default_rng(seed)
    visitors = INGEST_BATCH // IDENTIFY_EVERY
    targets = rng.permutation(profiles)[: visitors * batches].tolist()
    out = []
    for b in range(min(batches, len(targets) // visitors)):
        anonymous = [f"v{b:05d}-{k:04d}" for k in range(visitors)]
        known = [f"u{i:08d}" for i in rng.integers(0, profiles, INGEST_BATCH - visitors * VISITOR_EVENTS).tolist()]
        ids = [anonymous[i] for i in np.repeat(np.arange(visitors), VISITOR_EVENTS).tolist()] + known
        events = pb.WriteRequest(event_columns=_page_view_columns(rng, [ids[i] for i in rng.permutation(len(ids))]))
        pairs = [pb.MergePair(from_id=v, into_id=f"u{t:08d}")
                 for v, t in zip(anonymous, targets[visitors * b: visitors * (b + 1)])]
        out.append((INGEST_BATCH, events.SerializeToString()))
        out.append((0, pb.WriteRequest(merges=pb.MergeRequest(pairs=pairs)).SerializeToString()))
    return out


def _merges(profiles: int, batches: int, seed: int) -> list[bytes]:
    """``batches`` serialised Merge requests of MERGE_BATCH pairs, every profile in at most one pair."""
    import numpy as np

    from server.proto_gen import segmentation_pb2 as pb

    ids = np.random.default_rng(seed).permutation(profiles)[: 2 * MERGE_BATCH * batches].tolist()
    out = []
    for b in range(min(batches, len(ids) // (2 * MERGE_BATCH))):
        chunk = ids[2 * MERGE_BATCH * b: 2 * MERGE_BATCH * (b + 1)]
        pairs = [pb.MergePair(from_id=f"u{chunk[2 * k]:08d}", into_id=f"u{chunk[2 * k + 1]:08d}")
                 for k in range(MERGE_BATCH)]
        out.append(pb.MergeRequest(pairs=pairs).SerializeToString())
    return out


async def _stream(channel: Any, stop: Any, method: str, counted: Any, per_message: int, rate: float,
                  messages: list[bytes], repeat: bool) -> dict[str, Any]:
    """Send a message every ``per_message / rate`` seconds until ``stop`` is set (open loop, at most
    STREAM_IN_FLIGHT unacknowledged: a server that cannot keep up shows as a lower rate); ``counted``
    reads how many items a reply acknowledges; ``repeat``: send the messages again once all were sent
    (event batches may be; a merge is sent once)."""
    from server.proto_gen import segmentation_pb2 as pb

    reply = {"LoadEvents": pb.WriteResponse, "Merge": pb.MergeResponse}[method]
    call = channel.unary_unary(f"/segengine.v1.Segmentation/{method}", request_serializer=None,
                               response_deserializer=reply.FromString)
    latencies: list[float] = []
    applied = [0]

    async def send(message: bytes) -> None:
        started = time.perf_counter()
        applied[0] += counted(await call(message, timeout=120))
        latencies.append((time.perf_counter() - started) * 1000)

    tasks: set[asyncio.Future] = set()
    began = time.perf_counter()
    k = 0
    while not stop.is_set() and (repeat or k < len(messages)):
        due = began + k * per_message / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        tasks = {t for t in tasks if not t.done()}
        if len(tasks) >= STREAM_IN_FLIGHT:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            continue
        tasks.add(asyncio.ensure_future(send(messages[k % len(messages)])))
        k += 1
    if tasks:
        await asyncio.wait(tasks)
    elapsed = time.perf_counter() - began
    return {"items_per_s": applied[0] / elapsed, "calls": len(latencies),
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}


async def _write_stream(channel: Any, stop: Any, rate: float, messages: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Send ``messages`` (events carried, bytes) on one Write stream until ``stop`` is set or they run
    out, the events at ``rate`` events/s (a message without events right after the one before it);
    a server that cannot keep up holds the stream back (flow control), which shows as a lower rate."""
    from server.proto_gen import segmentation_pb2 as pb

    call = channel.stream_unary("/segengine.v1.Segmentation/Write", request_serializer=None,
                                response_deserializer=pb.WriteResponse.FromString)
    sent = [0, 0]  # events, messages
    began = time.perf_counter()

    async def requests() -> Any:
        for carried, message in messages:
            if stop.is_set():
                return
            due = began + sent[0] / rate
            if carried and due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            sent[0] += carried
            sent[1] += 1
            yield message

    reply = await call(requests(), timeout=600)
    elapsed = time.perf_counter() - began
    return {"calls": sent[1], "items_per_s": sent[0] / elapsed, "merges_per_s": (reply.applied - sent[0]) / elapsed,
            "p50": float("nan"), "p99": float("nan")}


async def _background(address: str, mode: str, stop: Any, ready: Any, profiles: int,
                      rates: dict[str, float], duration: float) -> dict[str, Any]:
    import grpc

    from server.proto_gen import segmentation_pb2 as pb
    from server.proto_gen import segmentation_pb2_grpc as pb_grpc

    messages = (_page_views(profiles, 100, seed=7) if mode == "ingest" else
                _merges(profiles, int(rates["merge"] * 60 / MERGE_BATCH) + 1, seed=7) if mode == "merge" else [])
    stream = _identity_stream(profiles, int(rates["ingest"] * (2 * duration + 10) / INGEST_BATCH) + 1, seed=7) \
        if mode == "stream" else []
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.SegmentationStub(channel)
        await channel.channel_ready()
        ready.set()
        if mode == "ingest":
            return await _stream(channel, stop, "LoadEvents", lambda r: r.applied, INGEST_BATCH, rates["ingest"],
                                 messages, repeat=True)
        if mode == "merge":
            return await _stream(channel, stop, "Merge", lambda r: r.merged, MERGE_BATCH, rates["merge"], messages,
                                 repeat=False)
        if mode == "stream":
            return await _write_stream(channel, stop, rates["ingest"], stream)
        latencies: list[float] = []
        pauses: list[float] = []
        captures: list[float] = []  # per shard: its capture, and the fork() in it
        forks: list[float] = []
        while not stop.is_set():
            started = time.perf_counter()
            if mode == "query":
                await stub.Count(pb.QueryRequest(query=HEAVY_QUERY), timeout=120)
            else:
                detail = json.loads((await stub.Snapshot(pb.SnapshotRequest(), timeout=600)).detail)
                pauses.append(detail["paused_s"] * 1000)
                captures.extend(detail["capture_ms"])
                forks.extend(detail.get("fork_ms", []))
            latencies.append((time.perf_counter() - started) * 1000)
        return {"calls": len(latencies), "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                "pause_ms": pauses, "capture_ms": captures, "fork_ms": forks}


def background_process(queue: Any, stop: Any, ready: Any, address: str, mode: str, profiles: int,
                       rates: dict[str, float], duration: float) -> None:
    """Entry point of the background client: load the server until ``stop`` is set."""
    queue.put(asyncio.run(_background(address, mode, stop, ready, profiles, rates, duration)))
