"""The results a shard's DID evaluator keeps between queries, within one byte budget.

A DID keeps what the next query with the same window can reuse: unions of day bitmaps over whole
buckets, unions of a WHERE's bins over whole days, count levels over whole days and over whole
windows with absolute edges. Every key names the store generation it is exact at, so an entry is
never read stale; one made stale by a write is never hit again and ages out. All of them share
one budget, ``bytes_per_event`` times the events the shard holds (at least ``min_bytes``), least
recently used first out; an entry larger than the whole budget is handed to its query and not kept.
Sizes are the bytes of the bitmaps' containers and of the arrays; a value that grows after it is
kept (``WholeLevels`` adds its bitsets on first use) is measured again when it is read.

>>> from pyroaring import BitMap
>>> cache = QueryCache(None, min_bytes=100)
>>> cache.put("a", BitMap(range(0, 80, 2))); cache.put("b", BitMap(range(0, 20, 2)))  # 80 + 20 bytes
>>> cache.get("a") is not None, cache.nbytes
(True, 100)
>>> cache.put("c", BitMap(range(0, 10, 2))); sorted(cache.entries), cache.nbytes  # "b" was the least recent
(['a', 'c'], 90)
>>> cache.put("d", BitMap(range(0, 200, 2))); sorted(cache.entries)  # 200 bytes: not kept
['a', 'c']
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Hashable, Sized

import numpy as np
from pyroaring import BitMap, FrozenBitMap

#: Bytes the DID evaluator keeps per event of the shard (see docs/design.md for the trade-off).
BYTES_PER_EVENT = 0.3
#: The budget of a small shard: at least this many bytes.
MIN_BUDGET_BYTES = 1 << 20


def held_bytes(value: Any) -> int:
    """Bytes of the bitmaps' containers and the arrays ``value`` holds (through its ``nbytes``,
    dicts, lists and tuples)."""
    if isinstance(value, (BitMap, FrozenBitMap)):
        stats = value.get_statistics()
        return stats["n_bytes_array_containers"] + stats["n_bytes_bitset_containers"] + stats["n_bytes_run_containers"]
    if isinstance(value, np.ndarray) or hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(held_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v) for v in value)
    return 0


class QueryCache:
    """Kept query results by key, least recently used first out past ``budget`` bytes."""

    def __init__(self, owner: Sized | None, bytes_per_event: float | None = None, min_bytes: int | None = None):
        self.owner = None if owner is None else weakref.ref(owner)  # its len(): the events of the shard
        self.bytes_per_event = BYTES_PER_EVENT if bytes_per_event is None else bytes_per_event
        self.min_bytes = MIN_BUDGET_BYTES if min_bytes is None else min_bytes
        self.entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # key -> (value, its bytes)
        self.nbytes = 0
        self.lock = threading.Lock()  # queries in several threads read and fill it at once

    def __reduce__(self) -> tuple:
        return (QueryCache, (None, self.bytes_per_event, self.min_bytes))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def budget(self) -> int:
        """Bytes the kept results may hold now."""
        owner = None if self.owner is None else self.owner()
        events = 0 if owner is None else len(owner)
        return max(self.min_bytes, int(self.bytes_per_event * events))

    def get(self, key: Hashable) -> Any:
        """The value kept under ``key`` (now the most recently used), or None."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            self.entries.move_to_end(key)
            value, size = entry
            if hasattr(value, "nbytes") and not isinstance(value, np.ndarray):  # it may have grown
                grown = int(value.nbytes)
                if grown != size:
                    self.entries[key] = (value, grown)
                    self.nbytes += grown - size
                    self._evict(keep=key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` under ``key`` if it fits the budget, dropping the least recently used."""
        size = held_bytes(value)
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            if size > self.budget:
                return
            self.entries[key] = (value, size)
            self.nbytes += size
            self._evict(keep=key)

    def _evict(self, keep: Hashable) -> None:
        """Drop the least recently used entries (never ``keep``) until the kept ones fit the budget."""
        budget = self.budget
        while self.nbytes > budget and len(self.entries) > 1:
            key = next(iter(self.entries))
            if key == keep:
                self.entries.move_to_end(key)
                continue
            _, size = self.entries.pop(key)
            self.nbytes -= size

    def clear(self) -> None:
        """Forget every kept result."""
        with self.lock:
            self.entries.clear()
            self.nbytes = 0
