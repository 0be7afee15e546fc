"""External id <-> row map of one shard, without a Python object per profile.

Ids are stored as UTF-8 bytes in one growable buffer with int64 offsets; a row also keeps the
64-bit blake2b hash of its id (the same hash SAMPLE uses). An open-addressing table of int32
rows keyed by that hash gives lookups; numba kernels probe and insert whole batches.
About 8 (hash) + 8 (offset) + len(id) + 6-11 (table) bytes per profile.

>>> m = IdMap()
>>> m.lookup_or_insert(["a", "b", "a"])[0].tolist()
[0, 1, 0]
>>> m.lookup(["b", "zz"]).tolist(), m.id_of(1)
([1, -1], 'b')
"""
from __future__ import annotations

from hashlib import blake2b
from typing import Sequence

import numba
import numpy as np

from .growable import GrowableArray


def id_hashes(encoded: Sequence[bytes]) -> np.ndarray:
    """blake2b-64 (little-endian) of each encoded id, as uint64."""
    digests = b"".join([blake2b(item, digest_size=8).digest() for item in encoded])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _pack(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(item) for item in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


@numba.njit(cache=True)
def _probe(table, row_hash, offsets, buf, nrows, q_hash, q_off, q_buf, out, insert):
    mask = len(table) - 1
    for i in range(len(q_hash)):
        h = q_hash[i]
        slot = np.int64(h & np.uint64(mask))
        qs = q_off[i]
        qlen = q_off[i + 1] - qs
        found = -1
        while True:
            row = table[slot]
            if row < 0:
                break
            if row_hash[row] == h:
                start = offsets[row]
                if offsets[row + 1] - start == qlen:
                    same = True
                    for k in range(qlen):
                        if buf[start + k] != q_buf[qs + k]:
                            same = False
                            break
                    if same:
                        found = row
                        break
            slot = (slot + 1) & mask
        if found < 0 and insert:
            found = nrows
            row_hash[found] = h
            start = offsets[found]
            for k in range(qlen):
                buf[start + k] = q_buf[qs + k]
            offsets[found + 1] = start + qlen
            table[slot] = found
            nrows += 1
        out[i] = found
    return nrows


@numba.njit(cache=True)
def _rehash(table, row_hash, nrows):
    mask = len(table) - 1
    for row in range(nrows):
        slot = np.int64(row_hash[row] & np.uint64(mask))
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = row


class IdMap:
    """Canonical external id <-> dense row number (0, 1, 2, ... in order of first sight)."""

    MAX_LOAD = 0.7

    def __init__(self) -> None:
        self.hashes = GrowableArray(np.uint64, 0)
        self.offsets = GrowableArray(np.int64, 0)
        self.offsets.ensure(1)
        self.buffer = GrowableArray(np.uint8, 0, capacity=16384)
        self.table = np.full(1024, -1, dtype=np.int32)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _reserve(self, rows: int, nbytes: int) -> None:
        needed = self.size + rows
        if needed > self.MAX_LOAD * len(self.table):
            capacity = len(self.table)
            while needed > self.MAX_LOAD * capacity:
                capacity *= 2
            self.table = np.full(capacity, -1, dtype=np.int32)
            _rehash(self.table, self.hashes.data, self.size)
        self.hashes.ensure(needed)
        self.offsets.ensure(needed + 1)
        used = int(self.offsets.data[self.size])
        self.buffer.ensure(used + nbytes)
        # logical sizes follow the row count, not the reservation
        self.hashes.size = self.size
        self.offsets.size = self.size + 1
        self.buffer.size = used

    def lookup_or_insert(self, ids: Sequence[str], repeats: bool = False) -> tuple[np.ndarray, int]:
        """Rows of ``ids`` (int64), inserting unknown ones; also returns the row count before.

        ``repeats``: the ids likely repeat (event batches): hash each distinct id once.
        """
        if repeats and len(ids) > 4096:
            # event batches repeat ids: hash each distinct id once
            distinct: dict[str, int] = {}
            inverse = np.fromiter((distinct.setdefault(i, len(distinct)) for i in ids), dtype=np.int64, count=len(ids))
            if len(distinct) * 4 < len(ids) * 3:
                rows, before = self._lookup_or_insert(list(distinct))
                return rows[inverse], before
        return self._lookup_or_insert(ids)

    def _lookup_or_insert(self, ids: Sequence[str]) -> tuple[np.ndarray, int]:
        encoded = [item.encode("utf-8") for item in ids]
        q_hash = id_hashes(encoded)
        q_buf, q_off = _pack(encoded)
        out = np.empty(len(encoded), dtype=np.int64)
        before = self.size
        _probe(self.table, self.hashes.data, self.offsets.data, self.buffer.data, self.size,
               q_hash, q_off, q_buf, out, False)
        missing = np.flatnonzero(out < 0)
        if len(missing) == 0:
            return out, before
        if len(missing) < len(encoded):
            encoded = [encoded[i] for i in missing.tolist()]
            q_hash = q_hash[missing]
            q_buf, q_off = _pack(encoded)
        self._reserve(len(encoded), len(q_buf))
        inserted = np.empty(len(encoded), dtype=np.int64)
        self.size = int(_probe(self.table, self.hashes.data, self.offsets.data, self.buffer.data, self.size,
                               q_hash, q_off, q_buf, inserted, True))
        out[missing] = inserted
        self.hashes.size = self.size
        self.offsets.size = self.size + 1
        self.buffer.size = int(self.offsets.data[self.size])
        return out, before

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids`` (int64), -1 where unknown."""
        encoded = [item.encode("utf-8") for item in ids]
        q_buf, q_off = _pack(encoded)
        q_hash = id_hashes(encoded)
        out = np.empty(len(encoded), dtype=np.int64)
        _probe(self.table, self.hashes.data, self.offsets.data, self.buffer.data, self.size,
               q_hash, q_off, q_buf, out, False)
        return out

    def id_of(self, row: int) -> str:
        """The external id of ``row``."""
        offsets = self.offsets.data
        return bytes(self.buffer.data[offsets[row] : offsets[row + 1]]).decode("utf-8")

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """External ids of ``rows``, in the given order."""
        offsets = self.offsets.data
        raw = self.buffer.data
        blob = raw.tobytes() if len(rows) > 1000 else None
        if blob is None:
            return [bytes(raw[offsets[r] : offsets[r + 1]]).decode("utf-8") for r in rows]
        starts = offsets[rows].tolist()
        ends = offsets[np.asarray(rows) + 1].tolist()
        return [blob[s:e].decode("utf-8") for s, e in zip(starts, ends)]

    def row_hashes(self) -> np.ndarray:
        """The blake2b-64 hash of every row's id (uint64, no copy)."""
        return self.hashes.view()

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the map."""
        return self.hashes.nbytes + self.offsets.nbytes + self.buffer.nbytes + int(self.table.nbytes)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that reconstruct the map (for snapshots)."""
        return {"hashes": self.hashes.view(), "offsets": self.offsets.view(), "buffer": self.buffer.view()}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "IdMap":
        """Rebuild a map from ``state()``."""
        idmap = cls()
        idmap.hashes.replace(state["hashes"])
        idmap.offsets.replace(state["offsets"])
        idmap.buffer.replace(state["buffer"])
        idmap.size = len(state["hashes"])
        capacity = 1024
        while idmap.size > cls.MAX_LOAD * capacity:
            capacity *= 2
        idmap.table = np.full(capacity, -1, dtype=np.int32)
        _rehash(idmap.table, idmap.hashes.data, idmap.size)
        return idmap
