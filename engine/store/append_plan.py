"""An event batch's append worked out ahead of its commit (``EventTypeStore.plan_append``): new run
lists, and the batch's rows per day and per 5-minute slot, built without changing the store.

The commit adds those rows to the store's presence bitmaps in place (``or_into``, ``add_rows``): it
runs while no reader reads, and adding in place costs in proportion to the batch's rows, whereas a
copy of a kept bitmap grown by them (so that the prepare could build it while readers read) costs
in proportion to the bitmap: at 10M profiles every day, slot and ``ever`` bitmap spans 153 Roaring
containers, and a batch of page views of the last day touches some 290 of them.

>>> kept = {5: BitMap([1])}
>>> or_into(kept, 5, BitMap([2])); or_into(kept, 6, BitMap([3])); {k: sorted(v) for k, v in kept.items()}
{5: [1, 2], 6: [3]}
"""
from __future__ import annotations

import array
from dataclasses import dataclass, field

import numpy as np
from pyroaring import BitMap

from .count_levels import CountLevels, LevelsPart
from .runs import Run, merge_runs


def slot_rows(rows: np.ndarray, ts: np.ndarray, slot_ms: int) -> dict[int, array.array]:
    """The rows of events sorted by time per slot (``ts // slot_ms``), ascending, as uint32 arrays that
    ``BitMap.update`` adds in place (``add_rows``): one sort of (slot, row) keys, then a slice per slot.

    >>> {slot: list(part) for slot, part in slot_rows(np.array([7, 3, 5]), np.array([1, 2, 12]), 10).items()}
    {0: [3, 7], 1: [5]}
    """
    slots = ts // slot_ms
    first = int(slots[0])
    keys = np.sort(((slots - first) << 32) | rows.astype(np.int64))
    offsets = keys >> 32
    cuts = (np.flatnonzero(offsets[1:] != offsets[:-1]) + 1).tolist()
    starts, stops = [0, *cuts], [*cuts, len(keys)]
    blob = memoryview((keys & 0xFFFFFFFF).astype(np.uint32).tobytes())
    out: dict[int, array.array] = {}
    for offset, start, stop in zip(offsets[starts].tolist(), starts, stops):
        part = array.array("I")
        part.frombytes(blob[4 * start:4 * stop])
        out[first + offset] = part
    return out


def add_rows(target: dict[int, BitMap], key: int, rows: array.array) -> None:
    """Add ``rows`` (ascending uint32) to ``target[key]`` in place, or make them its bitmap. A few rows
    added to a kept bitmap go straight into its containers: building a bitmap of them first and
    ORing it in costs twice as much at 10M profiles (their rows spread over that many containers)."""
    current = target.get(key)
    if current is None:
        target[key] = BitMap(rows)
    else:
        current.update(rows)


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
    ``slot_days`` (the days whose slots were kept when the plan was made), the new rows per slot;
    ``ever``: the new rows.
    """

    rows: np.ndarray
    ts: np.ndarray
    props: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    epochs: dict[int, tuple[list[Run] | None, list[Run], Run]]
    days: dict[int, BitMap]
    slots: dict[int, dict[int, array.array]]
    slot_days: frozenset[int]
    ever: BitMap
    bins: dict[str, np.ndarray] = field(default_factory=dict)  # per kept binned property, each event's bin
    # per kept count levels (None: the whole type, else a property) as the plan saw them: what to OR in
    levels: dict[str | None, tuple[CountLevels, list[LevelsPart]]] = field(default_factory=dict)


def or_into(target: dict[int, BitMap], key: int, part: BitMap) -> None:
    """OR ``part`` into ``target[key]`` in place (``part`` itself becomes the entry if there is none: the
    caller hands over a bitmap nothing else holds)."""
    current = target.get(key)
    if current is None:
        target[key] = part
    else:
        current |= part
