"""Write commands: every change to an engine is one typed command, routed to its shards by ``route``.

The engine applies a command the same way whether it is in memory, durable (logged first, see
``engine.persist``) or replayed from the log by a recovering shard: ``route`` says which
LocalShard write method each shard runs with which arguments (None: nothing for that shard),
and every shard runs it through ``apply_logged(seq, method, args)``, which applies each
sequence number once.

>>> from engine.schema import ProfileUpdate
>>> calls = route(Upsert([ProfileUpdate("u1", {}, {})], now=5), shards=1, compile=None)
>>> calls[0][0], len(calls[0][1][0]), calls[0][1][1]
('upsert', 1, 5)
>>> route(DeleteSegment("vips"), shards=2, compile=None)
[('delete_segment', ('vips',)), ('delete_segment', ('vips',))]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

import numpy as np

from .columns import EventBatch, ProfileBatch
from .plan.steps import Step
from .schema import EventRecord, ProfileUpdate
from .shard.partition import shards_of, split_by_shard

#: One shard's share of a command: (LocalShard write method, its arguments), or None.
ShardCall = Union[tuple[str, tuple], None]


@dataclass(frozen=True)
class Upsert:
    """Validated profile upserts; ``now`` is the clock saved segments are brought to."""

    kind: ClassVar[str] = "upsert"
    updates: list[ProfileUpdate]
    now: int


@dataclass(frozen=True)
class Track:
    """Validated events (unknown ids create profiles)."""

    kind: ClassVar[str] = "events"
    events: list[EventRecord]
    now: int


@dataclass(frozen=True)
class LoadProfiles:
    """A columnar profile batch (the same effect as upserting its records)."""

    kind: ClassVar[str] = "load_profiles"
    batch: ProfileBatch
    now: int


@dataclass(frozen=True)
class LoadEvents:
    """A columnar batch of events of one type."""

    kind: ClassVar[str] = "load_events"
    batch: EventBatch
    now: int


@dataclass(frozen=True)
class CreateSegment:
    """Save query ``query`` as segment ``name`` (replacing an existing one only if ``replace``)."""

    kind: ClassVar[str] = "create_segment"
    name: str
    query: str
    now: int
    replace: bool = False


@dataclass(frozen=True)
class DeleteSegment:
    """Delete saved segment ``name``."""

    kind: ClassVar[str] = "delete_segment"
    name: str


@dataclass(frozen=True)
class UpdateSchema:
    """Extend the schema to ``spec`` (its JSON form): names may be added, never removed or retyped."""

    kind: ClassVar[str] = "update_schema"
    spec: dict[str, Any]


@dataclass(frozen=True)
class Merge:
    """Merges of canonical profiles, as steps carrying their data (see engine.shard.identity_ops):
    ``["out", id, counts]`` on the shard of ``id``, ``["in", id, payload]`` on the shard of ``id``, in order
    (lists: msgpack packs them natively; logs written with tuples decode to tuples, read alike)."""

    kind: ClassVar[str] = "merge"
    steps: list[tuple]
    now: int


@dataclass(frozen=True)
class Erase:
    """Erase canonical profiles ``ids`` and every alias of them (unknown ones are ignored)."""

    kind: ClassVar[str] = "erase"
    ids: list[str]
    now: int


@dataclass(frozen=True)
class Expire:
    """Delete the events past their type's retention at clock ``now`` (see engine.retention)."""

    kind: ClassVar[str] = "expire"
    now: int


@dataclass(frozen=True)
class AddDestination:
    """Deliver the entries and exits of saved segment ``segment`` to webhook ``url`` as destination ``name``.

    The record holds the secret that signs the requests (see engine.destinations): the data
    directory is as confidential as the secrets of its destinations. ``options``: delivery
    settings (batch size, timeout, backoff) as plain numbers.
    """

    kind: ClassVar[str] = "add_destination"
    name: str
    segment: str
    url: str
    secret: str
    options: dict[str, float]
    now: int


@dataclass(frozen=True)
class RemoveDestination:
    """Stop delivering to destination ``name`` and forget it (its secret and its position)."""

    kind: ClassVar[str] = "remove_destination"
    name: str


Command = Union[Upsert, Track, LoadProfiles, LoadEvents, CreateSegment, DeleteSegment, UpdateSchema, Merge, Erase,
                Expire, AddDestination, RemoveDestination]

#: Every command class by its log record kind.
COMMANDS: dict[str, type] = {c.kind: c for c in (Upsert, Track, LoadProfiles, LoadEvents, CreateSegment, DeleteSegment,
                                                  UpdateSchema, Merge, Erase, Expire, AddDestination,
                                                  RemoveDestination)}

#: Kinds applied by the coordinator alone (no shard takes part; see engine.destinations).
COORDINATOR_KINDS = frozenset({AddDestination.kind, RemoveDestination.kind})

#: The LocalShard methods that ``route`` names (run by the shard's ``apply_logged`` only).
SHARD_METHODS = frozenset({"upsert", "track", "load_profiles", "load_events", "create_segment", "delete_segment",
                           "update_schema", "merge", "erase", "expire"})

#: Kinds that change saved segment definitions: a replayed one that fails fails as it did live.
SEGMENT_KINDS = frozenset({CreateSegment.kind, DeleteSegment.kind})


def route(command: Command, shards: int, compile: Callable[[str], Step] | None) -> list[ShardCall]:
    """Per shard, the (method, args) that apply ``command`` (``compile``: query text -> plan)."""
    if isinstance(command, (Upsert, Track)):
        records = command.updates if isinstance(command, Upsert) else command.events
        method = "upsert" if isinstance(command, Upsert) else "track"
        groups = split_by_shard(records, lambda r: r.id, shards)
        return [(method, (group, command.now)) if group else None for group in groups]
    if isinstance(command, (LoadProfiles, LoadEvents)):
        batch = command.batch
        if shards == 1:
            return [(command.kind, (batch, command.now)) if len(batch) else None]
        owners = shards_of(batch.ids, shards)
        calls: list[ShardCall] = []
        for shard_no in range(shards):
            picks = np.flatnonzero(owners == shard_no)
            calls.append((command.kind, (batch.take(picks), command.now)) if len(picks) else None)
        return calls
    if isinstance(command, CreateSegment):
        assert compile is not None, "routing a segment definition needs the query compiler"
        step = compile(command.query)
        return [("create_segment", (command.name, command.query, step, command.now, bool(command.replace)))] * shards
    if isinstance(command, DeleteSegment):
        return [("delete_segment", (command.name,))] * shards
    if isinstance(command, UpdateSchema):
        return [("update_schema", (command.spec,))] * shards
    if isinstance(command, Merge):
        per_shard: list[list[tuple]] = [[] for _ in range(shards)]
        for step, owner in zip(command.steps, shards_of([step[1] for step in command.steps], shards).tolist()):
            per_shard[owner].append(step)
        return [("merge", (steps, command.now)) if steps else None for steps in per_shard]
    if isinstance(command, Expire):
        return [("expire", (command.now,))] * shards
    if isinstance(command, Erase):
        groups = split_by_shard(command.ids, lambda i: i, shards)
        return [("erase", (group, command.now)) if group else None for group in groups]
    if isinstance(command, (AddDestination, RemoveDestination)):
        return [None] * shards
    raise TypeError(f"not a write command: {type(command).__name__}")


def applied_count(results: list[Any]) -> int:
    """The number of records a data command applied, from its shards' answers."""
    return sum(r for r in results if r)


def merged_segment_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One segment's info from every shard's: member counts added, the latest clock."""
    merged = dict(infos[0])
    merged["count"] = sum(info["count"] for info in infos)
    merged["as_of_ms"] = max(info["as_of_ms"] for info in infos)
    return merged
