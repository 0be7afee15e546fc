"""The row indexes a shard keeps (``engine.store.row_index``), within one byte budget for all event types.

A SEQUENCE builds the row index of each run it reads; kept, the next one reads it for free. The
indexes of a shard share one budget, ``bytes_per_event`` times the events the shard holds (at least
``MIN_BUDGET_BYTES``). Every request of a run's index counts a *use* (kept or not); when a new
index does not fit, the kept indexes with the fewest uses (the least recently used among equals)
make room, but only if each of them has fewer uses than the newcomer: else the newcomer is built,
handed to its query and not kept. So a workload whose indexes exceed the budget keeps a fixed part
of them and rebuilds the rest per query (cost in proportion to the overflow), instead of evicting
each index just before it is wanted again, as plain LRU does when queries cycle over more than fits.
All use counts are halved every ``AGE_USES`` uses per run tracked, so a new workload's indexes
displace an old one's after some ten queries, while a one-off query does not displace a workload's. An index lives on its run (``Run.row_index``): a run that is merged away or dropped takes
its index with it; eviction clears the attribute (a query holding the index keeps it until done).

>>> import numpy as np
>>> from engine.store.runs import Run
>>> runs = [Run(0, np.arange(100, dtype=np.uint32), np.arange(100, dtype=np.int32), {}) for _ in range(3)]
>>> cache = RowIndexCache(None, min_bytes=1000)  # room for one index of 642 bytes
>>> [cache.get(run) is not None for run in runs], [run.row_index is not None for run in runs]
([True, True, True], [True, False, False])
>>> _ = [cache.get(run) for run in runs]; [run.row_index is not None for run in runs]  # no thrashing
[True, False, False]
"""
from __future__ import annotations

import threading
import weakref
from typing import Sized

from .row_index import RowIndex, build_row_index
from .runs import Run

#: Row-index bytes a shard keeps per event it holds (see docs/design.md for the trade-off).
BYTES_PER_EVENT = 3.2
#: The budget of a small shard: at least this many bytes.
MIN_BUDGET_BYTES = 16 << 20
#: Use counts are halved after this many uses per tracked run.
AGE_USES = 8


class RowIndexCache:
    """The kept row indexes of a shard's runs, within ``bytes_per_event`` x ``events()`` bytes."""

    def __init__(self, owner: Sized | None, bytes_per_event: float = BYTES_PER_EVENT,
                 min_bytes: int = MIN_BUDGET_BYTES):
        self.owner = None if owner is None else weakref.ref(owner)  # its len(): the events of the shard
        self.bytes_per_event = bytes_per_event
        self.min_bytes = min_bytes
        # id(run) -> (the run, its use count), least recently used first: kept and refused runs alike
        self.uses: dict[int, tuple[weakref.ref[Run], float]] = {}
        self.kept: dict[int, weakref.ref[Run]] = {}  # id(run) -> run, for the runs whose index is kept
        self.books = threading.Lock()  # held while ``uses`` and ``kept`` change (briefly)
        self.building = threading.Lock()  # held while an index is built: each is built once
        self.ticks = 0  # uses since the counts were last halved
        self.builds = 0  # indexes built (kept or not): what the budget costs in CPU shows here

    def __reduce__(self) -> tuple:
        return (RowIndexCache, (None, self.bytes_per_event, self.min_bytes))

    def events(self) -> int:
        """The events of the owner (0 once it is gone or for an unbound copy)."""
        owner = None if self.owner is None else self.owner()
        return 0 if owner is None else len(owner)

    @property
    def budget(self) -> int:
        """Bytes the kept indexes may hold now."""
        return max(self.min_bytes, int(self.bytes_per_event * self.events()))

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept indexes."""
        total = 0
        for ref in list(self.kept.values()):
            run = ref()
            index = None if run is None else run.row_index
            total += 0 if index is None else index.nbytes
        return total

    def get(self, run: Run) -> RowIndex:
        """The index of ``run`` (not a slice): the kept one, else built (and kept if the budget allows)."""
        index = run.row_index
        key = id(run)
        with self.books:
            uses = self._used(key, run)
        if index is not None:
            return index
        with self.building:
            index = run.row_index
            if index is not None:  # built by another thread meanwhile
                return index
            index = build_row_index(run.rows, run.ts)
            self.builds += 1
            with self.books:
                if self._make_room(index.nbytes, uses):
                    run.row_index = index
                    self.kept[key] = weakref.ref(run)
            return index

    def _used(self, key: int, run: Run) -> float:
        """Count a use of ``run``'s index (most recently used last); its use count."""
        ref, count = self.uses.pop(key, (None, 0.0))
        if ref is None or ref() is not run:  # a new run at a recycled id
            ref, count = weakref.ref(run), 0.0
        self.uses[key] = (ref, count + 1)
        self.ticks += 1
        if self.ticks >= AGE_USES * len(self.uses):
            self.ticks = 0
            self.uses = {key: (ref, count / 2) for key, (ref, count) in self.uses.items()}
        return self.uses[key][1]

    def _make_room(self, size: int, uses: float) -> bool:
        """Evict kept indexes so that ``size`` more bytes fit, if those evicted have fewer uses than
        ``uses``; False (nothing evicted) if they would not make room."""
        self._forget_dead()
        free = self.budget - self.nbytes
        if size <= free:
            return True
        victims = []
        kept = [(key, count) for key, (_, count) in self.uses.items() if key in self.kept]
        for key, count in sorted(kept, key=lambda item: item[1]):  # stable: least recently used first
            if free >= size or count >= uses:
                break
            run = self.kept[key]()
            index = None if run is None else run.row_index
            free += 0 if index is None else index.nbytes
            victims.append(key)
        if free < size:
            return False
        for key in victims:
            run = self.kept.pop(key)()
            if run is not None:
                run.row_index = None
        return True

    def _forget_dead(self) -> None:
        """Drop the books of runs that no longer exist (and of kept runs whose index was cleared)."""
        self.uses = {key: entry for key, entry in self.uses.items() if entry[0]() is not None}
        self.kept = {key: ref for key, ref in self.kept.items()
                     if (run := ref()) is not None and run.row_index is not None}
