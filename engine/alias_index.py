"""The coordinator's routing index of aliases: alias id hash -> shard of its canonical profile.

An open-addressing table of blake2b-64 hashes (uint64, 0 = empty, 1 = deleted) beside the shard
number of each (uint8), of any capacity (a hash's high 32 bits scaled to it), kept at most 80% full
(deleted slots included) and grown by 30% (or to 75% full for a large batch): 9 bytes per slot,
so 11-15 bytes per alias. The shard holding the canonical profile resolves the alias exactly (its
``AliasStore`` compares the bytes); the index only says which shard to ask.

>>> index = AliasIndex()
>>> index.put(np.array([11, 12], dtype=np.uint64), np.array([1, 0], dtype=np.uint8))
>>> index.lookup(np.array([12, 13, 11], dtype=np.uint64)).tolist()
[0, -1, 1]
>>> index.remove(np.array([12], dtype=np.uint64)); len(index), index.lookup(np.array([12], dtype=np.uint64)).tolist()
(1, [-1])
"""
from __future__ import annotations

import numba
import numpy as np

EMPTY = np.uint64(0)
DELETED = np.uint64(1)


def _keys(hashes: np.ndarray) -> np.ndarray:
    """Hashes as table keys (the two reserved values moved aside)."""
    keys = np.asarray(hashes, dtype=np.uint64).copy()
    keys[keys < 2] += np.uint64(2)
    return keys


@numba.njit(inline="always")
def _home(key, capacity):
    """The home slot of ``key`` (a uniform hash): its high 32 bits scaled to the table."""
    return np.int64(((key >> np.uint64(32)) * np.uint64(capacity)) >> np.uint64(32))


@numba.njit(cache=True)
def _find(table, keys, out):
    capacity = len(table)
    for i in range(len(keys)):
        slot = _home(keys[i], capacity)
        out[i] = -1
        while True:
            at = table[slot]
            if at == 0:
                break
            if at == keys[i]:
                out[i] = slot
                break
            slot = slot + 1 if slot + 1 < capacity else 0


@numba.njit(cache=True)
def _insert(table, values, keys, shards):
    """Insert or overwrite; returns (new keys, deleted slots reused)."""
    capacity = len(table)
    added = 0
    reused = 0
    for i in range(len(keys)):
        slot = _home(keys[i], capacity)
        free = -1
        while True:
            at = table[slot]
            if at == keys[i]:
                values[slot] = shards[i]
                break
            if at == 1 and free < 0:
                free = slot
            if at == 0:
                if free >= 0:
                    slot = free
                    reused += 1
                table[slot] = keys[i]
                values[slot] = shards[i]
                added += 1
                break
            slot = slot + 1 if slot + 1 < capacity else 0
    return added, reused


class AliasIndex:
    """Alias hash -> shard number of its canonical profile."""

    MAX_LOAD = 0.8  # live and deleted slots over capacity
    FILL_AFTER_GROWTH = 0.75  # a table sized for one large batch starts this full
    GROWTH = 1.3  # a growing table grows by this much, unless that would leave it under half full

    def __init__(self) -> None:
        self.table = np.zeros(1024, dtype=np.uint64)
        self.values = np.zeros(1024, dtype=np.uint8)
        self.size = 0
        self.used = 0  # live + deleted slots

    def __len__(self) -> int:
        return self.size

    def _grow(self, more: int) -> None:
        if self.used + more <= self.MAX_LOAD * len(self.table):
            return
        live = self.table > DELETED
        keys, values = self.table[live], self.values[live]
        needed = self.size + more
        capacity = max(1024, int(needed / self.FILL_AFTER_GROWTH) + 1,
                       min(int(len(self.table) * self.GROWTH), int(needed / 0.5)))
        self.table = np.zeros(capacity, dtype=np.uint64)
        self.values = np.zeros(capacity, dtype=np.uint8)
        self.size = self.used = 0
        if len(keys):
            added, _ = _insert(self.table, self.values, keys, values)
            self.size = self.used = int(added)

    def put(self, hashes: np.ndarray, shards: np.ndarray) -> None:
        """Route the aliases with ``hashes`` to ``shards`` (overwriting earlier routes)."""
        if len(hashes) == 0:
            return
        self._grow(len(hashes))
        added, reused = _insert(self.table, self.values, _keys(hashes), np.asarray(shards, dtype=np.uint8))
        self.size += int(added)
        self.used += int(added) - int(reused)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """The shard of each hash (int64), -1 where it names no alias."""
        slots = np.empty(len(hashes), dtype=np.int64)
        _find(self.table, _keys(hashes), slots)
        out = np.full(len(hashes), -1, dtype=np.int64)
        hit = slots >= 0
        out[hit] = self.values[slots[hit]]
        return out

    def remove(self, hashes: np.ndarray) -> None:
        """Forget the aliases with ``hashes`` (unknown ones are ignored)."""
        slots = np.empty(len(hashes), dtype=np.int64)
        _find(self.table, _keys(hashes), slots)
        slots = np.unique(slots[slots >= 0])
        self.table[slots] = DELETED
        self.size -= len(slots)

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return int(self.table.nbytes + self.values.nbytes)
