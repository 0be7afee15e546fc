"""Memory kept between snapshots for the copies a capture makes (so they land in warm pages).

Copying a shard's state into freshly allocated memory costs far more than the copy: every new
page faults, and on a virtual machine that hands freed memory back to its host (free page
reporting, as on this project's machines) a page touched for the first time in a while costs
about 10 us, so a fresh copy runs at ~400 MB/s against ~4 GB/s into memory the process already
holds. A ``CaptureArena`` keeps the pages of one capture for the next one: ``take`` hands out
aligned pieces of a few large anonymous mappings (slabs, populated as they are mapped:
``MAP_POPULATE`` fills new memory about twice as fast as page faults do), ``reset`` starts over at
the first slab.
Slabs a capture did not use are unmapped (``trim``), so the arena follows the size of the state.
The cost is memory: a shard keeps as much as its last capture copied (measured: 0.6 of its
snapshot's bytes). Marking the slabs MADV_FREE between snapshots (reclaimable under memory
pressure) was tried: the next capture ran at half the speed even without pressure (1.5M profiles
per shard), so the arena keeps its pages.

>>> arena = CaptureArena(slab_bytes=1 << 16)
>>> a = arena.take(100); b = arena.take(100)
>>> a.nbytes, b.ctypes.data - a.ctypes.data
(100, 128)
>>> arena.reset(); arena.take(100).ctypes.data == a.ctypes.data
True
"""
from __future__ import annotations

import mmap

import numpy as np

#: Size of an ordinary slab; a larger piece gets a slab of its own (with some room to grow).
SLAB_BYTES = 64 << 20
#: Alignment of every piece (a cache line; NumPy and numba need only the item size).
ALIGN = 64
#: Extra room given to a slab made for one large piece, so the piece may grow a little.
HEADROOM = 1 / 8
#: Slabs are populated as they are mapped: in one pass, not page fault by page fault.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class CaptureArena:
    """Reusable memory for the copies of successive captures (see the module docstring)."""

    def __init__(self, slab_bytes: int = SLAB_BYTES):
        self.slab_bytes = slab_bytes
        self.slabs: list[tuple[mmap.mmap, np.ndarray]] = []
        self.slab = 0  # the slab pieces are taken from
        self.used = 0  # bytes used in that slab
        self.taken = 0  # bytes handed out since the last reset
        self.mapped = 0  # bytes of slabs mapped since the last reset (new memory)

    def reset(self) -> None:
        """Start handing out memory from the beginning again (the previous pieces are no longer used)."""
        self.slab = self.used = self.taken = self.mapped = 0

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` in the arena's memory (contents undefined)."""
        self.taken += nbytes
        while True:
            if self.slab == len(self.slabs):
                self._map(self.slab, nbytes)
            memory = self.slabs[self.slab][1]
            start = -(-self.used // ALIGN) * ALIGN
            if start + nbytes <= len(memory):
                self.used = start + nbytes
                return memory[start : start + nbytes]
            if self.used == 0:  # an unused slab too small for this piece (the state grew): replace it
                self._map(self.slab, nbytes)
            else:
                self.slab, self.used = self.slab + 1, 0

    def _map(self, index: int, nbytes: int) -> None:
        """Map a slab big enough for ``nbytes`` at ``index`` (appended, or replacing a slab too small)."""
        size = self.slab_bytes if nbytes <= self.slab_bytes else int(nbytes * (1 + HEADROOM))
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
        self.mapped += size
        slab = (region, np.frombuffer(region, dtype=np.uint8))
        if index == len(self.slabs):
            self.slabs.append(slab)
        else:
            self.slabs[index] = slab  # the old one is unmapped once nothing refers to it

    @property
    def nbytes(self) -> int:
        """Bytes mapped by the arena."""
        return sum(len(memory) for _, memory in self.slabs)

    def trim(self) -> None:
        """Unmap the slabs the last capture did not reach."""
        del self.slabs[self.slab + 1 if self.taken else 0 :]

    def close(self) -> None:
        """Drop every slab (unmapped once no capture piece refers to it)."""
        self.slabs = []
        self.reset()
