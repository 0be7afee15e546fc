"""The aliases of one shard's canonical profiles (ids merged into them).

Alias ids live in their own ``IdMap`` (alias number <-> id bytes, blake2b-64 hash, probe table);
per alias the canonical row it names (int32) and the next alias of the same row (int32, -1 at
the end), per canonical row its first alias (int32, -1: none). So the aliases of a row are a
linked list, moved or dropped as a whole when the row is merged away or erased; a dropped alias
is forgotten in the id map (its bytes zeroed). About 8 (hash) + 8 (offset) + 6-11 (table) + 8
(row, next) bytes per alias plus its id's bytes.

>>> store = AliasStore()
>>> store.add(["a", "b"], 3)
>>> store.add(["c"], 3)
>>> store.rows_of(["b", "zz"]).tolist(), sorted(store.aliases_of(3))
([3, -1], ['a', 'b', 'c'])
>>> sorted(store.drop(3))
['a', 'b', 'c']
>>> store.rows_of(["a"]).tolist(), len(store)
([-1], 0)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from pyroaring import BitMap

from .growable import GrowableArray
from .idmap import IdMap

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter


#: How much the alias arrays grow by when full (less than the profiles' 1.5: aliases arrive in small batches).
GROWTH = 1.3


class AliasStore:
    """Alias id -> canonical row, and the aliases of each canonical row."""

    def __init__(self) -> None:
        self.ids = IdMap(growth=GROWTH)
        self.target = GrowableArray(np.int32, -1, growth=GROWTH)
        self.next = GrowableArray(np.int32, -1, growth=GROWTH)
        self.head = GrowableArray(np.int32, -1, growth=GROWTH)
        self.live = 0

    def __len__(self) -> int:
        return self.live

    def add(self, aliases: Sequence[str], row: int) -> None:
        """Record ``aliases`` (ids known nowhere else on this shard) as aliases of canonical ``row``."""
        self.add_many(list(aliases), [row] * len(aliases))

    def add_many(self, aliases: list[str], rows: list[int]) -> None:
        """Record each of ``aliases`` as an alias of the canonical row beside it, in order (one id-map call)."""
        if not aliases:
            return
        numbers, before = self.ids.lookup_or_insert(aliases)
        self.target.ensure(len(self.ids))
        self.next.ensure(len(self.ids))
        self.head.ensure(max(rows) + 1)
        target, nxt, head = self.target.data, self.next.data, self.head.data
        for number, row in zip(numbers.tolist(), rows):
            if target[number] == row:
                continue
            if target[number] >= 0:  # moving from another row (whose departure is applied later)
                self._unlink(number)
                self.live -= 1
            target[number] = row
            nxt[number] = head[row]
            head[row] = number
            self.live += 1

    def _unlink(self, number: int) -> None:
        """Take alias ``number`` out of its row's list."""
        row = int(self.target.data[number])
        head, nxt = self.head.data, self.next.data
        if head[row] == number:
            head[row] = nxt[number]
        else:
            at = int(head[row])
            while nxt[at] != number:
                at = int(nxt[at])
            nxt[at] = nxt[number]
        nxt[number] = -1
        self.target.data[number] = -1

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """The canonical row of each id (int64), -1 where it is not an alias here."""
        if not ids or not self.live:
            return np.full(len(ids), -1, dtype=np.int64)
        numbers = self.ids.lookup(list(ids))
        rows = np.full(len(ids), -1, dtype=np.int64)
        known = numbers >= 0
        rows[known] = self.target.data[numbers[known]]
        return rows

    def _numbers(self, row: int) -> list[int]:
        if row >= self.head.size:
            return []
        out = []
        number = int(self.head.data[row])
        while number >= 0:
            out.append(number)
            number = int(self.next.data[number])
        return out

    def aliases_of(self, row: int) -> list[str]:
        """The aliases of canonical ``row`` (newest first)."""
        return [self.ids.id_of(n) for n in self._numbers(row)]

    def drop(self, row: int) -> list[str]:
        """Forget every alias of ``row`` (it was merged away or erased); returns them."""
        numbers = self._numbers(row)
        if not numbers:
            return []
        dropped = [self.ids.id_of(n) for n in numbers]
        picks = np.array(numbers, dtype=np.int64)
        self.ids.forget(picks)
        self.target.data[picks] = -1
        self.next.data[picks] = -1
        self.head.data[row] = -1
        self.live -= len(numbers)
        return dropped

    def drop_hashes(self, row: int) -> np.ndarray:
        """``drop(row)``, returning the blake2b-64 hashes of the dropped aliases (uint64)."""
        numbers = self._numbers(row)
        hashes = self.ids.hashes_of(np.array(numbers, dtype=np.int64))
        self.drop(row)
        return hashes

    def hashes(self) -> np.ndarray:
        """The blake2b-64 hash of every alias held (uint64)."""
        return self.ids.hashes_of(np.flatnonzero(self.target.view() >= 0))

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return self.ids.nbytes + self.target.nbytes + self.next.nbytes + self.head.nbytes

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The aliases' part of a snapshot."""
        return {"ids": self.ids.to_state(writer), "target": writer.array(self.target.view()),
                "next": writer.array(self.next.view()), "head": writer.array(self.head.view()), "live": self.live}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], rows: int) -> "AliasStore":
        """The aliases of a shard of ``rows`` profiles from their part of a snapshot."""
        store = cls.__new__(cls)
        store.ids = IdMap.from_state(reader, state["ids"])
        store.target = GrowableArray.adopt(reader.array(state["target"]), -1)
        store.next = GrowableArray.adopt(reader.array(state["next"]), -1)
        store.head = GrowableArray.adopt(reader.array(state["head"]), -1)
        for part in (store.ids, store.ids.offsets, store.ids.buffer, store.target, store.next, store.head):
            part.growth = GROWTH
        store.live = int(state["live"])
        n = len(store.ids)
        target, nxt, head = store.target.data, store.next.data, store.head.data
        if not (len(target) == len(nxt) == n and len(head) <= rows
                and all(a.dtype == np.int32 for a in (target, nxt, head))
                and int((target >= 0).sum()) == store.live
                and (n == 0 or (int(target.max()) < rows and int(nxt.max()) < n))
                and (len(head) == 0 or int(head.max()) < n)
                and store.ids.forgotten == BitMap(np.flatnonzero(target < 0).tolist())):
            raise ValueError("the alias arrays do not agree")
        return store
