"""COUNT conditions of a DID from kept count levels (``engine.store.count_levels``).

A row's count over a window, capped at k, is the number of level bitmaps (levels 1..k of each whole
UTC day inside the window, or of all time, for each passing value bin of the WHERE) that hold it,
plus its events in the window's two partial days. The whole-day part is counted once per store
generation (saturating uint8 counters fed with the members of each level bitmap, not with the
events) and kept as levels W1..Wk; a query then only counts the edge events of its window, and
only for the rows they touch: level j of the window = Wj plus the edge rows whose whole-day count
(membership in W1..Wk-1) and edge count reach j. A count class c < k is ``L[c] - L[c + 1]`` and
``L[k]`` holds every count >= k, so any ``COUNT cmp n`` with n <= CAP is a union of classes.

>>> from pyroaring import BitMap
>>> levels = {1: BitMap([1, 2, 3]), 2: BitMap([2, 3]), 3: BitMap([3])}   # counts 1, 2 and 3+
>>> sorted(rows_passing(levels, [True, False, True, False], BitMap(range(5))))  # COUNT = 0 or 2
[0, 2, 4]
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap, union_all
from ..store.count_levels import CAP, WHOLE_TYPE, Levels
from ..store.events import DAY_MS, NO_TIME, EventTypeStore
from .query_cache import held_bytes
from .where_bins import whole_days, bin_verdicts, group_by_property

if TYPE_CHECKING:
    from .did import DidEvaluator

#: A found set this many times smaller than the rows that ever had such an event filters the edge
#: events. A count up to 2 within any found set stays on the event counter (``count_upto2``: one
#: pass over the window's events, measured cheaper than the levels when the DID is not alone).
NARROW = 4
#: Up to this many rows a count up to 2 stays on the event counter even next to other predicates:
#: its two bits per row (8 MiB here) stay in cache; past it every counted event misses the cache and
#: the kept levels, which count only the window's partial days event by event, answer faster.
PAIR_COUNTER_ROWS = 1 << 25


class WholeLevels:
    """The levels 1..top of the counts over whole days (or all time), and their lower levels as
    bitsets (``bits[j - 1]``: level j, one bit per row) for looking up the rows an edge touches."""

    def __init__(self, levels: Levels, rows: int):
        self.levels = levels
        self.rows = rows
        self.bits: np.ndarray | None = None
        self._levels_bytes: int | None = None

    def bitsets(self, upto: int) -> np.ndarray:
        """The levels 1..upto as bitsets (a 2-d uint64 array; built once, then kept)."""
        bits = self.bits
        if bits is None or len(bits) < upto:
            bits = np.zeros((upto, (self.rows + 63) // 64), dtype=np.uint64)
            for j in range(min(upto, len(self.levels))):
                fill_bits(bits[j], rows_of(self.levels[j]))
            self.bits = bits
        return bits

    @property
    def nbytes(self) -> int:
        """Bytes of the level bitmaps' containers and of the bitsets."""
        if self._levels_bytes is None:
            self._levels_bytes = held_bytes(self.levels)
        return self._levels_bytes + (0 if self.bits is None else self.bits.nbytes)


def needed_levels(wanted: list[bool]) -> list[int]:
    """The levels j (1..k) that ``rows_passing`` reads for ``wanted`` (k = len(wanted) - 1)."""
    top = len(wanted) - 1
    needed: set[int] = set()
    for c in range(1, top + 1):
        if wanted[c] != wanted[0]:
            needed.add(c)
            if c < top:
                needed.add(c + 1)
    return sorted(needed)


def rows_passing(levels: dict[int, BitMap], wanted: list[bool], base: BitMap) -> BitMap:
    """The rows of ``base`` whose count class c (0..k, k = len(wanted) - 1 standing for >= k) has
    wanted[c], from the levels ``needed_levels(wanted)`` of their counts."""
    top = len(wanted) - 1
    picked = [c for c in range(1, top + 1) if wanted[c] != wanted[0]]
    parts = [levels[c] - levels[c + 1] if c < top else levels[c] for c in picked]
    chosen = union_all(parts) if len(parts) != 1 else parts[0]
    return base - chosen if wanted[0] else chosen


@numba.njit(cache=True, nogil=True)
def add_members(rows, counts, top):
    """Add one to the saturating uint8 counter (at ``top``) of each of ``rows``."""
    cap = np.uint8(top)
    for i in range(len(rows)):
        c = counts[rows[i]]
        counts[rows[i]] = c + np.uint8(c < cap)


@numba.njit(cache=True, nogil=True)
def fill_bits(words, rows):
    """Set the bits of ``rows`` in a bitset."""
    for i in range(len(rows)):
        words[rows[i] >> 6] |= np.uint64(1) << np.uint64(rows[i] & 63)


@numba.njit(cache=True, nogil=True)
def add_memberships(rows, bits, upto, total):
    """Add to total[i] the number of the bitsets bits[0..upto) that hold rows[i] (bitsets are nested)."""
    for i in range(len(rows)):
        row = np.int64(rows[i])
        word = row >> 6
        if word >= bits.shape[1]:
            continue
        bit = np.uint64(1) << np.uint64(row & 63)
        for j in range(upto):
            if bits[j, word] & bit == np.uint64(0):
                break
            total[i] += 1


@numba.njit(cache=True, nogil=True)
def tally(rows, counts, top):
    """(the distinct ``rows`` in first-seen order, their numbers of repeats capped at ``top``), from
    zeroed uint8 ``counts`` (one per row), which are left zeroed; no sort and no pass over every row."""
    cap = np.uint8(top)
    for i in range(len(rows)):
        c = counts[rows[i]]
        counts[rows[i]] = c + np.uint8(c < cap)
    out = np.empty(len(rows), dtype=np.int64)
    found = np.empty(len(rows), dtype=np.int64)
    n = 0
    for i in range(len(rows)):
        c = counts[rows[i]]
        if c != 0:
            out[n] = rows[i]
            found[n] = c
            n += 1
            counts[rows[i]] = 0
    return out[:n], found[:n]


@numba.njit(cache=True, nogil=True)
def emit_levels(counts):
    """(rows with a non-zero count, ascending; their counts); zeroes ``counts`` (a multiple of 8 long)."""
    rows = np.empty(len(counts), dtype=np.uint32)
    found = np.empty(len(counts), dtype=np.uint8)
    n = 0
    words = counts.view(np.uint64)
    for w in range(len(words)):
        if words[w] == np.uint64(0):
            continue
        for r in range(w * 8, w * 8 + 8):
            if counts[r] != 0:
                rows[n] = r
                found[n] = counts[r]
                n += 1
        words[w] = np.uint64(0)
    return rows[:n], found[:n]


def _sources(node: ast.Did, store: EventTypeStore) -> list[tuple[str | None, int]] | None:
    """The (property, bin key) whose events the DID counts (None, WHOLE_TYPE without WHERE); None if
    some bin has to be checked event by event or the WHERE does not split by property."""
    if node.where is None:
        return [(None, WHOLE_TYPE)]
    groups = group_by_property(node.where, store.definition.properties)
    if groups is None or len(groups) > 1:  # several properties: an event may pass through two of them
        return None
    sources: list[tuple[str | None, int]] = []
    for prop, where in groups.items():
        kept = store.property_bitmaps(prop)
        assert kept is not None
        keys = sorted(kept.ever)
        passes, edges = bin_verdicts(where, kept.kind, store.labels.get(prop), keys)
        if edges:
            return None
        sources.extend((prop, key) for key, ok in zip(keys, passes) if ok)
    return sources


def _whole_levels(evaluator: DidEvaluator, store: EventTypeStore, sources: list[tuple[str | None, int]],
                  first: int | None, last: int | None, all_time: bool, top: int) -> Levels:
    """The levels 1..top of the counts over all time or over the whole days first..last (None: open)."""
    size = int(store.ever.max()) + 1 if store.ever else 0
    with evaluator.buffers.take() as buffers:
        counts = buffers.row_counters(size)
        for prop, key in sources:
            levels = store.levels(prop)
            assert levels is not None  # window_levels checked
            if prop is None:
                firsts, ever = store.days, store.ever
            else:
                kept = store.property_bitmaps(prop)
                assert kept is not None
                firsts, ever = kept.days.get(key, {}), kept.ever.get(key, BitMap())
            if all_time:
                terms = [[ever, *levels.ever.get(key, [])]]
            else:
                upper = levels.days.get(key, {})
                terms = [[bitmap, *upper.get(day, [])] for day, bitmap in firsts.items()
                         if (first is None or day >= first) and day <= last]  # type: ignore[operator]
            for term in terms:
                for bitmap in term[:top]:
                    add_members(rows_of(bitmap), counts, top)
        rows, found = emit_levels(counts)
    out: Levels = []
    for j in range(1, top + 1):
        picked = rows if j == 1 else rows[found >= j]
        if len(picked) == 0:
            break
        out.append(to_bitmap(picked, assume_sorted=True))
    return out


def _edge_counts(evaluator: DidEvaluator, node: ast.Did, store: EventTypeStore, spans: list[tuple[int, int]],
                 now: int, within: BitMap | None, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, in no order; their numbers of events in ``spans`` that pass the WHERE, capped at ``top``),
    of the rows of ``within`` when given."""
    from .did import where_mask  # did.py imports this module
    from .where_bins import member_parts

    parts = [part for lo, hi in spans for part in store.window(lo, hi)]
    if not parts or (within is not None and not within):
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    found: list[np.ndarray] = []
    with evaluator.buffers.take() as buffers:
        if within is not None:
            parts = member_parts(buffers, parts, within)
        for part in parts:
            if len(part):
                rows = part.rows if node.where is None else part.rows[where_mask(node.where, part, store, now)]
                if len(rows):
                    found.append(rows)
        if not found:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        rows = np.concatenate(found) if len(found) > 1 else found[0]
        return tally(rows, buffers.row_counters(int(rows.max()) + 1), top)


def _with_edges(whole: WholeLevels, rows: np.ndarray, counts: np.ndarray, needed: list[int]) -> dict[int, BitMap]:
    """The levels ``needed`` of the whole-day counts ``whole`` plus the edge counts of ``rows``."""
    def level(j: int) -> BitMap:
        return whole.levels[j - 1] if j <= len(whole.levels) else BitMap()

    if len(rows) == 0:
        return {j: level(j) for j in needed}
    total = counts.astype(np.int64)
    upto = max(needed) - 1  # a row in W[j] is in level j anyway: below that, count its memberships
    if upto and whole.levels:
        add_memberships(rows, whole.bitsets(upto), upto, total)
    return {j: level(j) | to_bitmap(rows[total >= j]) for j in needed}


def window_levels(evaluator: DidEvaluator, node: ast.Did, store: EventTypeStore, lo: int, hi: int, now: int,
                  found: BitMap | None, wanted: list[bool]) -> dict[int, BitMap] | None:
    """The levels ``needed_levels(wanted)`` of the per-row counts of the events a DID counts in
    [lo, hi] (exact within ``found``), or None if the levels cannot answer (AFTER LAST, a count
    above CAP, a WHERE bin to check event by event, a window without a whole day): the caller
    counts the events. Do not mutate the bitmaps."""
    top = len(wanted) - 1
    needed = needed_levels(wanted)
    narrow = found is not None and len(found) * NARROW < len(store.ever)
    small = store.row_bound() <= PAIR_COUNTER_ROWS
    if node.after_last is not None or top > CAP or (top <= 2 and found is not None and small):
        return None
    if lo > hi or not store.runs or not needed:
        return {j: BitMap() for j in needed}
    all_time = lo == NO_TIME and hi >= store.max_ts
    first, last = whole_days(lo, hi)
    if hi >= store.max_ts:
        last = hi // DAY_MS  # no event after hi: hi's day counts as whole (a clock past the newest event)
    if not all_time and first is not None and first > last:  # type: ignore[operator]
        return None
    sources = _sources(node, store)
    if sources is None:
        return None
    if any([store.levels(prop) is None for prop in {prop for prop, _ in sources}]):
        return None  # being built: count the events meanwhile
    key = ("levels", id(store), node.where, all_time, first, last, top, store.generation)
    whole = evaluator.cache.get(key)
    if whole is None:
        whole = WholeLevels(_whole_levels(evaluator, store, sources, first, last, all_time, top),
                            int(store.ever.max()) + 1 if store.ever else 0)
        evaluator.cache.put(key, whole)
    spans = []
    if not all_time:
        if first is not None and lo < first * DAY_MS:
            spans.append((lo, first * DAY_MS - 1))
        if hi > (last + 1) * DAY_MS - 1:  # type: ignore[operator]
            spans.append(((last + 1) * DAY_MS, hi))  # type: ignore[operator]
    within = found if narrow else None
    # a window with absolute edges (SINCE, BEFORE before the clock) meets the same events at every
    # clock until the store changes (a WHERE may compare with NOW: then only at the same clock)
    absolute = node.within_ms is None and hi < now \
        and not any(isinstance(t, ast.Now) for t in (node.since, node.before))
    clock = now if node.where is not None else None
    edges_key = (key, tuple(spans), tuple(needed), clock) if within is None and absolute else None
    kept = evaluator.cache.get(edges_key) if edges_key is not None else None
    if kept is not None:
        return kept
    rows, counts = _edge_counts(evaluator, node, store, spans, now, within, top) if spans else (np.zeros(0), None)
    levels = _with_edges(whole, rows, counts, needed)
    if edges_key is not None:
        evaluator.cache.put(edges_key, levels)
    return levels
