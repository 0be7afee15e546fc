"""A merge worked out ahead of its commit: the prepare phase of ``LocalShard.merge``.

``plan_merge`` computes, while readers keep reading, everything a shard's merge steps (see
engine.shard.identity_ops) can compute without changing what they see: the rows of the targets
(new ones get the rows they will have), the merged consents and the attribute fills (each target's
null attributes, read from the indexes), the aliases the targets receive, the live rows of the
departing profiles with their events per type and the parts of the day and slot bitmaps that hold
them (``event_rows.plan_unindex``), and, per event type, the moved events sorted by time and cut
into runs with their day and slot bitmaps (``EventTypeStore.plan_append``). ``commit_merge``
(under the engine's exclusive publish step) then only installs them: creates the new targets, sets
consents and fills, links the aliases, commits the appends, takes the departing rows out (in place,
from only the day and slot bitmaps that hold them), syncs the saved segments once and forgets the
departed ids.

A plan is exact only for the shard state it was made against: like an event batch's
(engine/shard/prepared.py), it is taken only if no write was applied between the prepare and
the commit (same last applied sequence number, same row count); otherwise the commit applies the
steps whole (``identity_ops.apply_steps``). Steps the plan does not cover (a departure named again
by a later step, payloads that carry their events in lists, as old logs do) are applied whole too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..columns import Column, EventBatch
from ..concurrency import in_view_call
from ..store.event_rows import Unindexing, compact, plan_unindex
from ..store.events import AppendPlan
from ..store.profiles import RowPlan
from .identity_ops import Received, departures, fill_columns, merge_consent, remove_profiles, settle

if TYPE_CHECKING:
    from .local import LocalShard


@dataclass
class MovedEvents:
    """One event type's moved events for a shard: their target rows, and their append worked out
    (None: appended at commit, as when they carry event ids or need a new category label)."""

    name: str
    rows: np.ndarray
    batch: EventBatch
    append: AppendPlan | None


@dataclass
class PreparedMerge:
    """A shard's merge steps, prepared against the shard state after log record ``after``."""

    seq: int
    after: int
    args: tuple  # the shard call's (steps, now), for a commit sent without them
    now: int
    steps: int
    targets: RowPlan
    consents: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    fills: dict[str, tuple[np.ndarray, Column]] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    alias_rows: list[int] = field(default_factory=list)
    leaving: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    counts: dict[str, int] | None = None
    unindexing: dict[str, Unindexing] = field(default_factory=dict)
    moved: list[MovedEvents] = field(default_factory=list)
    received: list[int] = field(default_factory=list)

    def valid_for(self, shard: LocalShard, seq: int) -> bool:
        """True if the plan is exact for write ``seq`` on ``shard`` as it is now."""
        return (self.seq == seq and shard.persistence.applied_seq == self.after
                and len(shard.profiles.idmap) == self.targets.known)


def plan_merge(shard: LocalShard, steps: list[tuple], now: int, seq: int = 0) -> PreparedMerge | None:
    """Work out ``shard.merge(steps, now)`` without changing the shard; None if the steps need the
    whole path (see the module docstring)."""
    leaving: dict[str, dict[str, int] | None] = {}
    arriving: list[tuple] = []
    moved: list[dict[str, EventBatch]] = []
    for step in steps:
        if step[0] == "out":
            leaving[step[1]] = step[2] if len(step) > 2 else None
        elif step[0] == "events":
            moved.append(step[2])
        elif step[1] in leaving or step[2]["events"]:
            return None
        else:
            arriving.append(step)
    profiles = shard.profiles
    targets = profiles.plan_rows([step[1] for step in arriving])
    plan = PreparedMerge(seq, shard.persistence.applied_seq, (steps, now), now, len(steps), targets)
    rows = targets.rows.tolist()
    fills = _receive_plan(shard, plan, arriving, rows)
    _fill_plan(shard, plan, fills)
    planned = {step[1]: row for step, row in zip(arriving, rows)}
    plan.leaving, plan.counts = departures(shard, leaving)
    created = [planned[i] for i in leaving if planned.get(i, -1) >= targets.known]
    plan.unindexing = plan_unindex(shard.events, plan.leaving)
    if created:  # a target created by an earlier step of the batch, departing by a later one
        plan.leaving = np.union1d(plan.leaving, np.array(created, dtype=np.int64))
    received: dict[int, None] = dict.fromkeys(rows)
    appended: set[str] = set()
    for batches in moved:
        for name, batch in batches.items():
            if not len(batch):
                continue
            owners = _target_rows(shard, planned, batch.ids)
            if owners is None:
                return None
            append = None
            if batch.event_ids is None and name not in appended:  # a second batch of a type: appended at commit
                append = shard.events.types[name].plan_append(owners, batch.ts, batch.props)
            appended.add(name)
            plan.moved.append(MovedEvents(name, owners, batch, append))
            received.update(dict.fromkeys(np.unique(owners).tolist()))
    plan.received = list(received)
    return plan


def _target_rows(shard: LocalShard, planned: dict[str, int], ids: list[str]) -> np.ndarray | None:
    """The row (int32) of each moved event's target, None if one is not a profile of this shard."""
    targets = dict.fromkeys(ids)  # few targets, many events: look each up once
    unplanned = [i for i in targets if i not in planned]
    found = dict(planned)
    if unplanned:
        found.update(zip(unplanned, shard.profiles.idmap.lookup(unplanned).tolist()))
    rows = np.array(list(map(found.__getitem__, ids)), dtype=np.int64)
    if not bool((rows >= 0).all()):
        return None
    return rows.astype(np.int32)


def _receive_plan(shard: LocalShard, plan: PreparedMerge, steps: list[tuple],
                  rows: list[int]) -> dict[str, dict[int, Any]]:
    """What the ``("in", id, payload)`` steps do to their target ``rows``, in order (as
    ``identity_ops._receive`` applies them): consents merged, aliases linked; returns the attribute
    fills (per attribute, row -> the first value a row receives)."""
    profiles = shard.profiles
    known = plan.targets.known
    asked = np.unique(np.array([row for row, step in zip(rows, steps) if step[2]["consents"] and row < known],
                               dtype=np.int64))
    consents: dict[int, dict[str, bool]] = dict(zip(asked.tolist(), profiles.consents_of_rows(asked)))
    named: dict[str, dict[int, None]] = {}
    fills: dict[str, dict[int, Any]] = {}
    for row, (_, profile_id, payload) in zip(rows, steps):
        for name, value in payload["attrs"].items():
            fills.setdefault(name, {}).setdefault(row, value)
        if payload["consents"]:
            current = consents.setdefault(row, {})  # a target created by the merge has none yet
            for purpose, granted in payload["consents"].items():
                if purpose in profiles.consents:
                    current[purpose] = merge_consent(current.get(purpose), bool(granted))
                    named.setdefault(purpose, {})[row] = None
        moved = [alias for alias in payload["aliases"] if alias != profile_id]
        plan.aliases.extend(moved)
        plan.alias_rows.extend([row] * len(moved))
    for purpose, touched in named.items():
        target = np.fromiter(touched, dtype=np.int64, count=len(touched))
        plan.consents[purpose] = (target, np.array([bool(consents[r][purpose]) for r in touched], dtype=bool))
    return fills


def _fill_plan(shard: LocalShard, plan: PreparedMerge, fills: dict[str, dict[int, Any]]) -> None:
    """The attribute fills as columns (``identity_ops.fill_columns``)."""
    plan.fills.update(fill_columns(shard, fills))


def commit_merge(shard: LocalShard, plan: PreparedMerge) -> int:
    """Apply a prepared merge (made against the shard as it is); returns its number of steps.

    In a view call (a view write: engine.concurrency) membership keeps seeing the shard as it was,
    departed profiles and their ids included, until the coordinator's ``publish_view``."""
    if in_view_call():
        with shard.saved.deferring(creates_rows=bool(plan.targets.new_ids), removes_rows=True):
            return _commit(shard, plan)
    return _commit(shard, plan)


def _commit(shard: LocalShard, plan: PreparedMerge) -> int:
    profiles = shard.profiles
    known = plan.targets.known
    if len(plan.targets.rows):
        with shard.saved.view:  # membership reads the id map: not while it inserts ids
            profiles.take_rows(plan.targets)
        profiles._wrote()
    for purpose, (rows, granted) in plan.consents.items():
        profiles._set_consent(purpose, rows, granted)
    for name, (rows, column) in plan.fills.items():
        profiles.indexes[name].assign(rows, column)
    shard.aliases.add_many(plan.aliases, plan.alias_rows)
    for moved in plan.moved:  # the targets' rows are not the departing ones: appending first changes nothing
        store = shard.events.types[moved.name]
        if moved.append is not None:
            store.commit_append(moved.append)
        else:
            batch = moved.batch
            eids = None if batch.event_ids is None else shard.events.event_ids.acquire(moved.rows, batch.event_ids)
            store.append(moved.rows, batch.ts, batch.props, eids)
    if len(plan.leaving):
        remove_profiles(shard, plan.leaving, plan.now, plan.counts, settled=False, unindexing=plan.unindexing)
    received = Received(frozenset(plan.fills), frozenset(moved.name for moved in plan.moved if len(moved.rows)),
                        frozenset(plan.consents))
    settle(shard, plan.leaving, plan.received, known, plan.now, received)
    compact(shard.events)
    return plan.steps
