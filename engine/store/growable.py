"""Growable NumPy arrays with amortised doubling.

>>> g = GrowableArray(np.int32, fill=-1)
>>> g.ensure(3); g.data[:3]
array([-1, -1, -1], dtype=int32)
"""
from __future__ import annotations

import numpy as np


def _filled(capacity: int, fill: object, dtype: np.dtype | type) -> np.ndarray:
    """``capacity`` slots of ``fill``; zeros come from zeroed pages, resident only once written."""
    return np.zeros(capacity, dtype=dtype) if fill == 0 else np.full(capacity, fill, dtype=dtype)


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
