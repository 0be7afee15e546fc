"""Retention of events per type (``"retention": "400d"`` in the schema): the query-time rule and expiry.

At clock ``now``, an event of a type with retention ``r`` exists only if ``ts > now - r``:
``floor(definition, now)`` is the least timestamp that still exists (NO_TIME without retention),
the one bound every reader of events (DID, AFTER LAST, aggregates, SEQUENCE, export) applies.
``expire_events`` deletes the events below the floor for good.

>>> from engine.schema import EventDef
>>> floor(EventDef("view", {}, 1000), now=5000), floor(EventDef("view", {}), now=5000) == NO_TIME
(4001, True)
"""
from __future__ import annotations

import numpy as np
from pyroaring import BitMap

from .schema import EventDef
from .store.bitmaps import to_bitmap
from .store.events import NO_TIME, EventStore, EventTypeStore
from .store.runs import EPOCH_BITS


def floor(definition: EventDef, now: int) -> int:
    """The least timestamp of ``definition``'s type that exists at clock ``now``."""
    if definition.retention_ms is None:
        return NO_TIME
    return now - definition.retention_ms + 1


def expire_type(store: EventTypeStore, cutoff: int, released: list[np.ndarray] | None = None) -> np.ndarray:
    """Delete the events of ``store`` with ``ts <= cutoff``; returns their rows (with repeats). The event
    id entries of the deleted events are added to ``released``."""
    with store.level_builds.lock:  # a count-level build running now would miss the expiry
        store.level_builds.invalidate()
        return _expire_type(store, cutoff, released)


def _expire_type(store: EventTypeStore, cutoff: int, released: list[np.ndarray] | None) -> np.ndarray:
    gone: list[np.ndarray] = []
    for epoch in sorted(store.epochs):
        base = epoch << EPOCH_BITS
        if base > cutoff:
            break
        kept_runs = []
        for run in store.epochs[epoch]:
            offset = cutoff - base
            cut = len(run) if offset >= (1 << EPOCH_BITS) - 1 else \
                int(np.searchsorted(run.ts, np.uint32(offset), side="right"))
            if cut:
                gone.append(run.rows[:cut])
                if run.eids is not None and released is not None:
                    released.append(run.eids[:cut])
            if cut < len(run):
                kept_runs.append(run.slice(cut, len(run)) if cut else run)
        if kept_runs:
            store.epochs[epoch] = kept_runs
        else:
            del store.epochs[epoch]
    if not gone:
        return np.zeros(0, dtype=np.int32)
    rows = np.concatenate(gone)
    if store.dead:  # events of rows deleted by marking went too: they are no longer counted as dead
        buried = store.dead_mask()[rows]
        store.dead_events -= int(np.count_nonzero(buried))
        rows = rows[~buried]
    store.count -= len(rows)
    _reindex(store, cutoff, rows)
    store.window_sums.expired(store.generation, cutoff)
    store.generation += 1
    return rows


def _reindex(store: EventTypeStore, cutoff: int, rows: np.ndarray) -> None:
    """Day bitmaps, ``ever`` and latest times after the events up to ``cutoff`` (of ``rows``) went."""
    from .store.events import DAY_MS

    edge = cutoff // DAY_MS
    for day in [d for d in store.days if d < edge]:
        del store.days[day]
    if edge in store.days:
        remaining = [part.rows for part in store.window(edge * DAY_MS, (edge + 1) * DAY_MS - 1)]
        day = to_bitmap(np.concatenate(remaining)) - store.dead if remaining else BitMap()
        if day:
            store.days[edge] = day
        else:
            del store.days[edge]
    store.slots, store.slot_days = {}, {}  # rebuilt on demand from the remaining events
    touched = to_bitmap(rows)
    if store.prop_bitmaps:
        remaining_parts = store.window(edge * DAY_MS, (edge + 1) * DAY_MS - 1)
        edge_rows = np.concatenate([part.rows for part in remaining_parts]) if remaining_parts else np.zeros(0, np.int32)
        alive = ~store.dead_mask()[edge_rows] if store.dead else None
        for prop, kept in store.prop_bitmaps.items():
            keys = [store.bin_keys(prop, part.props[prop], part.valid.get(prop)) for part in remaining_parts]
            keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
            if alive is not None:
                keys = keys[alive]
            kept.expire(edge, keys, edge_rows if alive is None else edge_rows[alive], touched)
    store.expire_levels(edge)
    still = [bitmap & touched for bitmap in store.days.values()]
    store.ever = (store.ever - touched) | (BitMap.union(*still) if still else BitMap())
    if store.last_ts is not None:
        store.last_ts.clear_at_most(cutoff)


def expire_events(events: EventStore, now: int) -> tuple[int, np.ndarray]:
    """Delete every event past its type's retention at clock ``now``; (how many, the rows touched)."""
    deleted = 0
    touched: list[np.ndarray] = []
    released: list[np.ndarray] = []
    for store in events.types.values():
        lowest = floor(store.definition, now)
        if lowest == NO_TIME:
            continue
        rows = expire_type(store, lowest - 1, released)
        deleted += len(rows)
        if len(rows):
            touched.append(np.unique(rows))
    if released:
        events.release_event_ids(np.concatenate(released))  # their ids are forgotten with them
    return deleted, (np.unique(np.concatenate(touched)) if touched else np.zeros(0, dtype=np.int64))
