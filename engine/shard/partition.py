"""Partitioning: a profile lives in shard blake2b-64(id) % shards (stable across runs and Pythons).

>>> shard_of("u1", 4) == shard_of("u1", 4)
True
"""
from __future__ import annotations

from hashlib import blake2b
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def id_hash(profile_id: str) -> int:
    """blake2b-64 (little-endian) of the UTF-8 id: the same hash SAMPLE uses."""
    return int.from_bytes(blake2b(profile_id.encode("utf-8"), digest_size=8).digest(), "little")


def shard_of(profile_id: str, shards: int) -> int:
    """The shard that owns ``profile_id``."""
    return id_hash(profile_id) % shards if shards > 1 else 0


def split_by_shard(items: Iterable[T], key: Callable[[T], str], shards: int) -> list[list[T]]:
    """Group ``items`` per owning shard, keeping their order within a shard."""
    groups: list[list[T]] = [[] for _ in range(shards)]
    for item in items:
        groups[shard_of(key(item), shards)].append(item)
    return groups
