"""Growable NumPy arrays with amortised doubling.

>>> g = GrowableArray(np.int32, fill=-1)
>>> g.ensure(3); g.data[:3]
array([-1, -1, -1], dtype=int32)
"""
from __future__ import annotations

import mmap

import numpy as np

#: Zero-filled arrays from this size up are mapped pages of their own (see ``zeroed``).
MAPPED_BYTES = 1 << 20


def zeroed(capacity: int, dtype: np.dtype | type) -> np.ndarray:
    """``capacity`` zeros whose pages are resident only once written. ``np.zeros`` does not ensure
    that: with the shard's allocator policy (``engine.store.memory``) an array under 32 MiB comes
    from the heap, whose reused free space calloc clears page by page (measured at 400K profiles: the
    id map's reserve for a merge batch made the whole 1.5x capacity resident); an anonymous mapping
    is zero pages until written. The mapping is private (``MAP_PRIVATE``; Python's default is
    shared): a process forked to write a snapshot (engine.persist.forked_writer) gets a
    copy-on-write image of it, as of all other memory, not the parent's later writes.

    >>> zeroed(3, np.int32).tolist(), zeroed(1 << 20, np.uint8).flags.writeable
    ([0, 0, 0], True)
    """
    nbytes = capacity * np.dtype(dtype).itemsize
    if nbytes < MAPPED_BYTES:
        return np.zeros(capacity, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype=dtype)


def _filled(capacity: int, fill: object, dtype: np.dtype | type) -> np.ndarray:
    """``capacity`` slots of ``fill``; zeros come from zeroed pages, resident only once written."""
    return zeroed(capacity, dtype) if fill == 0 else np.full(capacity, fill, dtype=dtype)


class GrowableArray:
    """A NumPy array whose logical length only grows; new slots hold ``fill``. A full array grows by
    ``growth`` (and 1024 slots)."""

    growth = 1.5

    def __init__(self, dtype: np.dtype | type, fill: object = 0, capacity: int = 1024, growth: float | None = None):
        if growth is not None:
            self.growth = growth
        self.fill = fill
        self.data = _filled(capacity, fill, dtype)
        self.size = 0

    def ensure(self, size: int) -> None:
        """Make rows ``[0, size)`` addressable (new rows get ``fill``)."""
        if size > len(self.data):
            capacity = max(size, int(len(self.data) * self.growth) + 1024)
            grown = _filled(capacity, self.fill, self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        if size > self.size:
            self.size = size

    def view(self) -> np.ndarray:
        """The logical part of the array (no copy)."""
        return self.data[: self.size]

    @classmethod
    def adopt(cls, values: np.ndarray, fill: object) -> "GrowableArray":
        """A growable array whose content is ``values`` (used as is, not copied)."""
        array = cls.__new__(cls)
        array.fill = fill
        array.data = values
        array.size = len(values)
        return array

    def widen_to_hold(self, largest: int) -> None:
        """Widen a signed integer array (int8 -> int16 -> int32 -> int64) so it holds values up to ``largest``.

        >>> g = GrowableArray(np.int8, fill=-1); g.ensure(2); g.widen_to_hold(200); g.data.dtype, g.data[:2]
        (dtype('int16'), array([-1, -1], dtype=int16))
        """
        for dtype in (np.int8, np.int16, np.int32, np.int64):
            if largest <= np.iinfo(dtype).max:
                break
        if np.dtype(dtype).itemsize > self.data.dtype.itemsize:
            self.data = self.data.astype(dtype)

    def replace(self, values: np.ndarray) -> None:
        """Replace the whole content (used when restoring a snapshot)."""
        self.data = np.array(values, dtype=self.data.dtype, copy=True)
        self.size = len(values)

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return int(self.data.nbytes)
