"""An event type's last writes by store generation: what a kept union of its day or slot bitmaps
needs to catch up with them, instead of being built again.

Before the store's generation steps by one, an append records the rows it added per UTC day and,
for the days whose slots it indexed, per 5-minute slot (its plan's ``days``, ``slots`` and
``slot_days``); a deletion of every event of some rows (a merge's departures, an erasure, the
compaction of events deleted by marking) records those rows. A union of the buckets
``first..last`` (whole days, or slots of one day) exact at generation ``g`` is exact at the current
generation once the records since ``g`` are applied to it in order (OR the rows added to those
buckets, remove the rows dropped), provided every step since ``g`` has a record: any other write
(expiry deletes events by time) steps the generation without one, so the chain has a gap and
``catch_up`` answers None (build the union again); so does a slot union whose day an append added
rows to without its slots. A record may hold more than its append's rows (a day new to the store
takes the plan's bitmap as its own, and later appends grow it in place), but only rows of those
days: the OR stays exact.

>>> import array
>>> from pyroaring import BitMap
>>> log = AppendLog()
>>> log.appended(5, {10: BitMap([1, 2]), 11: BitMap([3])}, {11: {11 * 288 + 40: array.array("I", [3])}}, frozenset({11}))
>>> log.dropped(6, BitMap([2]))
>>> sorted(log.catch_up(BitMap([9]), 5, 7, DAY_MS, 10, 11)), log.catch_up(BitMap(), 4, 7, DAY_MS, 0, 99)
([1, 3, 9], None)
>>> sorted(log.catch_up(BitMap(), 5, 7, SLOT_MS, 11 * 288, 11 * 288 + 287)), log.catch_up(BitMap(), 5, 7, SLOT_MS, 10 * 288, 10 * 288 + 1)
([3], None)
"""
from __future__ import annotations

import array
from collections import deque
from typing import NamedTuple

from pyroaring import BitMap

DAY_MS = 86_400_000
SLOT_MS = 300_000
#: Writes kept: a kept union at most this many writes behind catches up; older ones are built again.
WRITES_KEPT = 16


class Record(NamedTuple):
    """One write of an event type: an append (``days``, ``slots``, ``slot_days``) or the rows it
    dropped every event of (``dropped``)."""

    generation: int
    days: dict[int, BitMap]
    slots: dict[int, dict[int, array.array]]
    slot_days: frozenset[int]
    dropped: BitMap | None = None

    def added(self, size: int, first: int, last: int) -> BitMap | None:
        """The rows this append added to the ``size``-ms buckets ``first..last``; None if not known."""
        out = BitMap()
        if size % DAY_MS == 0:
            lo, hi = first * (size // DAY_MS), (last + 1) * (size // DAY_MS) - 1
            for day, part in self.days.items():
                if lo <= day <= hi:
                    out |= part
            return out
        day = first * size // DAY_MS
        if size != SLOT_MS or day not in self.days:
            return None if size != SLOT_MS else out
        if day not in self.slot_days:
            return None
        for slot, part in self.slots.get(day, {}).items():
            if first <= slot <= last:
                out.update(part)
        return out


class AppendLog:
    """An event type's last ``WRITES_KEPT`` writes, by store generation."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: deque[Record] = deque(maxlen=WRITES_KEPT)

    def appended(self, generation: int, days: dict[int, BitMap], slots: dict[int, dict[int, array.array]],
                 slot_days: frozenset[int]) -> None:
        """An append at store ``generation`` (before the store steps it) added ``days``' rows, and
        ``slots``' rows to the slots of ``slot_days``."""
        self.records.append(Record(generation, days, slots, slot_days))

    def dropped(self, generation: int, rows: BitMap) -> None:
        """A write at store ``generation`` deleted every event of ``rows``."""
        self.records.append(Record(generation, {}, {}, frozenset(), rows))

    def catch_up(self, union: BitMap, generation: int, current: int, size: int, first: int,
                 last: int) -> BitMap | None:
        """``union`` (of the ``size``-ms buckets ``first..last``: whole days, or the slots of one day;
        exact at store ``generation``) made exact at ``current``, as a new bitmap unless nothing
        changed; None where that is not known."""
        steps = current - generation
        if steps <= 0:
            return union if steps == 0 else None
        records = self.records
        if len(records) < steps or records[-1].generation != current - 1 or records[-steps].generation != generation:
            return None
        result: BitMap | None = None  # a bitmap of our own once anything changed
        for record in list(records)[-steps:]:
            if record.dropped is not None:
                if result is None:
                    result = union - record.dropped
                else:
                    result -= record.dropped
                continue
            added = record.added(size, first, last)
            if added is None:
                return None
            if added:
                if result is None:
                    result = union | added
                else:
                    result |= added
        return union if result is None else result
