"""An event batch's append worked out ahead of its commit (``EventTypeStore.plan_append``): new run
lists and grown copies of the presence bitmaps, built without changing the store.

>>> old = BitMap([1])
>>> kept = {5: old}
>>> install(kept, 5, grown(old, BitMap([2]))); sorted(kept[5]), sorted(old)
([1, 2], [1])
"""
from __future__ import annotations

import array
from dataclasses import dataclass, field

import numpy as np
from pyroaring import BitMap

from .count_levels import CountLevels, LevelsPart
from .runs import Run, merge_runs


def slot_bitmaps(rows: np.ndarray, ts: np.ndarray, slot_ms: int) -> dict[int, BitMap]:
    """The rows of events sorted by time per slot (``ts // slot_ms``): one sort of (slot, row) keys,
    then one bitmap per slot from a slice of the sorted rows.

    >>> {slot: sorted(b) for slot, b in slot_bitmaps(np.array([7, 3, 5]), np.array([1, 2, 12]), 10).items()}
    {0: [3, 7], 1: [5]}
    """
    slots = ts // slot_ms
    first = int(slots[0])
    keys = np.sort(((slots - first) << 32) | rows.astype(np.int64))
    offsets = keys >> 32
    cuts = (np.flatnonzero(offsets[1:] != offsets[:-1]) + 1).tolist()
    starts, stops = [0, *cuts], [*cuts, len(keys)]
    blob = memoryview((keys & 0xFFFFFFFF).astype(np.uint32).tobytes())
    out: dict[int, BitMap] = {}
    for offset, start, stop in zip(offsets[starts].tolist(), starts, stops):
        part = array.array("I")
        part.frombytes(blob[4 * start:4 * stop])
        out[first + offset] = BitMap(part)
    return out


def with_run(runs: list[Run], run: Run) -> list[Run]:
    """A new list: ``runs`` plus ``run``, neighbouring runs of similar size merged (the old list is unchanged)."""
    runs = [*runs, run]
    while len(runs) >= 2 and len(runs[-2]) <= 2 * len(runs[-1]):
        last = runs.pop()
        runs[-1] = merge_runs(runs[-1], last)
    return runs


@dataclass
class AppendPlan:
    """Events of one type ready to be made visible (``EventTypeStore.plan_append``/``commit_append``).

    ``epochs``: per epoch, (the epoch's runs the plan was made from, those runs with the new run
    merged in, the new run). ``days``: the new rows per UTC day; ``slots``: per day of
    ``slot_days`` (the days whose slots were kept when the plan was made), the new rows per slot.
    """

    rows: np.ndarray
    ts: np.ndarray
    props: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    epochs: dict[int, tuple[list[Run] | None, list[Run], Run]]
    days: dict[int, Grown]
    slots: dict[int, dict[int, Grown]]
    slot_days: frozenset[int]
    ever: Grown
    bins: dict[str, np.ndarray] = field(default_factory=dict)  # per kept binned property, each event's bin
    # per kept count levels (None: the whole type, else a property) as the plan saw them: what to OR in
    levels: dict[str | None, tuple[CountLevels, list[LevelsPart]]] = field(default_factory=dict)


#: A bitmap a write grows: (the bitmap the plan saw or None, a copy of it with the new rows, the new rows).
Grown = tuple[BitMap | None, BitMap, BitMap]


def grown(old: BitMap | None, part: BitMap) -> Grown:
    """``old`` grown by ``part`` as a new bitmap (``old`` is unchanged)."""
    return old, part if old is None else old | part, part


def install(target: dict[int, BitMap], key: int, grown: Grown) -> None:
    """Put the grown bitmap in ``target[key]`` if that still holds the bitmap the plan saw; else OR the
    new rows into whatever it holds now."""
    old, merged, part = grown
    current = target.get(key)
    if current is old:
        target[key] = merged
    elif current is None:
        target[key] = part
    else:
        current |= part
