"""The embedded engine: the coordinator of the contract's Python API.

The coordinator holds no profile data. It validates records and routes them to the shard
that owns each id, parses, binds and plans each query once (plans cached by query text),
sends the plan to every shard and merges the answers (counts summed, sorted ids merged).
"""
from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np

from .columns import EventBatch, ProfileBatch
from .errors import DataError
from .plan import Step, plan
from .query import bind, parse
from .schema import Schema
from .shard.partition import id_hash, split_by_shard


def wall_clock_ms() -> int:
    """The current UTC time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class PlanCache:
    """LRU cache of compiled plans keyed by query text."""

    def __init__(self, schema: Schema, capacity: int = 4096):
        self.schema = schema
        self.capacity = capacity
        self.entries: OrderedDict[str, Step] = OrderedDict()

    def get(self, text: str) -> Step:
        """The plan of ``text`` (parsed, bound and planned once)."""
        step = self.entries.get(text)
        if step is None:
            step = plan(bind(parse(text), self.schema))
            self.entries[text] = step
            if len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(text)
        return step


def make_shards(schema: Schema, shards: int, backend: str, address: str | None) -> list[Any]:
    """Start ``shards`` shard handles on ``backend`` ("local", "process" or "ray")."""
    if backend == "local" or (backend == "auto" and shards == 1):
        from .shard.local import LocalShard

        return [LocalShard(schema, i) for i in range(shards)]
    if backend in ("process", "auto"):
        from .shard.process import start_process_shards

        return start_process_shards(schema, shards)
    if backend == "ray":
        from .shard.ray_backend import start_ray_shards

        return start_ray_shards(schema, shards, address)
    raise ValueError(f"unknown backend {backend!r} (expected 'local', 'process' or 'ray')")


class Engine:
    """A segmentation engine over ``shards`` shards (see the contract, section 3)."""

    def __init__(self, schema: Schema, shards: int = 1, data_dir: str | None = None, backend: str = "auto",
                 address: str | None = None):
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.schema = schema
        self.n_shards = shards
        self.data_dir = data_dir
        self.plans = PlanCache(schema)
        self.shards = make_shards(schema, shards, backend, address)
        self.closed = False

    # -- writes -----------------------------------------------------------------------------
    def upsert_profiles(self, records: Iterable[dict]) -> int:
        """Validate then apply profile upserts, all or none (DataError names the record index)."""
        updates = [self.schema.validate_profile(record, i) for i, record in enumerate(records)]
        groups = split_by_shard(updates, lambda u: u.id, self.n_shards)
        return sum(shard.upsert(group) for shard, group in zip(self.shards, groups) if group)

    def track_events(self, records: Iterable[dict]) -> int:
        """Validate then apply events, all or none (DataError names the record index)."""
        events = [self.schema.validate_event(record, i) for i, record in enumerate(records)]
        groups = split_by_shard(events, lambda e: e.id, self.n_shards)
        return sum(shard.track(group) for shard, group in zip(self.shards, groups) if group)

    def _owners(self, ids: list[str]) -> np.ndarray:
        if self.n_shards == 1:
            return np.zeros(len(ids), dtype=np.int64)
        return np.fromiter((id_hash(i) % self.n_shards for i in ids), dtype=np.int64, count=len(ids))

    def load_profiles(self, batch: ProfileBatch) -> int:
        """Bulk-load a columnar profile batch (same effect as upserting its records)."""
        for name in batch.columns:
            if name not in self.schema.attributes:
                raise DataError("unknown attribute", None, name)
        owners = self._owners(batch.ids)
        applied = 0
        for shard_no, shard in enumerate(self.shards):
            picks = np.flatnonzero(owners == shard_no)
            if len(picks):
                applied += shard.load_profiles(_take_profiles(batch, picks) if self.n_shards > 1 else batch)
        return applied

    def load_events(self, batch: EventBatch) -> int:
        """Bulk-load a columnar batch of events of one type."""
        if batch.event not in self.schema.events:
            raise DataError(f"unknown event type {batch.event!r}", None, "event")
        owners = self._owners(batch.ids)
        applied = 0
        for shard_no, shard in enumerate(self.shards):
            picks = np.flatnonzero(owners == shard_no)
            if len(picks):
                applied += shard.load_events(_take_events(batch, picks) if self.n_shards > 1 else batch)
        return applied

    # -- queries ----------------------------------------------------------------------------
    def compile(self, query: str) -> Step:
        """The plan of ``query`` (QueryError if malformed)."""
        return self.plans.get(query)

    def count(self, query: str, now: int | None = None) -> int:
        """Number of live profiles in the segment ``query`` at clock ``now`` (epoch ms; None = wall clock)."""
        step = self.compile(query)
        at = wall_clock_ms() if now is None else int(now)
        return sum(shard.count(step, at) for shard in self.shards)

    def ids(self, query: str, now: int | None = None) -> list[str]:
        """Canonical ids of the segment ``query``, sorted ascending."""
        step = self.compile(query)
        at = wall_clock_ms() if now is None else int(now)
        parts = [shard.ids(step, at) for shard in self.shards]
        return parts[0] if len(parts) == 1 else list(heapq.merge(*parts))

    def stats(self) -> dict[str, Any]:
        """Per-shard sizes."""
        shards = [shard.stats() for shard in self.shards]
        return {"shards": shards, "profiles": sum(s["profiles"] for s in shards),
                "events": sum(s["events"] for s in shards)}

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the shards (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for shard in self.shards:
            closer = getattr(shard, "close", None)
            if closer is not None:
                closer()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _take_profiles(batch: ProfileBatch, picks: np.ndarray) -> ProfileBatch:
    from .columns import take_column

    return ProfileBatch([batch.ids[i] for i in picks.tolist()],
                        {name: take_column(col, picks) for name, col in batch.columns.items()},
                        {name: np.asarray(flags)[picks] for name, flags in batch.consents.items()})


def _take_events(batch: EventBatch, picks: np.ndarray) -> EventBatch:
    from .columns import take_column

    return EventBatch(batch.event, [batch.ids[i] for i in picks.tolist()], np.asarray(batch.ts)[picks],
                      {name: take_column(col, picks) for name, col in batch.props.items()})
