"""Breakdowns and overlaps of query answers on one shard, as bitmap intersection cardinalities.

``breakdown_counts(store, members, by, bins)`` counts the ``members`` (a query's answer) under
each value of attribute ``by``: the cardinality of their intersection with each value bitmap
(category, bool, tags), or with each bin's range (int, float, timestamp: the range index counts
``lo <= v < hi`` without building the range), and the members whose value is null under
``None``. Keys are returned as ``[key, count]`` pairs with a count above 0; a bin's key is its
position in ``bins``. ``overlap_counts(answers)`` is the matrix of pairwise intersection
cardinalities.

>>> from engine.schema import CONTRACT_SCHEMA, Schema
>>> from engine.store.profiles import ProfileStore
>>> from engine.schema import ProfileUpdate
>>> store = ProfileStore(Schema.from_dict(CONTRACT_SCHEMA))
>>> _ = store.apply_updates([ProfileUpdate("a", {"country": "FR", "age": 31}, {}),
...                          ProfileUpdate("b", {"country": "BE", "age": 17}, {}),
...                          ProfileUpdate("c", {}, {})])
>>> sorted(breakdown_counts(store, store.live, "country", None), key=str)
[['BE', 1], ['FR', 1], [None, 1]]
>>> breakdown_counts(store, store.live, "age", [0, 18, 65])
[[0, 1], [1, 1], [None, 1]]
>>> overlap_counts([BitMap([1, 2]), BitMap([2, 3, 4])])
[[2, 1], [1, 3]]
"""
from __future__ import annotations

from typing import Any

from pyroaring import BitMap

from ..store.indexes import BoolIndex, CategoryIndex, TagsIndex
from ..store.numeric import NumericIndex
from ..store.profiles import ProfileStore


def breakdown_counts(store: ProfileStore, members: BitMap, by: str, bins: list[int | float] | None) -> list[list[Any]]:
    """``[key, count]`` of the ``members`` per value of attribute ``by`` (see the module docstring)."""
    if not members:
        return []
    index = store.indexes[by]
    counts: list[list[Any]] = []
    if isinstance(index, NumericIndex):
        if bins is None:
            raise ValueError(f"a breakdown by {by!r} needs bins")
        for position, (lo, hi) in enumerate(zip(bins, bins[1:])):
            counts.append([position, index.count_range(lo, hi, False, True, found=members)])
    elif isinstance(index, BoolIndex):
        counts += [[False, members.intersection_cardinality(index.eq(False))],
                   [True, members.intersection_cardinality(index.eq(True))]]
    elif isinstance(index, (CategoryIndex, TagsIndex)):
        counts += [[label, members.intersection_cardinality(bitmap)]
                   for label, bitmap in zip(index.labels, index.bitmaps) if bitmap]
    else:
        raise TypeError(f"no breakdown for a {type(index).__name__}")
    counts.append([None, len(members) - members.intersection_cardinality(index.notnull)])
    return [pair for pair in counts if pair[1]]


def overlap_counts(answers: list[BitMap]) -> list[list[int]]:
    """``m[i][j]`` = the size of ``answers[i] & answers[j]`` (counted, never built)."""
    size = len(answers)
    matrix = [[0] * size for _ in range(size)]
    for i in range(size):
        matrix[i][i] = len(answers[i])
        for j in range(i + 1, size):
            same = answers[i] is answers[j]  # one query asked twice
            matrix[i][j] = matrix[j][i] = matrix[i][i] if same else answers[i].intersection_cardinality(answers[j])
    return matrix
