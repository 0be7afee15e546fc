"""Partitioning: a profile lives in shard blake2b-64(id) % shards (stable across runs and Pythons).

>>> shard_of("u1", 4) == shard_of("u1", 4)
True
>>> [shard_of(i, 3) for i in ("a", "b", "ünï")] == shards_of(["a", "b", "ünï"], 3).tolist()
True
"""
from __future__ import annotations

from hashlib import blake2b
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def id_hash(profile_id: str) -> int:
    """blake2b-64 (little-endian) of the UTF-8 id: the same hash SAMPLE uses."""
    return int.from_bytes(blake2b(profile_id.encode("utf-8"), digest_size=8).digest(), "little")


def shard_of(profile_id: str, shards: int) -> int:
    """The shard that owns ``profile_id``."""
    return id_hash(profile_id) % shards if shards > 1 else 0


def shards_of(ids: Sequence[str], shards: int) -> np.ndarray:
    """The owning shard of each id (int64), hashed in one numba pass over the packed UTF-8 ids."""
    if shards <= 1:
        return np.zeros(len(ids), dtype=np.int64)
    from ..store.idmap import pack_ids, packed_hashes

    return (packed_hashes(*pack_ids(ids)) % np.uint64(shards)).astype(np.int64)


def split_by_shard(items: Iterable[T], key: Callable[[T], str], shards: int) -> list[list[T]]:
    """Group ``items`` per owning shard, keeping their order within a shard."""
    items = list(items)
    if shards <= 1:
        return [items]
    groups: list[list[T]] = [[] for _ in range(shards)]
    for item, owner in zip(items, shards_of([key(item) for item in items], shards).tolist()):
        groups[owner].append(item)
    return groups
