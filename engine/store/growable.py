"""Growable NumPy arrays with amortised doubling.

>>> g = GrowableArray(np.int32, fill=-1)
>>> g.ensure(3); g.data[:3]
array([-1, -1, -1], dtype=int32)
"""
from __future__ import annotations

import numpy as np


class GrowableArray:
    """A NumPy array whose logical length only grows; new slots hold ``fill``."""

    def __init__(self, dtype: np.dtype | type, fill: object = 0, capacity: int = 1024):
        self.fill = fill
        self.data = np.full(capacity, fill, dtype=dtype)
        self.size = 0

    def ensure(self, size: int) -> None:
        """Make rows ``[0, size)`` addressable (new rows get ``fill``)."""
        if size > len(self.data):
            capacity = max(size, int(len(self.data) * 1.5) + 1024)
            grown = np.full(capacity, self.fill, dtype=self.data.dtype)
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
