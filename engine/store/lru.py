"""An LRU helper for caches that readers in several threads fill at once.

A dict is the cache (most recently used last). Single dict operations are atomic under the
GIL, but ``del cache[next(iter(cache))]`` is two steps another thread may interleave with:
``drop_oldest`` tolerates that (the entry is gone, or the dict changed size meanwhile).

>>> cache = {1: "a", 2: "b"}
>>> drop_oldest(cache); cache
{2: 'b'}
>>> drop_oldest({})
"""
from __future__ import annotations


def drop_oldest(cache: dict) -> None:
    """Remove the least recently used entry of ``cache``, if any (safe against concurrent use)."""
    try:
        del cache[next(iter(cache))]
    except (KeyError, RuntimeError, StopIteration):
        pass

