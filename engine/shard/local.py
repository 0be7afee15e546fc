"""One shard in the current process: profile store, event store, executor, saved segments.

This is the unit every backend runs (in-process, in a worker process, or as a Ray actor); its
methods take and return plain data (lists, dicts, ints, bytes) so they cross a process
boundary as msgpack.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pyroaring import BitMap

from ..columns import EventBatch, ProfileBatch, column_from_values
from ..errors import SegmentNotFound
from ..exec.did import DidEvaluator
from ..exec.executor import Executor
from ..plan.steps import Step
from ..schema import EventRecord, ProfileUpdate, Schema
from ..store.events import EventStore
from ..store.profiles import ProfileStore


class LocalShard:
    """The data and query execution of one shard."""

    def __init__(self, schema: Schema, shard_id: int = 0):
        self.schema = schema
        self.shard_id = shard_id
        self.profiles = ProfileStore(schema)
        self.events = EventStore(schema.events)
        self.did = DidEvaluator(self.events)
        self.segments: dict[str, BitMap] = {}
        self.executor = Executor(self.profiles, self.did, self.segment_rows)

    # -- writes -----------------------------------------------------------------------------
    def upsert(self, updates: list[ProfileUpdate]) -> int:
        """Apply validated profile upserts; returns how many were applied."""
        if updates:
            self.profiles.apply_updates(updates)
        return len(updates)

    def track(self, events: list[EventRecord]) -> int:
        """Append validated events (creating unknown profiles); returns how many were applied."""
        if not events:
            return 0
        rows = self.profiles.ensure_rows([e.id for e in events])
        by_type: dict[str, list[int]] = {}
        for position, event in enumerate(events):
            by_type.setdefault(event.event, []).append(position)
        for name, positions in by_type.items():
            definition = self.schema.events[name]
            columns = {
                prop: column_from_values(kind, [events[p].props.get(prop) for p in positions])
                for prop, kind in definition.properties.items()
                if any(prop in events[p].props for p in positions)
            }
            ts = np.fromiter((events[p].ts for p in positions), dtype=np.int64, count=len(positions))
            self.events.types[name].append(rows[positions], ts, columns)
        return len(events)

    def load_profiles(self, batch: ProfileBatch) -> int:
        """Apply a columnar profile batch."""
        self.profiles.load_batch(batch)
        return len(batch)

    def load_events(self, batch: EventBatch) -> int:
        """Append a columnar event batch."""
        rows = self.profiles.ensure_rows(batch.ids)
        self.events.types[batch.event].append(rows, batch.ts, batch.props)
        return len(batch)

    # -- reads ------------------------------------------------------------------------------
    def count(self, step: Step, now: int) -> int:
        """Number of profiles selected by ``step``."""
        return self.executor.count(step, now)

    def rows(self, step: Step, now: int) -> BitMap:
        """Rows selected by ``step``."""
        return self.executor.evaluate(step, now)

    def ids(self, step: Step, now: int) -> list[str]:
        """Canonical ids selected by ``step``, sorted ascending."""
        rows = self.rows(step, now)
        return sorted(self.profiles.idmap.ids_of(np.frombuffer(rows.to_array(), dtype=np.uint32)))

    def segment_rows(self, name: str) -> BitMap:
        """Current members of saved segment ``name``."""
        try:
            return self.segments[name]
        except KeyError:
            raise SegmentNotFound(f"unknown segment {name!r}") from None

    def stats(self) -> dict[str, Any]:
        """Sizes of this shard's data."""
        return {
            "shard": self.shard_id,
            "profiles": len(self.profiles),
            "events": len(self.events),
            "events_by_type": {name: len(t) for name, t in self.events.types.items()},
        }
