"""SEQUENCE(step THEN step ..., options) over one shard's events.

Only rows with an event of every step's type in the window can hold (an intersection of presence
bitmaps, within the found set). Without a WHERE on any step, those rows are decided from their
own events through the runs' row indexes (:mod:`engine.exec.sequence_index`). Else one step whose
type no other step uses, the one with the most window events (the "scanned step"), is never
gathered: the events of the other steps' types of
the candidate rows are gathered (a bitset test per window event), each with a bit per step it
satisfies (its type and that step's WHERE), merged by time and grouped by row with a counting
sort. Per row, a linear pass turns them into the intervals of times at which an event of the
scanned step would complete a chain (``scan_intervals``); one sweep in time order over the scanned
step's events inside the intervals' span decides the rest with one bit test per event
(``interval_hits``: a row's bit is set while one of its intervals covers the current time; a
WHERE on the scanned step is tested on the events inside intervals only). When every type serves
several steps, the per-row greedy ``holding_rows`` decides from all the gathered events.

>>> rows = np.array([0, 0, 0, 1, 1], dtype=np.int64)
>>> ts = np.array([5, 5, 9, 1, 2], dtype=np.int64)
>>> flags = np.array([1, 2, 2, 2, 1], dtype=np.uint64)
>>> holding_rows(rows, ts, flags, 2, 0, False).tolist()
[0]
>>> # steps 0 and 2 gathered, step 1 scanned: times strictly between 10 and 20, within SPAN 15 of 10
>>> ia, ib, offsets = scan_intervals(np.array([10, 20], np.int64), np.array([1, 4], np.uint64),
...                                  np.array([0, 2], np.int64), 3, 1, 15, True, 0, 100)
>>> list(zip(ia.tolist(), ib.tolist())), offsets.tolist()
([(11, 19)], [0, 1])
"""
from __future__ import annotations

from typing import Callable

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..retention import floor as retention_floor
from ..store.bitmaps import rows_of, to_bitmap
from ..store.events import EventStore, EventTypeStore
from ..store.runs import time_order
from .grouping import bit_ranks, bitset_of, gather_ranked, group_by_rank, rank_bases, rows_in
from .sequence_index import indexed_sequence_rows
from .sequence_keys import gather_keys, group_keys, key_layout, merged_keys, packed_keys, unpacked


@numba.njit(cache=True, nogil=True)
def _row_holds(ts, flags, a, b, k, span, use_span, cursors):
    """Whether events a..b-1 (one row, sorted by time) hold a chain of the k steps."""
    for step in range(k):
        cursors[step] = a
    for s in range(a, b):
        if not flags[s] & np.uint64(1):
            continue
        if s > a and cursors[0] > s:  # an earlier start with the same time was already tried
            continue
        cursors[0] = s
        t_prev = ts[s]
        for step in range(1, k):
            bit = np.uint64(1) << np.uint64(step)
            p = cursors[step]
            while p < b and not ((flags[p] & bit) and ts[p] > t_prev):
                p += 1
            cursors[step] = p
            if p == b:
                return False  # later starts complete no earlier
            t_prev = ts[p]
        if not use_span or t_prev - ts[s] <= span:
            return True
        # the next start with the same time completes at the same time: skip them
        q = s + 1
        while q < b and ts[q] == ts[s]:
            q += 1
        cursors[0] = q
    return False


@numba.njit(cache=True, nogil=True)
def holding_rows(rows, ts, flags, k, span, use_span):
    """The distinct rows (events sorted by row, then time) that hold the sequence."""
    out = np.empty(len(rows), dtype=np.int64)
    cursors = np.empty(k, dtype=np.int64)
    n = 0
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j] == rows[i]:
            j += 1
        if _row_holds(ts, flags, i, j, k, span, use_span, cursors):
            out[n] = rows[i]
            n += 1
        i = j
    return out[:n]


@numba.njit(cache=True, nogil=True)
def _earliest_completions(ts, flags, a, b, h, cursors, out_start, out_done):
    """Per start (an event with bit 0 of events a..b-1, sorted by time; equal start times once), in time
    order: its time and the earliest time at which steps 0..h-1 complete from it. Returns how many.

    Step i's event is the first after step i - 1's with bit i and a strictly later time; that
    completion never moves back as the start moves forward, so each step keeps a forward cursor.
    """
    for step in range(1, h):
        cursors[step] = a
    n = 0
    for s in range(a, b):
        if not flags[s] & np.uint64(1) or (n > 0 and ts[s] == out_start[n - 1]):
            continue
        t_prev = ts[s]
        for step in range(1, h):
            bit = np.uint64(1) << np.uint64(step)
            p = cursors[step]
            while p < b and not ((flags[p] & bit) and ts[p] > t_prev):
                p += 1
            cursors[step] = p
            if p == b:
                return n  # later starts complete no earlier
            t_prev = ts[p]
        out_start[n] = ts[s]
        out_done[n] = t_prev
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _latest_starts(ts, flags, a, b, k, h, cursors, last, out_end, out_begin):
    """Per end (an event with bit k - 1 of events a..b-1, sorted by time), in time order: its time and
    the latest time of step h + 1's event in a chain of steps h+1..k-1 ending at it. Returns how many.

    Step j's event is the last before step j + 1's with bit j and a strictly earlier time; that
    never moves back as the end moves forward, so each step keeps a forward cursor.
    """
    for step in range(h + 1, k - 1):
        cursors[step] = a
        last[step] = -1
    end_bit = np.uint64(1) << np.uint64(k - 1)
    n = 0
    for e in range(a, b):
        if not flags[e] & end_bit:
            continue
        bound = ts[e]
        chained = True
        for step in range(k - 2, h, -1):
            bit = np.uint64(1) << np.uint64(step)
            p = cursors[step]
            while p < b and ts[p] < bound:
                if flags[p] & bit:
                    last[step] = p
                p += 1
            cursors[step] = p
            if last[step] < 0:
                chained = False
                break
            bound = ts[last[step]]
        if chained:
            out_end[n] = ts[e]
            out_begin[n] = bound
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def scan_intervals(ts, flags, offsets, k, h, span, use_span, lo, hi):
    """Per row (its gathered events offsets[r]:offsets[r + 1], sorted by time; bit i: the event may
    serve step i != h), the inclusive time intervals [a, b] within [lo, hi] at which an event of step
    ``h`` completes a chain of the k steps: (a, b, offsets per row). A row's intervals are disjoint
    and in time order (the candidates come with nondecreasing a and b, so overlaps are merged).

    With steps before h, each start contributes (its earliest completion, ...]; with steps after,
    each end [..., the latest start of its chain); with ``use_span`` the first and last times are at
    most ``span`` apart (a start pairs with the latest end within the span).
    """
    n_rows = len(offsets) - 1
    size = len(ts)
    ia = np.empty(size, dtype=np.int64)
    ib = np.empty(size, dtype=np.int64)
    out_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    start_t = np.empty(size, dtype=np.int64)
    done_t = np.empty(size, dtype=np.int64)
    end_t = np.empty(size, dtype=np.int64)
    begin_t = np.empty(size, dtype=np.int64)
    cursors = np.empty(k, dtype=np.int64)
    last = np.empty(k, dtype=np.int64)
    n = 0
    for r in range(n_rows):
        a, b = offsets[r], offsets[r + 1]
        ns = _earliest_completions(ts, flags, a, b, h, cursors, start_t, done_t) if h > 0 else 0
        ne = _latest_starts(ts, flags, a, b, k, h, cursors, last, end_t, begin_t) if h < k - 1 else 0
        m = 0  # intervals of this row, before clipping to [lo, hi]
        if h == 0:
            m = ne if use_span else min(ne, 1)
        elif h == k - 1:
            m = ns if use_span else min(ns, 1)
        elif ne > 0:
            m = ns if use_span else min(ns, 1)
        j = -1
        for i in range(m):
            if h == 0:
                x = ne - 1 if not use_span else i
                first = end_t[x] - span if use_span else lo
                final = begin_t[x] - 1
            elif h == k - 1:
                first = done_t[i] + 1
                final = start_t[i] + span if use_span else hi
            else:
                if use_span:
                    while j + 1 < ne and end_t[j + 1] <= start_t[i] + span:
                        j += 1
                else:
                    j = ne - 1
                if j < 0:
                    continue
                first = done_t[i] + 1
                final = begin_t[j] - 1
            first = max(first, lo)
            final = min(final, hi)
            if first > final:
                continue
            if n > out_offsets[r] and first <= ib[n - 1] + 1:  # overlaps or touches the previous one
                ib[n - 1] = max(ib[n - 1], final)
            else:
                ia[n] = first
                ib[n] = final
                n += 1
        out_offsets[r + 1] = n
    return ia[:n], ib[:n], out_offsets


@numba.njit(cache=True, nogil=True)
def interval_hits(rows, ts, base, starts, start_ends, start_rows, ends, end_rows, active, done, first_only, out, n):
    """A sweep in time order over events (rows, uint32 times from ``base``, sorted by time) against
    inclusive time intervals, disjoint per row, given sorted by start (``starts``, their ends and
    rows) and by end (``ends``, their rows): a row's bit in the bitset ``active`` is set while one
    of its intervals covers the current time, so each event costs one bit test. With
    ``first_only``, a hit writes its row to ``out`` and sets it in the bitset ``done`` (a done row is
    never activated again); else each hit writes its position. Returns the new length of ``out``
    (from ``n``); ``active`` is left clear."""
    count, size = len(starts), len(rows)
    pa = pb = i = live = 0
    while i < size:
        t = base + np.int64(ts[i])
        while pb < count and ends[pb] < t:  # intervals that ended: their rows go inactive
            row = end_rows[pb]
            bit = np.uint64(1) << np.uint64(row & 63)
            if active[row >> 6] & bit:
                active[row >> 6] &= ~bit
                live -= 1
            pb += 1
        while pa < count and starts[pa] <= t:  # intervals that started and have not ended
            row = start_rows[pa]
            bit = np.uint64(1) << np.uint64(row & 63)
            if start_ends[pa] >= t and not (done[row >> 6] | active[row >> 6]) & bit:
                active[row >> 6] |= bit
                live += 1
            pa += 1
        # until the next start or end, the active rows stay the same
        change = np.int64(1) << np.int64(62)
        if pa < count:
            change = starts[pa]
        if pb < count:
            change = min(change, ends[pb] + 1)
        if live == 0:  # nothing to test before the next change: skip to it
            if pa == count:
                break
            step = 1  # galloping: the next change is usually near
            while i + step < size and base + np.int64(ts[i + step]) < change:
                step *= 2
            x, y = i + step // 2, min(i + step, size)
            while x < y:
                mid = (x + y) // 2
                if base + np.int64(ts[mid]) < change:
                    x = mid + 1
                else:
                    y = mid
            i = x  # > i: the change is later than the current event
            continue
        while i < size and base + np.int64(ts[i]) < change:
            row = np.int64(rows[i])
            w = row >> 6
            if w < len(active) and active[w] >> np.uint64(row & 63) & np.uint64(1):
                if first_only:
                    out[n] = row
                    bit = np.uint64(1) << np.uint64(row & 63)
                    done[w] |= bit
                    active[w] &= ~bit
                    live -= 1
                else:
                    out[n] = i
                n += 1
            i += 1
    for j in range(count):
        row = start_rows[j]
        active[row >> 6] &= ~(np.uint64(1) << np.uint64(row & 63))
    return n


def _step_flags(node: ast.Sequence, event: str, part, store: EventTypeStore, now: int) -> np.ndarray:
    """Per event of ``part`` (of type ``event``), one bit per step it satisfies (type and WHERE)."""
    from .did import where_mask  # did.py imports this module

    flags = np.zeros(len(part), dtype=np.uint64)
    for i, step in enumerate(node.steps):
        if step.event == event:
            bit = np.uint64(1) << np.uint64(i)
            if step.where is None:
                flags |= bit
            else:
                flags[where_mask(step.where, part, store, now)] |= bit
    return flags


@numba.njit(cache=True, nogil=True)
def merged_by_time(ts_a, ranks_a, flags_a, ts_b, ranks_b, flags_b):
    """Two time-ordered event lists (time, row rank, step bits) merged into one (``a`` first on ties)."""
    na, nb = len(ts_a), len(ts_b)
    ts = np.empty(na + nb, dtype=np.int64)
    ranks = np.empty(na + nb, dtype=np.int64)
    flags = np.empty(na + nb, dtype=np.uint64)
    i = j = 0
    for k in range(na + nb):
        if j == nb or (i < na and ts_a[i] <= ts_b[j]):
            ts[k], ranks[k], flags[k] = ts_a[i], ranks_a[i], flags_a[i]
            i += 1
        else:
            ts[k], ranks[k], flags[k] = ts_b[j], ranks_b[j], flags_b[j]
            j += 1
    return ts, ranks, flags


def _where_events(node: ast.Sequence, event: str, part, store: EventTypeStore, member: np.ndarray,
                  now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The events of ``part`` (of type ``event``) of the rows in the bitset ``member`` that serve some
    step (its type and WHERE): (int64 times, row ranks, step bits)."""
    part = part.take(np.flatnonzero(rows_in(part.rows, member)))
    flags = _step_flags(node, event, part, store, now)
    keep = flags != 0
    return part.ts[keep].astype(np.int64) + part.base, bit_ranks(part.rows[keep], member), flags[keep]


def _gathered(events: EventStore, node: ast.Sequence, types: list[str], lows: dict[str, int], hi: int,
              member: np.ndarray, n_rows: int, now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window events of ``types`` of the rows in the bitset ``member`` (that serve some step), grouped
    by the rows' ranks and sorted by time within a row: (times, step bits, offsets per rank). The events
    travel as packed int64 keys (:mod:`engine.exec.sequence_keys`) when their times fit."""
    parts = [(event, part) for event in types for part in events.types[event].window(lows[event], hi)]
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.uint64), np.zeros(n_rows + 1, np.int64)
    t0 = min(part.base + int(part.ts[0]) for _, part in parts)
    t1 = max(part.base + int(part.ts[-1]) for _, part in parts)
    layout = key_layout(t0, t1, n_rows, len(node.steps))
    if layout is None:
        return _gathered_columns(events, node, parts, member, n_rows, now)
    before = rank_bases(member)
    runs = []  # each run's window as time-ordered keys
    for event, part in parts:
        store = events.types[event]
        if any(step.where is not None for step in node.steps if step.event == event):
            runs.append(packed_keys(*_where_events(node, event, part, store, member, now), layout))
        else:
            bits = sum(1 << i for i, step in enumerate(node.steps) if step.event == event)
            out = np.empty(len(part), np.int64)
            n = gather_keys(part.rows, part.ts, part.base, member, before, bits, t0, layout.time_shift,
                            layout.steps, out, 0)
            runs.append(out[:n])
    while len(runs) > 1:  # pairwise merges of the time-ordered runs, smallest first
        runs.sort(key=len)
        runs = [merged_keys(runs[0], runs[1]), *runs[2:]]
    keys, offsets = group_keys(runs[0], layout.steps, (1 << layout.rank_bits) - 1, n_rows)
    return (*unpacked(keys, layout), offsets)


def _gathered_columns(events: EventStore, node: ast.Sequence, parts: list, member: np.ndarray, n_rows: int,
                      now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_gathered`` with times, ranks and step bits as three arrays, for windows too long to pack."""
    before = rank_bases(member)
    runs = []  # (times, ranks, step bits) of each run's window, in time order
    for event, part in parts:
        store = events.types[event]
        if any(step.where is not None for step in node.steps if step.event == event):
            runs.append(_where_events(node, event, part, store, member, now))
        else:
            bits = np.uint64(sum(1 << i for i, step in enumerate(node.steps) if step.event == event))
            size = len(part)
            out = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.uint64)
            n = gather_ranked(part.rows, part.ts, part.base, member, before, bits, *out, 0)
            runs.append(tuple(column[:n] for column in out))
    while len(runs) > 1:
        runs.sort(key=lambda run: len(run[0]))
        runs = [merged_by_time(*runs[0], *runs[1]), *runs[2:]]
    ts, ranks, flags = runs[0]
    return group_by_rank(ts, ranks, flags, n_rows)  # the counting sort keeps the time order within a row


def _scanned_step(node: ast.Sequence, sizes: dict[str, int]) -> int | None:
    """The step to scan rather than gather: of the steps whose type no other step uses, the one with
    the most window events (``sizes`` per type; None if every type serves several steps)."""
    uses: dict[str, int] = {}
    for step in node.steps:
        uses[step.event] = uses.get(step.event, 0) + 1
    single = [i for i, step in enumerate(node.steps) if uses[step.event] == 1]
    return max(single, key=lambda i: sizes[node.steps[i].event]) if single else None


def sequence_rows(events: EventStore, node: ast.Sequence, now: int, window: tuple[int, int], found: BitMap | None,
                  base: BitMap, present: Callable[[EventTypeStore, int, int, BitMap], BitMap]) -> BitMap:
    """The rows of ``base`` that hold ``node`` at clock ``now`` (exact within ``found``).

    ``window``: the inclusive [lo, hi] of event times that bounds every step's event;
    ``present(store, lo, hi, found)``: the rows with an event of the store's type in [lo, hi]
    (exact within ``found``).
    """
    lo, hi = window
    # each step's events start at the window's start or its type's retention floor, the later
    lows = {step.event: max(lo, retention_floor(events.types[step.event].definition, now)) for step in node.steps}
    if max(lows.values()) > hi:
        return BitMap()
    # only rows with an event of every step's type in the window can hold: their events alone are read
    indexed = all(step.where is None for step in node.steps)
    types = sorted(lows, key=lambda e: len(events.types[e].ever))
    if indexed and len(types) > 1:  # the walk checks every step: the commonest type's presence rarely pays
        types.pop()
    candidates = found if found is not None else base
    for event in types:
        candidates = candidates & present(events.types[event], lows[event], hi, candidates)
        if not candidates:
            return BitMap()
    if indexed:
        return base & indexed_sequence_rows(events, node, lows, hi, candidates)
    member = bitset_of(candidates)
    k = len(node.steps)
    span = node.span_ms if node.span_ms is not None else 0
    use_span = node.span_ms is not None
    sizes = {event: sum(len(part) for part in events.types[event].window(low, hi)) for event, low in lows.items()}
    h = _scanned_step(node, sizes)
    types = list(dict.fromkeys(step.event for i, step in enumerate(node.steps) if i != h))
    ts, flags, offsets = _gathered(events, node, types, lows, hi, member, len(candidates), now)
    if h is None:
        ranks = np.repeat(np.arange(len(candidates), dtype=np.int64), np.diff(offsets))
        hits = holding_rows(ranks, ts, flags, k, span, use_span)
        return base & to_bitmap(rows_of(candidates)[hits], assume_sorted=True)
    ia, ib, per_row = scan_intervals(ts, flags, offsets, k, h, span, use_span, lows[node.steps[h].event], hi)
    return base & _scanned_hits(events, node.steps[h], now, candidates, member, ia, ib, per_row)


def _scanned_hits(events: EventStore, scanned: ast.SeqStep, now: int, candidates: BitMap, member: np.ndarray,
                  ia: np.ndarray, ib: np.ndarray, per_row: np.ndarray) -> BitMap:
    """The candidate rows with an event of the ``scanned`` step inside one of their intervals (inclusive
    [ia, ib], ``per_row`` offsets by rank in ``candidates``; ``member``: their bitset)."""
    from .did import where_mask  # did.py imports this module

    if not len(ia):
        return BitMap()
    store = events.types[scanned.event]
    rows = np.repeat(rows_of(candidates).astype(np.int64), np.diff(per_row))
    by_start, by_end = time_order(ia), time_order(ib)
    sweep = ia[by_start], ib[by_start], rows[by_start], ib[by_end], rows[by_end]
    active = np.zeros(len(member), dtype=np.uint64)
    done = np.zeros(len(member), dtype=np.uint64)
    hits = []
    for part in store.window(int(ia.min()), int(ib.max())):
        if scanned.where is None:
            out = np.empty(len(candidates), dtype=np.int64)
            n = interval_hits(part.rows, part.ts, part.base, *sweep, active, done, True, out, 0)
            hits.append(out[:n])
        else:  # the events inside intervals, then the WHERE on those only
            out = np.empty(len(part), dtype=np.int64)
            n = interval_hits(part.rows, part.ts, part.base, *sweep, active, done, False, out, 0)
            inside = part.take(out[:n])
            hits.append(inside.rows[where_mask(scanned.where, inside, store, now)])
    return to_bitmap(np.concatenate(hits)) if hits else BitMap()
