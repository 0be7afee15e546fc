"""SAMPLE(p, seed) and BUCKET(seed): splitmix64 over the blake2b-64 hash of each canonical id.

>>> splitmix64_py(0)
16294208416658607535
"""
from __future__ import annotations

import numba
import numpy as np

from ..plan.rules import bucket_ranges

__all__ = ["bucket_ranges", "bucket_rows", "sample_threshold", "splitmix64_py"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def splitmix64_py(x: int) -> int:
    """The standard splitmix64 finaliser in plain Python (the reference)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sample_threshold(percent: float) -> int:
    """round(p * 100): the bucket count out of 10000 that is in."""
    return int(round(percent * 100))


@numba.njit(cache=True, nogil=True)
def bucket_rows(hashes, start, seed, lo, hi):
    """Rows ``r >= start`` whose bucket splitmix64(hashes[r] ^ seed) % 10000 lies in [lo, hi]."""
    out = np.empty(len(hashes) - start, dtype=np.uint32)
    n = 0
    ten_k = np.uint64(10000)
    if hi < lo:
        return out[:0]
    low = np.uint64(lo)
    high = np.uint64(hi)
    s30 = np.uint64(30)
    s27 = np.uint64(27)
    s31 = np.uint64(31)
    for row in range(start, len(hashes)):
        x = (hashes[row] ^ seed) + _GOLDEN
        x = (x ^ (x >> s30)) * _MUL1
        x = (x ^ (x >> s27)) * _MUL2
        x = x ^ (x >> s31)
        b = x % ten_k
        if b >= low and b <= high:
            out[n] = row
            n += 1
    return out[:n]
