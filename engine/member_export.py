"""Exporting members: a saved segment's (or a query's) members with chosen attributes, in chunks.

``Engine.member_chunks(attributes, segment=..., query=...)`` takes the members once (each
shard's member rows, as bitmaps, at one clock and one state), then ``read_chunks`` reads ids and attribute
values ``CHUNK_ROWS`` rows at a time from every shard at once (``member_columns``, one
round trip per chunk per shard, each under the read share of the publish lock), so memory is
bounded by a chunk whatever the segment's size. A profile erased or merged away while the
export runs is left out; attributes are the values at the time their chunk is read. Rows come
shard by shard, in storage order (not sorted by id).

Each ``MemberChunk`` holds NumPy columns; ``engine.export_formats`` writes chunks as CSV, JSON
Lines or Parquet.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .concurrency import PublishLock
from .errors import DataError
from .schema import Schema

if TYPE_CHECKING:
    from .shard.group import ShardGroup

#: Rows read from a shard per round trip.
CHUNK_ROWS = 65_536


@dataclass
class MemberChunk:
    """Ids and attribute columns of some members (see engine.store.member_columns for the column shapes)."""

    id_buffer: np.ndarray  # uint8: the ids' UTF-8 bytes, one after the other
    id_offsets: np.ndarray  # int64: id i is id_buffer[id_offsets[i]:id_offsets[i + 1]]
    columns: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.id_offsets) - 1

    def ids(self) -> list[str]:
        """The ids as strings."""
        blob = self.id_buffer.tobytes()
        bounds = self.id_offsets.tolist()
        return [blob[bounds[i]:bounds[i + 1]].decode("utf-8") for i in range(len(self))]


def check_attributes(schema: Schema, attributes: list[str]) -> list[str]:
    """``attributes`` if each is a distinct attribute of ``schema`` (DataError naming the first that is not)."""
    seen: set[str] = set()
    for position, name in enumerate(attributes):
        if not isinstance(name, str) or name not in schema.attributes:
            raise DataError(f"unknown attribute (attribute {position + 1} of the export)", None, str(name))
        if name in seen:
            raise DataError("named twice in the export's attributes", None, name)
        seen.add(name)
    return list(attributes)


def read_chunks(shards: ShardGroup, publish: PublishLock, members: list[np.ndarray], attributes: list[str],
                chunk_rows: int = CHUNK_ROWS) -> Iterator[MemberChunk]:
    """Chunks of the members ``members`` (each shard's sorted member rows) with ``attributes``: every shard's
    next ``chunk_rows`` rows in one fan-out, each under the read share of ``publish``. The next fan-out is
    sent while the caller handles the current chunks, so the shards and the caller work at once."""

    def fetch(start: int) -> list[Any]:
        calls = [(rows[start:start + chunk_rows], attributes) if start < len(rows) else None for rows in members]
        with publish.reading():
            return shards.call_each("member_columns", calls)

    end = max((len(rows) for rows in members), default=0)
    starts = range(0, end, chunk_rows)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="member-export") as prefetch:
        pending = prefetch.submit(fetch, 0) if end else None
        for start in starts:
            assert pending is not None
            answers = pending.result()
            pending = prefetch.submit(fetch, start + chunk_rows) if start + chunk_rows < end else None
            for answer in answers:
                if answer is not None and len(answer["ids"][1]) > 1:
                    yield MemberChunk(answer["ids"][0], answer["ids"][1], answer["columns"])
