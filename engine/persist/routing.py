"""What each logged write asks of each shard: the one routing used live and on replay.

``shard_calls(kind, payload, n)`` turns a logged write into, per shard, the LocalShard method
and arguments that apply its share (None: nothing for that shard). The durable engine sends
exactly these (tagged with the record's sequence number) and a recovering shard replays its own
entry of the same list, so a reloaded shard ends in the state it had.

Logged kinds and payloads (``now``: the write clock saved segments follow):

- ``upsert``: (list of ProfileUpdate, now) -> ``upsert``
- ``events``: (list of EventRecord, now) -> ``track``
- ``load_profiles``: (ProfileBatch, now) / ``load_events``: (EventBatch, now) -> same-named method
- ``create_segment``: (name, query, now, replace) -> ``create_segment`` on every shard
- ``delete_segment``: (name,) -> ``delete_segment`` on every shard

>>> from engine.schema import ProfileUpdate
>>> calls = shard_calls("upsert", ([ProfileUpdate("u1", {}, {})], 5), 1, None)
>>> calls[0][0], len(calls[0][1][0]), calls[0][1][1]
('upsert', 1, 5)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..columns import EventBatch, ProfileBatch, take_column
from ..shard.partition import shards_of, split_by_shard

ShardCall = tuple[str, tuple] | None

#: Kinds that change saved segment definitions (a failure replays as the same failure).
SEGMENT_KINDS = frozenset({"create_segment", "delete_segment"})


def shard_calls(kind: str, payload: Any, shards: int, compile: Callable[[str], Any] | None) -> list[ShardCall]:
    """Per shard, the (method, args) that apply a logged write of ``kind`` (``compile``: query -> plan)."""
    if kind in ("upsert", "events"):
        records, now = payload
        method = "upsert" if kind == "upsert" else "track"
        groups = split_by_shard(records, lambda r: r.id, shards)
        return [(method, (group, now)) if group else None for group in groups]
    if kind in ("load_profiles", "load_events"):
        batch, now = payload
        if shards == 1:
            return [(kind, (batch, now)) if len(batch) else None]
        owners = shards_of(batch.ids, shards)
        take = take_profiles if kind == "load_profiles" else take_events
        calls: list[ShardCall] = []
        for shard_no in range(shards):
            picks = np.flatnonzero(owners == shard_no)
            calls.append((kind, (take(batch, picks), now)) if len(picks) else None)
        return calls
    if kind == "create_segment":
        name, query, now, replace = payload
        assert compile is not None
        return [("create_segment", (name, query, compile(query), now, bool(replace)))] * shards
    if kind == "delete_segment":
        return [("delete_segment", (payload[0],))] * shards
    raise ValueError(f"unknown logged write kind {kind!r}")


def take_profiles(batch: ProfileBatch, picks: np.ndarray) -> ProfileBatch:
    """The profiles ``picks`` of a columnar batch."""
    return ProfileBatch([batch.ids[i] for i in picks.tolist()],
                        {name: take_column(col, picks) for name, col in batch.columns.items()},
                        {name: np.asarray(flags)[picks] for name, flags in batch.consents.items()})


def take_events(batch: EventBatch, picks: np.ndarray) -> EventBatch:
    """The events ``picks`` of a columnar batch."""
    return EventBatch(batch.event, [batch.ids[i] for i in picks.tolist()], np.asarray(batch.ts)[picks],
                      {name: take_column(col, picks) for name, col in batch.props.items()})
