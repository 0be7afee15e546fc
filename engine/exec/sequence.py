"""SEQUENCE(step THEN step ..., options) over one shard's events.

Only rows with an event of every step's type in the window can hold (an intersection of
presence bitmaps, within the found set); their window events of the steps' types are gathered
once (an earlier step's event only if an event of the last step's type follows it within the
span), each with a bit per step it satisfies (its type and that step's WHERE), and sorted by
(row, time). Per row, a greedy scan
finds, for each candidate first event in time order, the earliest completion: step i's event is
the first event after step i - 1's with step i's bit and a strictly later time. The earliest
completion never moves back as the start moves forward, so every step keeps one forward-only
cursor and a row costs O(k * its events). Without SPAN the first start decides; with SPAN the
row holds as soon as one start completes within the span.

>>> rows = np.array([0, 0, 0, 1, 1], dtype=np.int64)
>>> ts = np.array([5, 5, 9, 1, 2], dtype=np.int64)
>>> flags = np.array([1, 2, 2, 2, 1], dtype=np.uint64)
>>> holding_rows(rows, ts, flags, 2, 0, False).tolist()
[0]
"""
from __future__ import annotations

from typing import Callable

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import to_bitmap
from ..store.events import EventStore, EventTypeStore
from .grouping import bit_ranks, bitset_of, rows_in, stable_group_order


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


def _end_times(store: EventTypeStore, lo: int, hi: int, member: np.ndarray,
               n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The window's times of the last step's type for the member rows, ordered by (row rank, time):
    (times, offsets per row rank)."""
    rows_l, ts_l = [], []
    for part in store.window(lo, hi):
        inside = rows_in(part.rows, member)
        rows_l.append(part.rows[inside])
        ts_l.append(part.absolute_ts()[inside])
    rows = np.concatenate(rows_l) if rows_l else np.empty(0, np.int32)
    ts = np.concatenate(ts_l) if ts_l else np.empty(0, np.int64)
    by_time = np.argsort(ts, kind="stable")
    ranks = bit_ranks(rows[by_time], member)
    order = stable_group_order(ranks, n_rows)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(offsets, ranks + 1, 1)
    return ts[by_time][order], np.cumsum(offsets)


@numba.njit(cache=True, nogil=True)
def before_an_end(rows, ts, base, member, end_ts, offsets, span, use_span):
    """Per event of a member row, whether an end event of its row follows strictly after it (within
    ``span`` when ``use_span``): only such events can start or continue a chain."""
    out = np.zeros(len(rows), dtype=np.bool_)
    rank_of = bit_ranks(rows, member)
    for i in range(len(rows)):
        t = base + np.int64(ts[i])
        a, b = offsets[rank_of[i]], offsets[rank_of[i] + 1]
        while a < b:  # the first end time > t
            mid = (a + b) // 2
            if end_ts[mid] > t:
                b = mid
            else:
                a = mid + 1
        end = offsets[rank_of[i] + 1]
        out[i] = a < end and (not use_span or end_ts[a] - t <= span)
    return out


def sequence_rows(events: EventStore, node: ast.Sequence, now: int, window: tuple[int, int], found: BitMap | None,
                  base: BitMap, present: Callable[[EventTypeStore, int, int, BitMap], BitMap]) -> BitMap:
    """The rows of ``base`` that hold ``node`` at clock ``now`` (exact within ``found``).

    ``window``: the inclusive [lo, hi] of event times that bounds every step's event;
    ``present(store, lo, hi, found)``: the rows with an event of the store's type in [lo, hi]
    (exact within ``found``).
    """
    from .did import where_mask as mask_of  # did.py imports this module

    lo, hi = window
    if lo > hi:
        return BitMap()
    # only rows with an event of every step's type in the window can hold: their events alone are read
    candidates = found if found is not None else base
    for event in sorted(set(step.event for step in node.steps), key=lambda e: len(events.types[e].ever)):
        candidates = candidates & present(events.types[event], lo, hi, candidates)
        if not candidates:
            return BitMap()
    member = bitset_of(candidates)
    last = node.steps[-1].event
    ends = _end_times(events.types[last], lo, hi, member, len(candidates))
    span = node.span_ms if node.span_ms is not None else 0
    rows_l, ts_l, flags_l = [], [], []
    for event in dict.fromkeys(step.event for step in node.steps):
        store = events.types[event]
        for part in store.window(lo, hi):
            if event == last:
                picks = np.flatnonzero(rows_in(part.rows, member))
            else:  # an earlier step's event serves only if a last-type event follows within the span
                picks = np.flatnonzero(rows_in(part.rows, member))
                picks = picks[before_an_end(part.rows[picks], part.ts[picks], part.base, member, *ends, span,
                                            node.span_ms is not None)]
            part = part.take(picks)
            flags = np.zeros(len(part), dtype=np.uint64)
            for i, step in enumerate(node.steps):
                if step.event != event:
                    continue
                bit = np.uint64(1) << np.uint64(i)
                if step.where is None:
                    flags |= bit
                else:
                    flags[mask_of(step.where, part, store, now)] |= bit
            keep = flags != 0
            rows_l.append(part.rows[keep].astype(np.int64))
            ts_l.append(part.absolute_ts()[keep])
            flags_l.append(flags[keep])
    if not rows_l:
        return BitMap()
    rows, ts, flags = np.concatenate(rows_l), np.concatenate(ts_l), np.concatenate(flags_l)
    by_time = np.argsort(ts, kind="stable")  # a merge of the parts' time-ordered runs
    groups = bit_ranks(rows[by_time], member)
    order = by_time[stable_group_order(groups, len(candidates))]
    hits = holding_rows(rows[order], ts[order], flags[order], len(node.steps), span, node.span_ms is not None)
    return base & to_bitmap(hits.astype(np.uint32), assume_sorted=True)
