"""Per-profile reads and removals in an event store: the events of some rows, and deleting them.

Runs are never changed in place (see engine.store.events). Deleting the events of some rows takes
the rows out of the day, slot, ``ever`` and bin bitmaps and the latest times at once, and either
rebuilds the runs without their events (``drop_rows``: erasure) or marks the rows ``dead`` in each
type and leaves their events in the runs (``bury_rows``: a merge's departures, so a merge costs no
copy of the runs). A reader of runs never reports a dead row: readers size per-row arrays by
``EventTypeStore.row_bound()`` and intersect what they find with live rows, candidates or
bitmaps, which hold no dead row. ``compact`` rebuilds a type's runs without its dead events once
they pass a thirty-second of its live events (and ``drop_rows`` does it for the types it rebuilds
anyway; a snapshot capture for all), so they cost at most that share of the runs' memory. The
events of some live rows are found through the shard's event locator (``engine.store.event_locator``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import BitMap

from ..columns import CategoryColumn, Column, EventBatch, ValueColumn
from .bitmaps import to_bitmap
from .event_locator import locate, marked
from .events import EventStore, EventTypeStore
from .property_bitmaps import PropertyBitmaps
from .runs import Run


def _values(store: EventTypeStore, prop: str, kind: str, run: Run, picks: np.ndarray) -> list[Any]:
    """The Python values (None = null) of property ``prop`` of the events ``picks`` of ``run``."""
    column = run.props[prop][picks]
    if kind == "category":
        labels = store.labels[prop]
        return [None if code < 0 else labels[code] for code in column.tolist()]
    if kind == "float":
        values = store.float_values(prop, column)
        return [None if v != v else v for v in values.tolist()]
    if kind == "bool":
        return [None if code < 0 else bool(code) for code in column.tolist()]
    valid = run.valid[prop][picks]
    return [v if ok else None for v, ok in zip(column.tolist(), valid.tolist())]


def events_of(events: EventStore, rows: np.ndarray, size: int) -> list[dict[str, dict[str, Any]]]:
    """Per row of ``rows`` (a shard of ``size`` rows): per event type, ``{"ts": [...], "props": {name: [...]}}``
    of its events in time order (types without events left out), with ``"event_ids": [id or None, ...]``
    when one of them has an event id."""
    position = np.full(size, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    out: list[dict[str, dict[str, Any]]] = [{} for _ in range(len(rows))]
    for name, run, picks in locate(events, rows, size):
        store = events.types[name]
        kinds = store.definition.properties
        owners = position[run.rows[picks]].tolist()
        ts = (run.ts[picks].astype(np.int64) + run.base).tolist()
        props = {prop: _values(store, prop, kind, run, picks) for prop, kind in kinds.items()}
        eids = None if run.eids is None else events.event_ids.ids_of(run.eids[picks])
        for i, owner in enumerate(owners):
            entry = out[owner].setdefault(name, {"ts": [], "props": {prop: [] for prop in kinds}})
            if eids is not None and eids[i] is not None and "event_ids" not in entry:
                entry["event_ids"] = [None] * len(entry["ts"])
            entry["ts"].append(ts[i])
            for prop, values in props.items():
                entry["props"][prop].append(values[i])
            if "event_ids" in entry:
                entry["event_ids"].append(None if eids is None else eids[i])
    return out


def _column(store: EventTypeStore, prop: str, kind: str, raw: np.ndarray, valid: np.ndarray | None) -> Column:
    """Stored values of property ``prop`` (as a run keeps them) as a column an append takes back."""
    if kind == "category":
        labels = store.labels[prop]
        codes = raw.astype(np.int32)
        used = np.unique(codes[codes >= 0])  # only the labels these events use
        mapping = np.full(len(labels) + 1, -1, dtype=np.int32)
        mapping[used] = np.arange(len(used), dtype=np.int32)
        return CategoryColumn(mapping[codes], [labels[code] for code in used.tolist()])
    if kind == "float":
        values = store.float_values(prop, raw).astype(np.float64, copy=False)
        return ValueColumn(values, ~np.isnan(values))
    if kind == "bool":
        return ValueColumn(raw == 1, raw >= 0)
    assert valid is not None
    return ValueColumn(raw.astype(np.int64, copy=False), valid)


def event_batches(events: EventStore, rows: np.ndarray, ids: list[str],
                  size: int) -> tuple[dict[str, EventBatch], dict[str, np.ndarray]]:
    """The events of ``rows`` (distinct live rows of a shard of ``size`` rows) as one batch per event type
    that has some, each event named by the id beside its row in ``ids``, found through the event
    locator; and per such type, the number of events of each row (int64, beside ``rows``). Within a
    batch the events are grouped by run, each run's in time order."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return {}, {}
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    per_type: dict[str, list[tuple[Run, np.ndarray]]] = {}
    for name, run, picks in locate(events, rows, size):
        per_type.setdefault(name, []).append((run, picks))
    out: dict[str, EventBatch] = {}
    counts: dict[str, np.ndarray] = {}
    for name, parts in per_type.items():
        store = events.types[name]
        owners = order[np.searchsorted(sorted_rows, np.concatenate([run.rows[p] for run, p in parts]))]
        counts[name] = np.bincount(owners, minlength=len(rows))
        ts = np.concatenate([run.ts[p].astype(np.int64) + run.base for run, p in parts])
        props = {}
        for prop, kind in store.definition.properties.items():
            raw = np.concatenate([run.props[prop][p] for run, p in parts])
            valid = np.concatenate([run.valid[prop][p] for run, p in parts]) if prop in parts[0][0].valid else None
            props[prop] = _column(store, prop, kind, raw, valid)
        event_ids = None
        if any(run.eids is not None for run, _ in parts):
            entries = np.concatenate([run.event_ids()[p] for run, p in parts])
            if bool((entries >= 0).any()):
                event_ids = events.event_ids.ids_of(entries)
        out[name] = EventBatch(name, [ids[i] for i in owners.tolist()], ts, props, event_ids)
    return out, counts


@dataclass
class Unindexing:
    """What taking some rows out of one type's day, slot and bin bitmaps changes, worked out ahead
    (``plan_unindex``): per day and per slot key, the rows to take out of its bitmap (only where it
    holds some), the slot keys there were then (a slot day a query builds later is worked on whole),
    and per property with bins, its bitmaps and their ``plan_drop`` (bins built later: dropped whole)."""

    days: dict[int, BitMap]
    slots: dict[int, BitMap]
    slot_keys: frozenset[int]
    bins: dict[str, tuple[PropertyBitmaps, dict[int, dict[int, BitMap]]]]  # per property, its ``plan_drop``


def plan_unindex(events: EventStore, rows: np.ndarray) -> dict[str, Unindexing]:
    """Per event type holding some of ``rows``, the ``Unindexing`` of them (read only: a merge's prepare)."""
    gone = to_bitmap(np.asarray(rows, dtype=np.int64))
    out: dict[str, Unindexing] = {}
    for name, store in events.types.items():
        if not store.ever.intersect(gone):
            continue
        slots = store.slots
        days = {day: bitmap & gone for day, bitmap in list(store.days.items()) if bitmap.intersect(gone)}
        bins = {prop: (kept, kept.plan_drop(gone)) for prop, kept in list(store.prop_bitmaps.items())}
        parts = {key: bitmap & gone for key, bitmap in list(slots.items()) if bitmap.intersect(gone)}
        out[name] = Unindexing(days, parts, frozenset(slots), bins)
    return out


def _unindex(store: EventTypeStore, rows: np.ndarray, gone: BitMap, planned: Unindexing | None = None) -> None:
    """Take ``rows`` (``gone``) out of ``store``'s day, slot, ``ever`` and bin bitmaps and latest times
    (in place, as appends add to them: no copy of a bitmap the rows are not in; ``planned``: the day
    and slot bitmaps that hold them, worked out ahead against the store as it is)."""
    if planned is None:
        for buckets in (store.days, store.slots):
            for key, bitmap in list(buckets.items()):
                bitmap.difference_update(gone)  # one pass whether or not it holds some (an intersect test is another)
                if buckets is store.days and not bitmap:
                    del buckets[key]
    else:
        for day, part in planned.days.items():
            bitmap = store.days[day]
            bitmap.difference_update(part)
            if not bitmap:
                del store.days[day]
        for key, bitmap in list(store.slots.items()):
            if key not in planned.slot_keys:  # a slot day built since the plan was made
                bitmap.difference_update(gone)
            elif key in planned.slots:
                bitmap.difference_update(planned.slots[key])
    store.ever.difference_update(gone)
    for prop, kept in store.prop_bitmaps.items():
        bins = None if planned is None else planned.bins.get(prop)
        kept.drop(gone, bins[1] if bins is not None and bins[0] is kept else None)  # else built since the plan
    if store.count_levels is not None:
        store.count_levels.drop(gone)
    if store.last_ts is not None:
        store.last_ts.clear(rows)


def _remove_marked(store: EventTypeStore, mask: np.ndarray, released: list[np.ndarray]) -> int:
    """Rebuild the runs of ``store`` without the events whose row is set in ``mask``; returns how many went
    (their event id entries are added to ``released``)."""
    deleted = 0
    for epoch, runs in list(store.epochs.items()):
        kept_runs = []
        for run in runs:
            hits = marked(run.rows, mask)
            if len(hits) == 0:
                kept_runs.append(run)
                continue
            deleted += len(hits)
            if run.eids is not None:
                released.append(run.eids[hits])
            if len(hits) < len(run):
                keep = np.ones(len(run), dtype=bool)
                keep[hits] = False
                kept_runs.append(run.take(keep))  # a boolean mask: no index array is built
        if kept_runs:
            store.epochs[epoch] = kept_runs
        else:
            del store.epochs[epoch]
    return deleted


def drop_rows(events: EventStore, rows: np.ndarray, size: int) -> int:
    """Delete every event of ``rows`` (a shard of ``size`` rows) from the runs, with the events of the
    rows deleted by marking in the types it touches; returns how many events of ``rows`` were deleted."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return 0
    gone = to_bitmap(rows)
    mask = np.zeros(size, dtype=bool)
    mask[rows] = True
    deleted = 0
    released: list[np.ndarray] = []
    for store in events.types.values():
        if not store.ever.intersect(gone):
            continue
        with store.level_builds.lock:  # a count-level build running now would miss the deletion
            store.level_builds.invalidate()
            dead = np.frombuffer(store.dead.to_array(), dtype=np.uint32)
            mask[dead] = True
            hits = _remove_marked(store, mask, released) - store.dead_events
            mask[dead] = False  # a dead row is never one of ``rows`` (those are live)
            store.count -= hits
            deleted += hits
            dropped = np.union1d(rows, dead) if len(dead) else np.unique(rows)
            store.dead, store.dead_events = BitMap(), 0
            _unindex(store, rows, gone)
            store.dropped_rows(dropped)
    if released:
        events.release_event_ids(np.concatenate(released))
    return deleted


def bury_rows(events: EventStore, rows: np.ndarray, counts: dict[str, int] | None,
              planned: dict[str, Unindexing] | None = None) -> None:
    """Delete every event of ``rows`` by marking: the rows leave every bitmap and join ``dead``, their
    events stay in the runs (no read sees them) until ``compact`` removes them. ``counts``: the number
    of events of ``rows`` per type (None: counted here, one pass over the runs of the types they had).
    ``planned``: ``plan_unindex`` of the rows it knew of, made against the store as it is."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return
    gone = to_bitmap(rows)
    for name, store in events.types.items():
        held = store.ever & gone
        if not held:
            continue
        if counts is None:
            mask = np.zeros(store.row_bound(), dtype=bool)
            mask[rows[rows < len(mask)]] = True
            n = sum(int(np.count_nonzero(mask[run.rows])) for run in store.runs)
        else:
            n = int(counts.get(name, 0))
        with store.level_builds.lock:  # a count-level build running now would count the buried rows
            store.level_builds.invalidate()
            store.count -= n
            store.dead_events += n
            store.dead |= held
            _unindex(store, rows, gone, None if planned is None else planned.get(name))
            buried = np.frombuffer(held.to_array(), dtype=np.uint32).astype(np.int64)
            store.dropped_rows(buried)


#: The events deleted by marking that a type keeps in its runs: at most this share of its live events
#: (compacted beyond it), or fewer than COMPACT_MIN_DEAD_EVENTS.
COMPACT_DEAD_SHARE = 32
COMPACT_MIN_DEAD_EVENTS = 1 << 16


def compact(events: EventStore, force: bool = False) -> int:
    """Remove from the runs the events deleted by marking, in every type holding more of them than
    its share allows (``force``: every type holding any); returns how many events were removed."""
    removed = 0
    released: list[np.ndarray] = []
    for store in events.types.values():
        if not store.dead_events and not store.dead:
            continue
        if not force and (store.dead_events < COMPACT_MIN_DEAD_EVENTS
                          or store.dead_events * COMPACT_DEAD_SHARE < store.count):
            continue
        with store.level_builds.lock:  # a build reading the runs as they were reads the buried events
            store.level_builds.invalidate()
            removed += _remove_marked(store, store.dead_mask(), released)
            buried = np.frombuffer(store.dead.to_array(), dtype=np.uint32).astype(np.int64)
            store.dead, store.dead_events = BitMap(), 0
            store.dropped_rows(buried)  # their sums went when they were buried
    if released:
        events.release_event_ids(np.concatenate(released))
    return removed
