"""The coordinator's side of breakdowns and overlaps: argument checks and merging the shards' counts.

A breakdown's keys are the attribute's values (category, bool), its tags (a profile counts once
under each of its tags), or bins ``(lo, hi)`` of consecutive edges (int, float, timestamp;
``lo <= v < hi``); ``None`` counts the members whose value is null. Keys with a count of 0 are
left out. The merged dict lists bins in edge order and other keys by descending count (ties by
key), ``None`` last.

>>> from engine.schema import CONTRACT_SCHEMA, Schema
>>> schema = Schema.from_dict(CONTRACT_SCHEMA)
>>> check_breakdown(schema, "age", [0, 18, 30.5])
[0, 18, 30.5]
>>> check_breakdown(schema, "age", [18, 18])
Traceback (most recent call last):
...
engine.errors.QueryError: argument 'bins': edges must be strictly increasing, but edge 2 (18) is not above edge 1 (18)
>>> merge_breakdown([[["FR", 2], [None, 1]], [["BE", 2], ["FR", 1]]], None)
{'FR': 3, 'BE': 2, None: 1}
>>> merge_breakdown([[[1, 4]], [[0, 1], [1, 1]]], [0, 18, 30])
{(0, 18): 1, (18, 30): 5}
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Hashable, Iterable

from .errors import QueryError
from .schema import Schema

#: The attribute types a breakdown bins (the others are broken down by value).
BINNED_TYPES = ("int", "float", "timestamp")


def check_breakdown(schema: Schema, by: Any, bins: Iterable[Any] | None) -> list[int | float] | None:
    """The bins of a breakdown by ``by`` (None for an attribute broken down by value); QueryError
    naming the argument if ``by`` is not an attribute or ``bins`` do not fit it."""
    definition = schema.attributes.get(by) if isinstance(by, str) else None
    if definition is None:
        raise QueryError(f"argument 'by': unknown attribute {by!r}")
    if definition.type not in BINNED_TYPES:
        if bins is not None:
            raise QueryError(f"argument 'bins': only int, float and timestamp attributes take bins, and {by!r} "
                             f"is a {definition.type} attribute")
        return None
    if bins is None:
        raise QueryError(f"argument 'bins': a breakdown by {by!r} ({'an' if definition.type == 'int' else 'a'} {definition.type} attribute) needs bins: "
                         f"at least 2 strictly increasing edges")
    edges: list[int | float] = []
    for position, edge in enumerate(bins, 1):
        if isinstance(edge, bool) or not isinstance(edge, numbers.Real) or not math.isfinite(edge):
            raise QueryError(f"argument 'bins': edge {position} is not a finite number: {edge!r}")
        edge = int(edge) if isinstance(edge, numbers.Integral) else float(edge)
        if isinstance(edge, int) and not -2**63 <= edge < 2**63:
            raise QueryError(f"argument 'bins': edge {position} is outside the 64-bit integer range: {edge}")
        edges.append(edge)
    if len(edges) < 2:
        raise QueryError(f"argument 'bins': give at least 2 edges (a bin is [lo, hi) between consecutive "
                         f"edges), not {len(edges)}")
    for position in range(1, len(edges)):
        if not edges[position] > edges[position - 1]:
            raise QueryError(f"argument 'bins': edges must be strictly increasing, but edge {position + 1} "
                             f"({edges[position]!r}) is not above edge {position} ({edges[position - 1]!r})")
    return edges


def merge_breakdown(parts: list[list[list[Any]]], bins: list[int | float] | None) -> dict[Hashable, int]:
    """The shards' ``[key, count]`` lists summed into one dict (bin positions become ``(lo, hi)``)."""
    totals: dict[Any, int] = {}
    for part in parts:
        for key, count in part:
            totals[key] = totals.get(key, 0) + count
    null = totals.pop(None, 0)
    if bins is not None:
        merged: dict[Hashable, int] = {(bins[k], bins[k + 1]): totals[k] for k in sorted(totals)}
    else:
        merged = dict(sorted(totals.items(), key=lambda item: (-item[1], str(type(item[0])), item[0])))
    if null:
        merged[None] = null
    return {key: count for key, count in merged.items() if count}


def merge_overlap(parts: list[list[list[int]]], size: int) -> list[list[int]]:
    """The shards' overlap matrices summed."""
    matrix = [[0] * size for _ in range(size)]
    for part in parts:
        for i, row in enumerate(part):
            for j, count in enumerate(row):
                matrix[i][j] += count
    return matrix
