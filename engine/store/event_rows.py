"""Per-profile reads and removals in an event store: the events of some rows, and dropping them.

Runs are never changed in place (see engine.store.events): a removal builds new runs without
the dropped rows' events and takes the rows out of the day, slot and ``ever`` bitmaps.
"""
from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..columns import CategoryColumn, Column, EventBatch, ValueColumn
from .bitmaps import to_bitmap
from .events import NO_TIME, EventStore, EventTypeStore
from .runs import Run


@numba.njit(cache=True, nogil=True)
def marked(rows, mask):
    """The positions ``i`` with ``mask[rows[i]]`` (int64, in order): two passes, no temporary per event."""
    count = 0
    for i in range(len(rows)):
        if mask[rows[i]]:
            count += 1
    out = np.empty(count, dtype=np.int64)
    k = 0
    for i in range(len(rows)):
        if mask[rows[i]]:
            out[k] = i
            k += 1
    return out


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
    mask = position >= 0  # one byte per row: the scan's lookups stay in cache
    out: list[dict[str, dict[str, Any]]] = [{} for _ in range(len(rows))]
    picked = to_bitmap(np.asarray(rows))
    for name, store in events.types.items():
        if not store.ever.intersect(picked):
            continue
        kinds = store.definition.properties
        for run in store.runs:
            picks = marked(run.rows, mask)
            if len(picks) == 0:
                continue
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


def event_batches(events: EventStore, rows: np.ndarray, ids: list[str], size: int) -> dict[str, EventBatch]:
    """The events of ``rows`` (distinct rows of a shard of ``size`` rows) as one batch per event type that
    has some, each event named by the id beside its row in ``ids``; one pass over each run of a type
    that some of the rows ever had. Within a batch the events are grouped by run, each run's in time order."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return {}
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    mask = np.zeros(size, dtype=bool)
    mask[rows] = True
    picked = to_bitmap(rows)
    out: dict[str, EventBatch] = {}
    for name, store in events.types.items():
        if not store.ever.intersect(picked):
            continue
        parts = [(run, picks) for run in store.runs for picks in (marked(run.rows, mask),) if len(picks)]
        if not parts:
            continue
        owners = order[np.searchsorted(sorted_rows, np.concatenate([run.rows[p] for run, p in parts]))]
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
    return out


def drop_rows(events: EventStore, rows: np.ndarray, size: int) -> int:
    """Delete every event of ``rows`` (a shard of ``size`` rows); returns how many were deleted."""
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
        for epoch, runs in list(store.epochs.items()):
            kept_runs = []
            for run in runs:
                hits = marked(run.rows, mask)
                if len(hits) == 0:
                    kept_runs.append(run)
                    continue
                store.count -= len(hits)
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
        for buckets in (store.days, store.slots):
            for key in [key for key, bitmap in buckets.items() if bitmap.intersect(gone)]:
                bitmap = buckets[key] - gone
                if len(bitmap) or buckets is store.slots:
                    buckets[key] = bitmap
                else:
                    del buckets[key]
        store.ever = store.ever - gone
        for kept in store.prop_bitmaps.values():
            kept.drop(gone)
        store.window_sums.dropped(store.generation, np.unique(rows))
        if store.last_ts is not None:
            inside = rows[rows < store.last_ts.size]
            store.last_ts.data[inside] = NO_TIME
        store.generation += 1
    if released:
        events.release_event_ids(np.concatenate(released))
    return deleted
