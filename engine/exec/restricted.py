"""Re-evaluating saved segments on a few rows: the Executor a shard's ``SavedSegments.sync`` uses
when a write touched a small found set (engine.segments)."""
from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap
from ..store.events import NO_TIME, EventTypeStore
from .aggregate import aggregate_rows
from .did import CMP
from .executor import Executor
from .where_bins import present_where

#: Presence DIDs read each row's latest event time when re-evaluating at most this share of rows.
LATEST_TIME_SHARE = 1 / 64
PRESENT = frozenset({(">=", 1), (">", 0), ("!=", 0)})
ABSENT = frozenset({("=", 0), ("<", 1), ("<=", 0)})


def latest_times(store: EventTypeStore, rows: np.ndarray, size: int) -> np.ndarray:
    """Per row (of ``size`` rows), the time of its latest event of ``store``'s type (any time; NO_TIME if none)."""
    if store.last_ts is None:  # the store keeps it lazily: build it once
        store.latest_before(store.max_ts, size)
    assert store.last_ts is not None
    return store.last_ts.gather(rows)


@numba.njit(cache=True, nogil=True)
def member_events(rows, member):
    """Positions of the events whose row is marked in ``member``."""
    out = np.empty(len(rows), dtype=np.int64)
    n = 0
    for i in range(len(rows)):
        if member[rows[i]]:
            out[n] = i
            n += 1
    return out[:n]


class RestrictedExecutor(Executor):
    """The Executor used to re-evaluate saved segments on a few rows (a small found set).

    A presence DID (``DID(e[, WITHIN d | SINCE t])`` and its ``COUNT = 0`` form) reads each
    row's latest event time instead of the events of the window: a row has such an event iff its
    latest one is in the window, unless its latest event is in the future, and those rows (rare)
    are checked the usual way. A presence DID with a WHERE that splits by property intersects the
    found rows with the kept bin bitmaps (``engine.exec.where_bins``). Any other DID first picks the window's events of the found rows
    (one pass over their rows), then applies WHERE, AFTER LAST and the count to those only.
    """

    member = np.zeros(0, dtype=bool)

    @staticmethod
    def reads_latest_time(node: ast.Did) -> bool:
        """True for the DID forms evaluated from latest event times."""
        form = (node.count_op, node.count_n)
        return (node.where is None and node.after_last is None and node.before is None and not node.aggregates
                and (form in PRESENT or form in ABSENT))

    @staticmethod
    def reads_bins(node: ast.Did) -> bool:
        """True for the DID forms evaluated from the kept bin bitmaps of their WHERE (if it splits by property)."""
        form = (node.count_op, node.count_n)
        return (node.where is not None and node.after_last is None and not node.aggregates
                and (form in PRESENT or form in ABSENT))

    def pred_Did(self, node: ast.Did, found: BitMap | None) -> BitMap:
        form = (node.count_op, node.count_n)
        if found is None or len(found) > LATEST_TIME_SHARE * len(self.store.live):
            return super().pred_Did(node, found)
        if self.reads_bins(node):
            store = self.events.events.types[node.event]
            lo, hi = self.events.window_of(node, self.now)
            hit = present_where(self.events, node, store, lo, hi, self.now, found)
            if hit is not None:
                return found & hit if form in PRESENT else found - hit
        if not self.reads_latest_time(node):
            return self._count_few(node, found)
        store = self.events.events.types[node.event]
        lo, hi = self.events.window_of(node, self.now)
        rows = rows_of(found).astype(np.int64)
        latest = latest_times(store, rows, len(self.store.idmap))
        future = latest > hi
        present = to_bitmap(rows[(latest >= lo) & (latest != NO_TIME) & ~future], assume_sorted=True)
        if future.any():
            present |= self.events.present(store, lo, hi) & to_bitmap(rows[future], assume_sorted=True)
        return present if form in PRESENT else found - present

    def _count_few(self, node: ast.Did, found: BitMap) -> BitMap:
        """DID on the rows of ``found`` only, from their events in the window (exact within ``found``)."""
        store = self.events.events.types[node.event]
        lo, hi = self.events.window_of(node, self.now)
        rows = rows_of(found).astype(np.int64)
        size = len(self.store.idmap)
        if len(self.member) < size:
            self.member = np.zeros(max(size, int(len(self.member) * 1.25)), dtype=bool)
        self.member[rows] = True
        try:
            parts = [part.take(picks) for part in store.window(lo, hi)
                     if len(picks := member_events(part.rows, self.member))]
        finally:
            self.member[rows] = False
        keeps = self.events.event_masks(node, store, parts, self.now, size)
        if node.aggregates:
            return aggregate_rows(self.events, node, store, (lo, hi), parts, keeps, found, found)
        hits = [part.rows if keep is None else part.rows[keep] for part, keep in zip(parts, keeps)]
        counted, counts = np.unique(np.concatenate(hits) if hits else np.empty(0, np.int64), return_counts=True)
        per_row = np.zeros(len(rows), dtype=np.int64)
        per_row[np.searchsorted(rows, counted)] = counts
        return to_bitmap(rows[CMP[node.count_op](per_row, node.count_n)], assume_sorted=True)
