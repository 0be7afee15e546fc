"""Kept per-row sums of one scaled float property over a time window that moves with the clock.

A ``WindowSums`` holds, for every row with an event of its type in ``[lo, hi]``, the events (with
a null value or not), the non-null values, the sum of their codes ``C`` and the sum of their
residuals ``R`` (``scale * (c / scale) - c`` in units of 2**-RESIDUAL_BITS, see
``engine.store.runs``): exact int64 sums from which a ``DID`` with ``SUM`` or ``AVG`` is decided
without reading the window's events (``engine.exec.kept_sums``). Every part is a plain sum, so
events leave and enter by subtraction and addition: a query at a later clock moves the window by
the events between the old and the new edges, a write adds the events it brings inside the
window, an erasure or a merge zeroes the rows it takes away. A ``WindowSumsCache`` keeps a few per
event type, keyed by (property, window length), and checks each against the store's generation:
a change that did not go through its hooks (expiry inside a window, say) makes it rebuilt.

Entries are sorted by row in a main part and a small ``extra`` part for rows that arrived since
the last fold (so a new row costs no copy of the main part); entries whose events all left stay
at zero until the next fold.

>>> sums = WindowSums("amount", 100, 0, 10, *empty_entries())
>>> sums.add_events(np.array([7, 3, 7], np.int32), np.array([1050, 20, SCALED_NULL], np.int32), 1)
>>> [(e.rows.tolist(), (e.counts >> 32).tolist(), e.sums.tolist()) for e in sums.parts()]
[([3, 7], [1, 2], [20, 1050])]
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numba
import numpy as np

from .bitsets import mark_rows, rank_table, ranks_of, set_rows
from .runs import SCALED_NULL, merge_order, residual_units

if TYPE_CHECKING:
    from .events import EventTypeStore

#: ``counts`` holds the events in its high 32 bits and the non-null values in its low 32 bits.
EVENT = 1 << 32
#: Windows kept per event type (the least recently used is dropped).
MAX_KEPT = 4
#: The extra part is folded into the main one past max(FOLD_MIN, main / 8) entries, and emptied
#: entries are dropped past max(FOLD_MIN, main / 4). A move of more than max(FOLD_MIN, entries /
#: REBUILD_RATIO) events builds the sums again (moving costs about ten times more per event than
#: building, measured), and so does a write of more than half the entries' worth of events.
FOLD_MIN = 4096
REBUILD_RATIO = 8
#: Kept answers are patched on the changed rows while they are fewer than 1/PATCH_RATIO of the entries.
PATCH_RATIO = 8
#: The least timestamp (a window from here has no lower edge).
ALL_TIME = int(np.iinfo(np.int64).min)


@numba.njit(cache=True, nogil=True)
def accumulate(slots, codes, sign, counts, sums, residuals, scale):
    """Add (``sign`` 1) or remove (-1) events: each event's slot, its code (SCALED_NULL: null)."""
    for i in range(len(slots)):
        k = slots[i]
        c = codes[i]
        if c == SCALED_NULL:
            counts[k] += sign * EVENT
            continue
        counts[k] += sign * (EVENT + 1)
        sums[k] += sign * np.int64(c)
        residuals[k] += sign * residual_units(c, scale)


@numba.njit(cache=True, nogil=True)
def _group_sorted(keys, codes, signs, scale):
    """:func:`group_events` once the keys are sorted."""
    n = len(keys)
    out = np.empty(n, dtype=np.int32)
    counts = np.zeros(n, dtype=np.int64)
    sums = np.zeros(n, dtype=np.int64)
    residuals = np.zeros(n, dtype=np.int64)
    d = -1
    for j in range(n):
        row = keys[j] >> 32
        if d < 0 or out[d] != row:
            d += 1
            out[d] = row
        i = keys[j] & 0xFFFFFFFF
        c = codes[i]
        sign = np.int64(signs[i])
        if c == SCALED_NULL:
            counts[d] += sign * EVENT
            continue
        counts[d] += sign * (EVENT + 1)
        sums[d] += sign * np.int64(c)
        residuals[d] += sign * residual_units(c, scale)
    return out[:d + 1], counts[:d + 1], sums[:d + 1], residuals[:d + 1]


def group_events(rows: np.ndarray, codes: np.ndarray, signs: np.ndarray, scale: int) -> tuple[np.ndarray, ...]:
    """The records of events (rows, codes) per distinct row: (rows ascending, counts, sums, residuals),
    each event added with its sign (int8, 1 or -1). One value sort of packed int64 keys (row << 32 | position):
    NumPy's sort, eight times faster here than numba's."""
    keys = np.asarray(rows, dtype=np.int64) << 32
    keys |= np.arange(len(keys), dtype=np.int64)
    keys.sort()
    return _group_sorted(keys, codes, signs, scale)


@numba.njit(cache=True, nogil=True)
def add_into(rows, counts, sums, residuals, drows, dcounts, dsums, dresiduals):
    """Add the records of ``drows`` (ascending) to the entries of the same rows (``rows`` ascending),
    found by galloping from the previous one (O(d log(n / d))). Returns per delta whether its row
    has an entry, and how many entries lost all their events (minus those that regained some)."""
    found = np.zeros(len(drows), dtype=np.bool_)
    emptied = 0
    n = len(rows)
    k = 0
    for i in range(len(drows)):
        target = drows[i]
        bound = 1
        while k + bound < n and rows[k + bound] < target:
            bound *= 2
        a, b = k, min(k + bound + 1, n)
        while a < b:  # the first position in [k, k + bound] whose row is >= target
            mid = (a + b) >> 1
            if rows[mid] < target:
                a = mid + 1
            else:
                b = mid
        k = a
        if k == n or rows[k] != target:
            continue
        before = counts[k] >> 32
        counts[k] += dcounts[i]
        sums[k] += dsums[i]
        residuals[k] += dresiduals[i]
        after = counts[k] >> 32
        emptied += (before != 0 and after == 0) - (before == 0 and after != 0)
        found[i] = True
    return found, emptied


@dataclass
class Entries:
    """Per row (ascending int32 ``rows``): packed event and value counts, sum of codes, sum of residuals."""

    rows: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    residuals: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, picks: np.ndarray) -> "Entries":
        """The entries at positions ``picks`` (ascending)."""
        return Entries(self.rows[picks], self.counts[picks], self.sums[picks], self.residuals[picks])

    def lookup(self, rows: np.ndarray) -> "Entries":
        """The entries of ``rows`` (ascending) that are here."""
        at = np.searchsorted(self.rows, rows)
        hit = at < len(self.rows)
        hit[hit] = self.rows[at[hit]] == rows[hit]
        return self.take(at[hit])

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.counts.nbytes + self.sums.nbytes + self.residuals.nbytes


def empty_entries() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays of no entries."""
    return np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)


def _merged(a: Entries, b: Entries) -> Entries:
    """One sorted part from two with distinct rows, entries without events left out."""
    order = merge_order(a.rows, b.rows)
    merged = Entries(*(np.concatenate([x, y]).take(order) for x, y in
                       ((a.rows, b.rows), (a.counts, b.counts), (a.sums, b.sums), (a.residuals, b.residuals))))
    return merged.take(np.flatnonzero(merged.counts >> 32))


class WindowSums:
    """The per-row sums of property ``prop`` (codes of ``scale``) over the events in ``[lo, hi]``."""

    def __init__(self, prop: str, scale: int, lo: int, hi: int, rows: np.ndarray, counts: np.ndarray,
                 sums: np.ndarray, residuals: np.ndarray, generation: int = 0):
        self.prop, self.scale, self.lo, self.hi = prop, scale, lo, hi
        self.main = Entries(rows, counts, sums, residuals)
        self.extra = Entries(*empty_entries())
        self.emptied = 0
        self.generation = generation  # the store generation these sums are exact at
        # query answers read from these sums (engine.exec.kept_sums) and the rows whose entries changed
        # since (ascending arrays): answers are patched on those rows, or dropped once they are many
        self.answers: dict = {}
        self.changed: list[np.ndarray] = []
        self.changed_count = 0

    @classmethod
    def build(cls, store: "EventTypeStore", prop: str, scale: int, lo: int, hi: int) -> "WindowSums":
        """The sums of ``store``'s events in [lo, hi], from the events (one pass, no sort)."""
        parts = store.window(lo, hi)
        top = max((int(part.rows.max()) for part in parts), default=-1)
        words = np.zeros((top >> 6) + 1, dtype=np.uint64)
        for part in parts:
            mark_rows(words, part.rows)
        rows = set_rows(words)
        table = rank_table(words)
        counts, sums, residuals = (np.zeros(len(rows), dtype=np.int64) for _ in range(3))
        for part in parts:
            accumulate(ranks_of(part.rows, table), part.props[prop], 1, counts, sums, residuals, scale)
        return cls(prop, scale, lo, hi, rows, counts, sums, residuals, store.generation)

    def __len__(self) -> int:
        return len(self.main) + len(self.extra)

    def parts(self) -> list[Entries]:
        """The non-empty parts (each sorted by row; their rows are distinct)."""
        return [part for part in (self.main, self.extra) if len(part)]

    @property
    def nbytes(self) -> int:
        return self.main.nbytes + self.extra.nbytes

    def move(self, store: "EventTypeStore", lo: int, hi: int) -> bool:
        """Become the sums over [lo, hi] by the events that leave and enter; False (unchanged) when
        building them again costs less (the windows do not overlap, or many events would move)."""
        if (lo, hi) == (self.lo, self.hi):
            return True
        if lo > self.hi or hi < self.lo:
            return False
        leaving = [p for a, b in ((self.lo, min(self.hi, lo - 1)), (max(self.lo, hi + 1), self.hi)) for p in store.window(a, b)]
        entering = [p for a, b in ((lo, min(hi, self.lo - 1)), (max(lo, self.hi + 1), hi)) for p in store.window(a, b)]
        moved = leaving + entering
        if sum(map(len, moved)) > max(FOLD_MIN, len(self) // REBUILD_RATIO):
            return False
        if moved:
            self.add_events(np.concatenate([p.rows for p in moved]), np.concatenate([p.props[self.prop] for p in moved]),
                            np.concatenate([np.full(len(p), -1 if i < len(leaving) else 1, np.int8)
                                            for i, p in enumerate(moved)]))
        self.lo, self.hi = lo, hi
        return True

    def add_events(self, rows: np.ndarray, codes: np.ndarray, signs: np.ndarray | int) -> None:
        """Add (sign 1) or remove (-1) events given by their rows, codes and signs (one for all, or per event)."""
        if len(rows) == 0:
            return
        if isinstance(signs, int):
            signs = np.full(len(rows), signs, dtype=np.int8)
        delta = Entries(*group_events(rows, codes, signs, self.scale))
        self._changed(delta.rows)
        for part in self.parts():
            found, emptied = add_into(part.rows, part.counts, part.sums, part.residuals,
                                      delta.rows, delta.counts, delta.sums, delta.residuals)
            self.emptied += emptied
            delta = delta.take(np.flatnonzero(~found))
        if len(delta):  # rows new to the window (a removal only meets rows that have entries)
            self.extra = _merged(self.extra, delta)
        if len(self.extra) > max(FOLD_MIN, len(self.main) // 8) or self.emptied > max(FOLD_MIN, len(self.main) // 4):
            self.main, self.extra, self.emptied = _merged(self.main, self.extra), Entries(*empty_entries()), 0

    def _changed(self, rows: np.ndarray) -> None:
        """Note that the entries of ``rows`` (ascending) changed: the kept answers are stale there."""
        if not self.answers:
            return
        self.changed.append(rows)
        self.changed_count += len(rows)
        if self.changed_count * PATCH_RATIO > len(self):  # patching would cost about what answering again does
            self.answers, self.changed, self.changed_count = {}, [], 0

    def take_changed(self) -> np.ndarray:
        """The rows whose entries changed since the answers were last patched (ascending), forgotten."""
        rows = np.unique(np.concatenate(self.changed)) if self.changed else np.empty(0, np.int32)
        self.changed, self.changed_count = [], 0
        return rows

    def drop(self, gone: np.ndarray) -> None:
        """Zero the entries of rows ``gone`` (ascending): their events were deleted."""
        self._changed(gone.astype(np.int32))
        for part in self.parts():
            held = np.searchsorted(part.rows, gone)
            hit = held < len(part.rows)
            hit[hit] = part.rows[held[hit]] == gone[hit]
            at = held[hit]
            self.emptied += int(np.count_nonzero(part.counts[at] >> 32))
            part.counts[at] = 0
            part.sums[at] = 0
            part.residuals[at] = 0


class WindowSumsCache:
    """The kept ``WindowSums`` of one event type, keyed by (property, window length), at most MAX_KEPT.

    Queries use one under ``lock`` (:meth:`at`), so concurrent queries never move a window under
    each other; writes keep them exact through :meth:`appended`, :meth:`dropped` and :meth:`expired`
    (each called before the store's generation steps by one). Snapshots keep none (rebuilt on demand).
    """

    def __init__(self) -> None:
        self.kept: dict[tuple[str, int], WindowSums] = {}
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple:
        return (WindowSumsCache, ())

    @contextmanager
    def at(self, store: "EventTypeStore", prop: str, lo: int, hi: int) -> Iterator[WindowSums]:
        """The sums of ``prop`` over [lo, hi] (moved, or built from the events), held for the block."""
        key = (prop, -1 if lo == ALL_TIME else hi - lo)
        scale = store.scaled.get(prop, 0)
        with self.lock:
            sums = self.kept.pop(key, None)
            if sums is not None and (sums.generation != store.generation or sums.scale != scale
                                     or not sums.move(store, lo, hi)):
                sums = None
            if sums is None:
                sums = WindowSums.build(store, prop, scale, lo, hi)
            self.kept[key] = sums  # most recently used last
            while len(self.kept) > MAX_KEPT:
                del self.kept[next(iter(self.kept))]
            yield sums

    def appended(self, generation: int, rows: np.ndarray, ts: np.ndarray, props: dict[str, np.ndarray],
                 scaled: dict[str, int]) -> None:
        """Events were appended (``ts`` ascending; ``props``: the stored columns) at store ``generation``."""
        with self.lock:
            for key, sums in list(self.kept.items()):
                start = int(np.searchsorted(ts, sums.lo, side="left"))
                stop = int(np.searchsorted(ts, sums.hi, side="right"))
                if sums.generation != generation or scaled.get(sums.prop, 0) != sums.scale \
                        or stop - start > max(FOLD_MIN, len(sums) // 2):
                    del self.kept[key]
                    continue
                sums.add_events(rows[start:stop], props[sums.prop][start:stop], 1)
                sums.generation = generation + 1

    def dropped(self, generation: int, gone: np.ndarray) -> None:
        """Every event of rows ``gone`` (ascending) was deleted at store ``generation``."""
        with self.lock:
            for key, sums in list(self.kept.items()):
                if sums.generation != generation:
                    del self.kept[key]
                    continue
                sums.drop(gone)
                sums.generation = generation + 1

    def expired(self, generation: int, cutoff: int) -> None:
        """The events with ts <= ``cutoff`` were deleted at store ``generation``: windows above it are unchanged."""
        with self.lock:
            for key, sums in list(self.kept.items()):
                if sums.generation != generation or sums.lo <= cutoff:
                    del self.kept[key]
                    continue
                sums.generation = generation + 1

    @property
    def nbytes(self) -> int:
        return sum(sums.nbytes for sums in self.kept.values())
