"""SEQUENCE without WHERE, per candidate row, from each run's events grouped by row.

Every run of a step's type that the window reaches has a ``RowIndex`` (``engine.store.row_index``):
per row, its event times in order. ``row_slices`` finds each candidate row's window events in each
such run (one forward galloping search over the run's rows, the candidates ascending). Then,
backwards from each event of the last step (an *end*): step j's event is the latest of its type
strictly before step j + 1's, one binary search per run in the row's slice (``latest_before``).
For a given end that greedy yields the latest first event of any chain, so the row holds iff for
some end the chain completes and, with ``SPAN d``, its first event is at most d before the end;
without ``SPAN`` the row's latest end decides. Forwards, symmetrically, from each event of the first
step with the earliest next events (``earliest_after``). The direction whose starting step's type has
fewer of the candidates' window events is taken, so the cost follows the rare steps: (k - 1) binary
searches per end (or start), never a pass over the other steps' events. Each kernel reads one run,
so the arrays stay plain arguments.

>>> times = np.array([1, 5, 9], np.uint32)  # one row's events of a run, base 0
>>> a, b = np.array([0]), np.array([3])
>>> rows, bounds = np.array([0, 0, 0]), np.array([6, 1, 10])
>>> out = np.full(3, NONE)
>>> latest_before(times, 0, a, b, rows, bounds, np.full(3, 2), out); out.tolist() == [5, NONE, 9]
True
>>> out = np.full(3, NONE)
>>> earliest_after(times, 0, a, b, rows, bounds, np.full(3, 8), out); out.tolist() == [NONE, 5, NONE]
True
"""
from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap
from ..store.events import EventStore
from ..store.row_index import row_slices
from ..store.runs import EPOCH_BITS, EPOCH_SPAN

NONE = np.iinfo(np.int64).min


@numba.njit(cache=True, nogil=True)
def latest_before(times, base, a, b, rows, bounds, floors, out):
    """out[e] = max(out[e], the latest time in [floors[e], bounds[e]) among row rows[e]'s events
    times[a[r]:b[r]] (uint32 from ``base``)); out keeps NONE where neither has one."""
    for e in range(len(rows)):
        r = rows[e]
        x, y = a[r], b[r]
        limit = bounds[e] - 1 - base  # times <= limit
        if x == y or limit < 0:
            continue
        lo, size = x, y - x  # branch-free: the loads of several searches overlap
        while size > 1:
            half = size >> 1
            lo = lo + half if np.int64(times[lo + half - 1]) <= limit else lo
            size -= half
        lo += size if np.int64(times[lo]) <= limit else 0
        if lo > x:
            t = base + np.int64(times[lo - 1])
            if t > out[e] and t >= floors[e]:
                out[e] = t


@numba.njit(cache=True, nogil=True)
def earliest_after(times, base, a, b, rows, bounds, ceilings, out):
    """out[e] = min(out[e], the earliest time in (bounds[e], ceilings[e]] among row rows[e]'s events),
    NONE standing for none (see ``latest_before``)."""
    for e in range(len(rows)):
        r = rows[e]
        x, y = a[r], b[r]
        limit = bounds[e] + 1 - base  # times >= limit
        if x == y:
            continue
        lo, size = x, y - x  # branch-free, as in latest_before
        while size > 1:
            half = size >> 1
            lo = lo + half if np.int64(times[lo + half - 1]) < limit else lo
            size -= half
        lo += size if np.int64(times[lo]) < limit else 0
        if lo < y:
            t = base + np.int64(times[lo])
            if t <= ceilings[e] and (out[e] == NONE or t < out[e]):
                out[e] = t


@numba.njit(cache=True, nogil=True)
def edge_events(times, base, a, b, latest, every, edge):
    """The events a chain may start from. With ``every``: each row's events (rows, times, in row
    order; equal times of a row once). Else ``edge`` (per row, NONE: none yet) takes each row's
    latest (``latest``) or earliest event, and nothing is returned."""
    n = len(a)
    size = int((b - a).sum()) if every else 0
    rows = np.empty(size, dtype=np.int64)
    out = np.empty(size, dtype=np.int64)
    k = 0
    for r in range(n):
        x, y = a[r], b[r]
        if x == y:
            continue
        if not every:
            t = base + np.int64(times[y - 1] if latest else times[x])
            if edge[r] == NONE or (t > edge[r] if latest else t < edge[r]):
                edge[r] = t
            continue
        for p in range(x, y):
            if p > x and times[p] == times[p - 1]:
                continue
            rows[k] = r
            out[k] = base + np.int64(times[p])
            k += 1
    return rows[:k], out[:k]


def _sources(events: EventStore, event: str, low: int, hi: int, rows: np.ndarray, clip: bool) -> list[tuple]:
    """Per run of ``event`` that [low, hi] reaches: (its row-grouped times, base, and per candidate row
    of ``rows`` the slice [a, b) of its window events; without ``clip``, of all its events there)."""
    store = events.types[event]
    out = []
    for epoch in sorted(store.epochs):
        base = epoch << EPOCH_BITS
        if base > hi or base + EPOCH_SPAN - 1 < low:
            continue
        for run in store.epochs[epoch]:
            index = store.row_index(run)
            a, b = row_slices(index.keys, index.starts, index.times, base, rows, low, hi, clip)
            out.append((index.times, base, a, b))
    return out


def indexed_sequence_rows(events: EventStore, node: ast.Sequence, lows: dict[str, int], hi: int,
                          candidates: BitMap) -> BitMap:
    """The rows of ``candidates`` that hold ``node`` (no step has a WHERE); each step's events lie in
    [lows[its type], hi]."""
    rows = rows_of(candidates).astype(np.int64)
    steps = list(node.steps)

    def window_events(event: str) -> int:
        return sum(len(part) for part in events.types[event].window(lows[event], hi))

    backward = window_events(steps[-1].event) <= window_events(steps[0].event)
    if backward:
        steps.reverse()  # walk from the last step to the first
    # the starting step's events are the window's; later steps search a row's events and check the window
    sources = {event: _sources(events, event, lows[event], hi, rows, event == steps[0].event)
               for event in dict.fromkeys(step.event for step in steps)}
    every = node.span_ms is not None
    if every:
        parts = [edge_events(times, base, a, b, backward, True, rows) for times, base, a, b in sources[steps[0].event]]
        if not parts:
            return BitMap()
        owners = np.concatenate([part[0] for part in parts])
        edges = np.concatenate([part[1] for part in parts])
    else:  # the latest end (earliest start) decides
        edges = np.full(len(rows), NONE, dtype=np.int64)
        for times, base, a, b in sources[steps[0].event]:
            edge_events(times, base, a, b, backward, False, edges)
        owners = np.flatnonzero(edges != NONE)
        edges = edges[owners]
    bounds = edges
    for step in steps[1:]:
        # every event of a chain lies in the window and, with SPAN d, within d of its end (start)
        if backward:
            limits = np.maximum(edges - node.span_ms, lows[step.event]) if every else np.full(len(owners), lows[step.event])
        else:
            limits = np.minimum(edges + node.span_ms, hi) if every else np.full(len(owners), hi)
        found = np.full(len(owners), NONE, dtype=np.int64)
        for times, base, a, b in sources[step.event]:
            (latest_before if backward else earliest_after)(times, base, a, b, owners, bounds, limits, found)
        chained = found != NONE
        owners, edges, bounds = owners[chained], edges[chained], found[chained]
    if every:
        length = edges - bounds if backward else bounds - edges
        owners = owners[length <= node.span_ms]
    return to_bitmap(rows[owners])
