"""Chosen attributes of a set of rows as plain columns (the shard's part of a member export).

``member_columns(profiles, rows, attributes)`` answers, for the live rows among ``rows``, their
ids packed in one UTF-8 buffer and one column per attribute, as NumPy arrays (no Python object
per row), so a chunk of members crosses a process boundary as a few buffers:

- category: ``values`` int32 codes into ``labels`` (the chunk's distinct values), -1 for null;
- tags: ``values`` int32 codes into ``labels`` (the chunk's distinct tag sets, each a sorted list), -1 for null;
- bool: ``values`` int8 (0, 1; -1 for null);
- int and timestamp: ``values`` int64 and ``valid`` (False for null); float: ``values`` float64 and ``valid``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .bitmaps import rows_of, to_bitmap
from .indexes import BoolIndex, CategoryIndex, TagsIndex
from .numeric import NumericIndex
from .profiles import ProfileStore


def member_columns(profiles: ProfileStore, rows: np.ndarray, attributes: list[str]) -> dict[str, Any]:
    """``{"ids": [buffer, offsets], "columns": [one per attribute]}`` of the live rows among sorted ``rows``."""
    chunk = to_bitmap(rows, assume_sorted=True) & profiles.live
    live = rows_of(chunk).astype(np.int64)
    buffer, offsets = profiles.idmap.packed(live)
    columns = [_column(profiles.indexes[name], live, chunk) for name in attributes]
    return {"ids": [buffer, offsets], "columns": columns}


def _present(rows: np.ndarray, chunk: Any, notnull: Any) -> np.ndarray:
    """Per row of ``rows`` (the sorted members of ``chunk``), True if it is in ``notnull``."""
    valid = np.zeros(len(rows), dtype=bool)
    hits = rows_of(chunk & notnull)
    valid[np.searchsorted(rows, hits)] = True
    return valid


def _coded(codes: np.ndarray, universe: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct non-negative codes (< ``universe``), codes renumbered into them with -1 kept)."""
    present = codes >= 0
    used = np.zeros(universe + 1, dtype=bool)
    used[codes[present]] = True
    renumber = np.cumsum(used, dtype=np.int32) - 1
    return np.flatnonzero(used), np.where(present, renumber[codes], -1).astype(np.int32)


def _column(index: Any, rows: np.ndarray, chunk: Any) -> dict[str, Any]:
    if isinstance(index, CategoryIndex):
        distinct, values = _coded(index.codes.data[rows], len(index.labels))
        return {"kind": "category", "values": values, "labels": [index.labels[c] for c in distinct.tolist()]}
    if isinstance(index, TagsIndex):
        distinct, values = _coded(index.column.data[rows], len(index.tagsets))
        return {"kind": "tags", "values": values, "labels": [index.sorted_labels(s) for s in distinct.tolist()]}
    if isinstance(index, BoolIndex):
        return {"kind": "bool", "values": index.column.data[rows].astype(np.int8)}
    assert isinstance(index, NumericIndex), type(index)
    values = index.column.data[rows].astype(index.dtype)
    return {"kind": index.kind, "values": values, "valid": _present(rows, chunk, index.notnull)}
