"""SEQUENCE without WHERE, per candidate row, from each run's events grouped by row.

Every run of a step's type that the window reaches has a ``RowIndex`` (``engine.store.row_index``):
per row, its event times in order. ``row_slices`` finds a row's events in such a run (a rank in the
run's row bitset, or a forward galloping search over its sorted rows: the rows ascend). Then,
backwards from each window event of the last step (an *end*): step j's event is the latest of its
type strictly before step j + 1's, one search per run in the row's times (``latest_before``; a
row's ends come in time order, so its searches only move forward). For a given end that greedy
yields the latest first event of any chain, so the row holds iff for some end the chain completes
and, with ``SPAN d``, its first event is at most d before the end; without ``SPAN`` the row's
latest end decides. Forwards, symmetrically, from each event of the first step with the earliest
next events (``earliest_after``). The direction whose starting step's type has more window events
is avoided, so the cost follows the rare steps: (k - 1) searches per end (or start), never a pass
over the other steps' events. A row's first complete chain decides it: at the last step its
other ends are skipped; with ``SPAN`` (many ends per row), when the last two steps each read one
run, ``last_two_steps`` walks them in one pass, so a row's ends after its first complete chain are
skipped at both. Each kernel reads one or two runs, so the arrays stay plain arguments (a tuple
of a variable number of runs' arrays would cost numba two atomic reference count updates per use).

>>> times = np.array([1, 5, 9], np.uint32)  # one row's events of a run, base 0
>>> a, b = np.array([0]), np.array([3])
>>> rows, bounds = np.array([0, 0, 0]), np.array([6, 1, 10])
>>> out = np.full(3, NONE)
>>> latest_before(times, 0, a, b, rows, bounds, bounds, -1, 2, out, np.zeros(0, bool)); out.tolist() == [5, NONE, 9]
True
>>> out = np.full(3, NONE)
>>> done = np.zeros(1, bool)  # the last step: the row's first complete chain marks it
>>> earliest_after(times, 0, a, b, rows, bounds, bounds, -1, 0, 8, out, done); out.tolist() == [NONE, 5, NONE], done.tolist()
(True, [True])
"""
from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap
from ..store.events import EventStore
from ..store.row_index import row_slices
from ..store.runs import EPOCH_BITS, EPOCH_SPAN, Run

NONE = np.iinfo(np.int64).min


@numba.njit(cache=True, nogil=True)
def _first_at_least(times, x, y, value):
    """The first position in [x, y) of sorted uint32 ``times`` holding a time >= value (y if none),
    galloping forward from x (the searches of one row's ends move forward: short hops, warm lines)."""
    if x == y or np.int64(times[x]) >= value:
        return x
    step = 1
    while x + step < y and np.int64(times[x + step]) < value:
        step *= 2
    lo, hi = x + step // 2 + 1, min(x + step, y)
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.int64(times[mid]) < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def latest_before(times, base, a, b, rows, bounds, edges, span, low, out, done):
    """out[e] = max(out[e], the latest time in [floor, bounds[e]) among row rows[e]'s events
    times[a[r]:b[r]] (uint32 from ``base``)), floor being ``low`` and, with ``span`` >= 0, at least
    edges[e] - span; out keeps NONE where neither has one. Consecutive entries of a row with
    nondecreasing bounds continue the search where the previous one stopped. With a non-empty
    ``done`` (per row, the last step: whether a chain of it is complete), a row's entries after its
    first found one are skipped, and done marks it."""
    last_row, last_bound, p = -1, NONE, 0
    final = len(done) > 0
    for e in range(len(rows)):
        r = rows[e]
        x, y = a[r], b[r]
        if x == y or (final and done[r]):
            continue
        start = p if r == last_row and bounds[e] >= last_bound else x
        p = _first_at_least(times, start, y, bounds[e] - base)  # times before p are < bounds[e]
        last_row, last_bound = r, bounds[e]
        if p > x:
            t = base + np.int64(times[p - 1])
            if t > out[e] and t >= low and (span < 0 or t >= edges[e] - span):
                out[e] = t
                if final:
                    done[r] = True


@numba.njit(cache=True, nogil=True)
def earliest_after(times, base, a, b, rows, bounds, edges, span, low, high, out, done):
    """out[e] = min(out[e], the earliest time in (bounds[e], ceiling] at or after ``low`` among row
    rows[e]'s events, ceiling being ``high`` and, with ``span`` >= 0, at most edges[e] + span; NONE
    standing for none (see ``latest_before``, also for ``done``)."""
    last_row, last_bound, p = -1, NONE, 0
    final = len(done) > 0
    for e in range(len(rows)):
        r = rows[e]
        x, y = a[r], b[r]
        if x == y or (final and done[r]):
            continue
        start = p if r == last_row and bounds[e] >= last_bound else x
        p = _first_at_least(times, start, y, max(bounds[e] + 1, low) - base)
        last_row, last_bound = r, bounds[e]
        if p < y:
            t = base + np.int64(times[p])
            if t <= high and (span < 0 or t <= edges[e] + span) and (out[e] == NONE or t < out[e]):
                out[e] = t
                if final:
                    done[r] = True


@numba.njit(cache=True, nogil=True)
def last_two_steps(first, second, rows, bounds, edges, span, high, backward, done):
    """The walk's last two steps at once, each reading one run (``first``, ``second``: (times, base, a,
    b, low) of the run, see ``latest_before``): per entry, the event of the step before the last, then
    at once the last one's, so a row's first complete chain marks it ``done`` and its later entries
    are skipped at both steps. Entries of a row with nondecreasing bounds continue where it left off."""
    times1, base1, a1, b1, low1 = first
    times2, base2, a2, b2, low2 = second
    row1, bound1, p1 = -1, NONE, 0
    row2, bound2, p2 = -1, NONE, 0
    for e in range(len(rows)):
        r = rows[e]
        x1, y1 = a1[r], b1[r]
        if done[r] or x1 == y1:
            continue
        floor, ceiling = NONE, high
        if span >= 0:
            floor, ceiling = edges[e] - span, min(high, edges[e] + span)
        # the step before the last
        target = bounds[e] if backward else max(bounds[e] + 1, low1)
        p1 = _first_at_least(times1, p1 if r == row1 and target >= bound1 else x1, y1, target - base1)
        row1, bound1 = r, target
        if backward:
            if p1 == x1:
                continue
            t = base1 + np.int64(times1[p1 - 1])
            if t < low1 or t < floor:
                continue
        else:
            if p1 == y1:
                continue
            t = base1 + np.int64(times1[p1])
            if t > ceiling:
                continue
        # the last step
        target = t if backward else max(t + 1, low2)
        x2, y2 = a2[r], b2[r]
        if x2 == y2:
            continue
        p2 = _first_at_least(times2, p2 if r == row2 and target >= bound2 else x2, y2, target - base2)
        row2, bound2 = r, target
        if backward:
            if p2 > x2:
                t = base2 + np.int64(times2[p2 - 1])
                done[r] = t >= low2 and t >= floor
        elif p2 < y2:
            done[r] = base2 + np.int64(times2[p2]) <= ceiling


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


@numba.njit(cache=True, nogil=True)
def compacted(owners, edges, found):
    """The entries whose ``found`` is not NONE, moved to the front of the three arrays: how many."""
    n = 0
    for e in range(len(owners)):
        if found[e] != NONE:
            owners[n], edges[n], found[n] = owners[e], edges[e], found[e]
            n += 1
    return n


def _runs(events: EventStore, event: str, low: int, hi: int) -> list[tuple[int, Run]]:
    """(base, run) of each run of ``event`` whose epoch [low, hi] reaches."""
    store = events.types[event]
    return [(epoch << EPOCH_BITS, run) for epoch in sorted(store.epochs)
            if epoch << EPOCH_BITS <= hi and (epoch << EPOCH_BITS) + EPOCH_SPAN - 1 >= low
            for run in store.epochs[epoch]]


def _sources(events: EventStore, event: str, low: int, hi: int, rows: np.ndarray, clip: bool) -> list[tuple]:
    """Per run of ``event`` that [low, hi] reaches: (its row-grouped times, base, and per row of ``rows``
    (ascending) the slice [a, b) of its window events; without ``clip``, of all its events there)."""
    store = events.types[event]
    out = []
    for base, run in _runs(events, event, low, hi):
        index = store.row_index(run)
        a, b = row_slices(*index.lookup, base, rows, low, hi, clip)
        out.append((index.times, base, a, b))
    return out


def indexed_sequence_rows(events: EventStore, node: ast.Sequence, lows: dict[str, int], hi: int,
                          candidates: BitMap) -> BitMap:
    """The rows of ``candidates`` that hold ``node`` (no step has a WHERE); each step's events lie in
    [lows[its type], hi]."""
    rows = rows_of(candidates).astype(np.int64)
    steps = list(node.steps)

    def window_events(event: str) -> int:
        return sum(stop - start for _, run in _runs(events, event, lows[event], hi)
                   for start, stop in (run.window_bounds(lows[event], hi),))

    backward = window_events(steps[-1].event) <= window_events(steps[0].event)
    if backward:
        steps.reverse()  # walk from the last step to the first
    every = node.span_ms is not None
    # with SPAN a row has many ends: the last two steps in one pass skip those of rows already holding
    fused = every and len(steps) >= 3 and len(_runs(events, steps[-2].event, lows[steps[-2].event], hi)) == 1 \
        and len(_runs(events, steps[-1].event, lows[steps[-1].event], hi)) == 1
    # the starting step's events are the window's; later steps search a row's events and check the window
    sources = {event: _sources(events, event, lows[event], hi, rows, event == steps[0].event)
               for event in dict.fromkeys(step.event for step in steps)}
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
    span = node.span_ms if every else -1  # every event of a chain lies within SPAN of its end (start)
    done = np.zeros(len(rows), dtype=np.bool_)  # the rows with a complete chain
    not_final = np.zeros(0, dtype=np.bool_)
    for j, step in enumerate(steps[1:], start=2):
        if fused and j == len(steps) - 1:  # one run each: the last two steps in one pass
            (times1, base1, a1, b1), = sources[step.event]
            (times2, base2, a2, b2), = sources[steps[-1].event]
            last_two_steps((times1, base1, a1, b1, lows[step.event]),
                           (times2, base2, a2, b2, lows[steps[-1].event]), owners, bounds, edges, span, hi, backward,
                           done)
            break
        found = np.full(len(owners), NONE, dtype=np.int64)
        final = done if j == len(steps) else not_final  # the last step: a row's first complete chain decides
        for times, base, a, b in sources[step.event]:
            if backward:
                latest_before(times, base, a, b, owners, bounds, edges, span, lows[step.event], found, final)
            else:
                earliest_after(times, base, a, b, owners, bounds, edges, span, lows[step.event], hi, found, final)
        n = compacted(owners, edges, found)
        owners, edges, bounds = owners[:n], edges[:n], found[:n]
    return to_bitmap(rows[done], assume_sorted=True)
