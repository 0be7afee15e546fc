"""A shard write worked out ahead of its commit: the prepare phase of ``LocalShard.load_events`` (and,
alike, of ``LocalShard.merge``: engine.shard.prepared_merge).

A write reaches a shard in two calls. ``prepare_logged(seq, method, args)`` computes, while
readers keep reading, everything the write can compute without changing what they see: the rows
of the batch's ids (hashing and probing the id map; new ids get the rows they will have), the
events sorted by time and cut into runs merged with the epoch's runs (as new lists), and the
day and slot bitmaps of the new rows. ``apply_logged(seq, ...)`` (under the engine's exclusive
publish step) then only installs them: inserts the new ids, swaps in the run lists, ORs the
bitmaps in, and brings the saved segments up to date.

Writes reach a shard one at a time in log order, so a plan made after write ``seq - 1`` is
still exact when write ``seq`` commits; the shard checks that (same last applied sequence number,
same row count) and otherwise works the write out again at commit time, so a write whose
prepare was lost (a respawned worker, a recovery in between) applies exactly as on replay.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pyroaring import BitMap

from ..columns import EventBatch
from ..concurrency import in_view_call
from ..store.bitmaps import to_bitmap
from ..store.events import AppendPlan
from ..store.memory import release_after_bulk
from ..store.profiles import RowPlan

if TYPE_CHECKING:
    from .local import LocalShard

#: The shard write methods with a prepare phase.
PREPARED_METHODS = frozenset({"load_events", "merge"})
#: The prepared methods whose commit reaches a shard that prepared the write without its arguments
#: (``apply_logged(seq, method, None)``: the shard holds them with its plan), as they cost a second
#: encoding and decoding across the process boundary (a merge's steps are Python objects).
BY_REFERENCE = frozenset({"merge"})


#: The shard write methods whose commit keeps membership as it was until ``publish_view``: a write
#: made only of them is a view write (engine.concurrency).
VIEW_METHODS = frozenset({"load_events", "merge"})


def view_safe(calls: list[tuple | None]) -> bool:
    """True if a write's shard calls are a view write (engine.concurrency): columnar event batches and
    merges, whose commit keeps membership as it was until ``publish_view``."""
    return all(call is None or call[0] in VIEW_METHODS for call in calls)


@dataclass
class PreparedEvents:
    """A columnar event batch's write, prepared against the shard state after log record ``after``."""

    seq: int
    after: int
    batch: EventBatch
    now: int | None
    rows: RowPlan
    append: AppendPlan | None  # None: the events are appended at commit (event ids, new labels...)
    touched: BitMap

    def valid_for(self, shard: LocalShard, seq: int) -> bool:
        """True if the plan is exact for write ``seq`` on ``shard`` as it is now."""
        return (self.seq == seq and shard.persistence.applied_seq == self.after
                and len(shard.profiles.idmap) == self.rows.known)


def plan_load_events(shard: LocalShard, batch: EventBatch, now: int | None, seq: int = 0) -> PreparedEvents:
    """Work out ``shard.load_events(batch, now)`` without changing the shard."""
    rows = shard.profiles.plan_rows(batch.ids, repeats=True)
    append = None
    if batch.event_ids is None:
        append = shard.events.types[batch.event].plan_append(rows.rows, batch.ts, batch.props)
    return PreparedEvents(seq, shard.persistence.applied_seq, batch, now, rows, append, to_bitmap(rows.rows))


def commit_load_events(shard: LocalShard, plan: PreparedEvents) -> int:
    """Apply a prepared event batch (made against the shard as it is); returns how many events were applied.

    In a view call (a view write: engine.concurrency) the membership switch waits for the
    coordinator's ``publish_view`` (membership is read beside the commit, and waits only while the
    batch's new ids are inserted); otherwise a batch that creates profiles holds the segments' view
    from their insertion on (engine.segments)."""
    if in_view_call():
        with shard.saved.deferring(creates_rows=bool(plan.rows.new_ids)):
            return _commit(shard, plan)
    with shard.saved.view if plan.rows.new_ids else nullcontext():
        return _commit(shard, plan)


def _commit(shard: LocalShard, plan: PreparedEvents) -> int:
    batch = plan.batch
    store = shard.events.types[batch.event]
    with shard.saved.view:  # membership reads the id map: not while it inserts ids
        rows = shard.profiles.take_rows(plan.rows)
    if plan.append is not None:
        store.commit_append(plan.append)
        applied = len(batch)
    elif batch.event_ids is None:
        store.append(rows, batch.ts, batch.props)
        applied = len(batch)
    else:
        keep, eids = shard.events.event_ids.admit(rows, batch.event_ids)
        picks = np.flatnonzero(keep)
        kept = batch if len(picks) == len(batch) else batch.take(picks)
        store.append(rows[picks], kept.ts, kept.props, eids[picks])
        applied = len(picks)
    shard.saved.sync(plan.touched, plan.now, (), (batch.event,), plan.rows.created())
    release_after_bulk(len(batch))
    return applied
