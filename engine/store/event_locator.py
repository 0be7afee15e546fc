"""Where a profile's events lie in a shard's event store: per row, the blocks of the runs holding them.

The event store is organised by type and time, not by profile; a merge's sources and an export
need one profile's events. ``EventLocator`` is a per-shard index built once over the runs that
exist then (the *covered* runs): the events of every covered run, in blocks of ``2**block_bits``
positions (numbered across all covered runs of all types), and per row the blocks holding its
events (``entries``: per event its block number, uint16 while there are at most 65,536 blocks: the
block size doubles from 256 events until they fit; grouped by row, in row order). Where a row's
entries start is ``bases[row >> 6]`` (uint32, one per 64 rows) plus the ``counts`` (uint8 per row)
of the rows before it in its group of 64; a row with ``FULL`` (255) or more covered events counts
``FULL`` and has its count in ``over_rows``/``over_counts`` (sorted, searched). So a row's events
are found by scanning a few blocks of a few hundred events each. Runs are never changed in place, so a covered run's entries stay true while it
exists; runs written later (appends, the log-structured merges of small runs, rebuilds after an
erasure or compaction) are *uncovered* and scanned whole (a pass over their rows against a bit
mask of the rows looked up). Once uncovered runs hold more than a sixteenth of the events the index is built again.
Events deleted by marking stay in the covered runs: only live rows are ever looked up.

Memory: 2 bytes per covered event plus 1.06 per row (about 2.2 bytes per event at 5 events per
profile); built by the first merge or export that needs it (one counting sort over the store's
rows); never part of a snapshot.

>>> import numpy as np
>>> from engine.schema import EventDef
>>> from engine.store.events import EventStore
>>> store = EventStore({"view": EventDef("view", {})})
>>> store.types["view"].append(np.array([3, 1, 3, 2]), np.array([10, 20, 30, 40]), {})
>>> [(name, run.rows[picks].tolist()) for name, run, picks in locate(store, np.array([3]), 4)]
[('view', [3, 3])]
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numba
import numpy as np

from .runs import Run

if TYPE_CHECKING:
    from .events import EventStore

#: Uncovered events beyond this share of all events make the next lookup build the index again.
REBUILD_SHARE = 16
#: Runs shorter than this are left uncovered (scanned): the small, young runs that merge often.
MIN_COVERED_RUN = 4096
MIN_BLOCK_BITS = 8
#: A row's count that stands for "this many covered events or more: see the overflow arrays".
FULL = 255
#: Rows per ``bases`` entry (a power of two).
GROUP_BITS = 6


@numba.njit(cache=True, nogil=True)
def _count_rows(rows, counts):
    """counts[row] += 1 for each event."""
    for i in range(len(rows)):
        counts[rows[i] + 1] += 1


@numba.njit(cache=True, nogil=True)
def _fill_entries(rows, first_block, block_bits, cursor, entries):
    """Write each event's block (``first_block`` + position >> block_bits) at its row's cursor."""
    for i in range(len(rows)):
        row = rows[i]
        entries[cursor[row]] = first_block + (i >> block_bits)
        cursor[row] += 1


@numba.njit(cache=True, nogil=True)
def _count(counts, over_rows, over_counts, row):
    """The covered events of ``row``."""
    if counts[row] != FULL:
        return np.int64(counts[row])
    return np.int64(over_counts[np.searchsorted(over_rows, row)])


@numba.njit(cache=True, nogil=True)
def _start(bases, counts, over_rows, over_counts, row):
    """Where the entries of ``row`` start: its group's base plus the counts of the rows before it there."""
    group = row >> GROUP_BITS
    start = np.int64(bases[group])
    for r in range(group << GROUP_BITS, row):
        start += _count(counts, over_rows, over_counts, r)
    return start


@numba.njit(cache=True, nogil=True)
def _row_blocks(wanted, bases, counts, over_rows, over_counts, entries):
    """The blocks holding an event of a wanted row (with repeats when two rows share a block)."""
    total = 0
    for k in range(len(wanted)):
        row = wanted[k]
        if row < len(counts):
            total += _count(counts, over_rows, over_counts, row)
    blocks = np.empty(total, dtype=np.int64)
    n = 0
    for k in range(len(wanted)):
        row = wanted[k]
        if row >= len(counts):
            continue
        start = _start(bases, counts, over_rows, over_counts, row)
        last = -1
        for j in range(start, start + _count(counts, over_rows, over_counts, row)):
            block = np.int64(entries[j])
            if block != last:  # a row's entries are in position order: its repeats are adjacent
                blocks[n] = block
                n += 1
                last = block
    return blocks[:n]


@numba.njit(cache=True, nogil=True)
def _scan_blocks(rows, starts, bits, block_size):
    """Positions (in order) of the events of ``rows`` whose row is set in the bit mask ``bits``, in the
    blocks starting at ``starts`` (distinct, sorted): two passes, like ``marked``."""
    count = 0
    for i in range(len(starts)):
        for p in range(starts[i], min(starts[i] + block_size, len(rows))):
            row = rows[p]
            if (bits[row >> 3] >> (row & 7)) & 1:
                count += 1
    out = np.empty(count, dtype=np.int64)
    n = 0
    for i in range(len(starts)):
        for p in range(starts[i], min(starts[i] + block_size, len(rows))):
            row = rows[p]
            if (bits[row >> 3] >> (row & 7)) & 1:
                out[n] = p
                n += 1
    return out


def _marked_bits(rows: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``marked`` against a bit mask (a row is set when bit ``row & 7`` of byte ``row >> 3`` is): the
    scan of one block holding every event."""
    return _scan_blocks(rows, np.zeros(1, dtype=np.int64), bits, max(len(rows), 1))


def bit_mask(rows: np.ndarray, size: int) -> np.ndarray:
    """The bit mask (uint8, a bit per row, little-endian within a byte) of ``rows`` among ``size`` rows:
    an eighth of a byte mask's size, so its lookups stay in cache on a large shard."""
    bits = np.zeros((size >> 3) + 1, dtype=np.uint8)
    rows = np.asarray(rows, dtype=np.int64)
    np.bitwise_or.at(bits, rows >> 3, np.left_shift(1, rows & 7).astype(np.uint8))
    return bits


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


class EventLocator:
    """Per row, the blocks of the covered runs that hold its events (see the module docstring)."""

    def __init__(self, events: EventStore, size: int):
        covered = [(name, run) for name, store in events.types.items() for run in store.runs
                   if len(run) >= MIN_COVERED_RUN]
        total = sum(len(run) for _, run in covered)
        bits = MIN_BLOCK_BITS
        while sum(-(-len(run) // (1 << bits)) for _, run in covered) > 65536:
            bits += 1
        self.block_bits = bits
        self.runs: list[weakref.ref[Run]] = [weakref.ref(run) for _, run in covered]
        self.names = [name for name, _ in covered]
        self.slot_of = {id(run): slot for slot, (_, run) in enumerate(covered)}
        firsts = np.cumsum([0] + [-(-len(run) // (1 << bits)) for _, run in covered])
        self.first_block = firsts[:-1].astype(np.int64)
        self.block_slot = np.repeat(np.arange(len(covered), dtype=np.int64), np.diff(firsts))
        counts = np.zeros(size + 1, dtype=np.int64)
        for _, run in covered:
            _count_rows(run.rows, counts)
        counts = counts[1:]
        offsets = np.cumsum(counts)
        self.over_rows = np.flatnonzero(counts >= FULL)
        self.over_counts = counts[self.over_rows]
        self.counts = np.minimum(counts, FULL).astype(np.uint8)
        cursor = offsets - counts  # where each row's entries start
        self.bases = cursor[::1 << GROUP_BITS].astype(np.uint32 if total < 2**32 else np.int64)
        self.entries = np.empty(total, dtype=np.uint16 if firsts[-1] <= 65536 else np.uint32)
        for slot, (_, run) in enumerate(covered):
            _fill_entries(run.rows, int(self.first_block[slot]), bits, cursor, self.entries)
        self.covered_events = total

    def covers(self, run: Run) -> bool:
        """True if ``run`` is one of the covered runs (and still exists)."""
        slot = self.slot_of.get(id(run))
        return slot is not None and self.runs[slot]() is run

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays."""
        return (self.bases.nbytes + self.counts.nbytes + self.over_rows.nbytes + self.over_counts.nbytes
                + self.entries.nbytes + self.first_block.nbytes + self.block_slot.nbytes)

    def find(self, wanted: np.ndarray, bits: np.ndarray) -> dict[int, np.ndarray]:
        """Per covered slot holding events of the rows ``wanted`` (distinct; set in the bit mask ``bits``):
        their positions in order. A run where those blocks would cover most events is scanned whole."""
        blocks = np.unique(_row_blocks(wanted, self.bases, self.counts, self.over_rows, self.over_counts,
                                       self.entries))
        if not len(blocks):
            return {}
        slots = self.block_slot[blocks]
        cuts = np.flatnonzero(np.diff(slots)) + 1
        size = 1 << self.block_bits
        found: dict[int, np.ndarray] = {}
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(slots)]):
            slot = int(slots[lo])
            run = self.runs[slot]()
            if run is None:
                continue
            if (hi - lo) * size * 2 >= len(run):  # a profile with events all over the run: one pass
                positions = _marked_bits(run.rows, bits)
            else:
                positions = _scan_blocks(run.rows, (blocks[lo:hi] - self.first_block[slot]) << self.block_bits,
                                         bits, size)
            if len(positions):
                found[slot] = positions
        return found


def locator(events: EventStore, size: int) -> EventLocator:
    """The shard's event locator, built again when uncovered runs hold more than 1/REBUILD_SHARE of the events."""
    kept: EventLocator | None = getattr(events, "locator", None)
    if kept is not None:
        uncovered = sum(len(run) for store in events.types.values() for run in store.runs if not kept.covers(run))
        total = sum(len(run) for store in events.types.values() for run in store.runs)
        if uncovered * REBUILD_SHARE <= total:  # rows added since hold events in uncovered runs only
            return kept
    kept = EventLocator(events, size)
    events.locator = kept
    return kept


def locate(events: EventStore, rows: np.ndarray, size: int) -> list[tuple[str, Run, np.ndarray]]:
    """The events of ``rows`` (live rows of a shard of ``size`` rows): per run holding some, (event type,
    the run, their positions in time order); covered runs through the locator, the others scanned."""
    wanted = np.unique(np.asarray(rows, dtype=np.int64))
    if not len(wanted):
        return []
    bits = bit_mask(wanted, size)
    index = locator(events, size)
    found = index.find(wanted, bits)
    out: list[tuple[str, Run, np.ndarray]] = []
    for name, store in events.types.items():
        for run in store.runs:
            slot = index.slot_of.get(id(run))
            if slot is not None and index.runs[slot]() is run:
                if slot in found:
                    out.append((name, run, found[slot]))
                continue
            picks = _marked_bits(run.rows, bits)
            if len(picks):
                out.append((name, run, picks))
    return out
