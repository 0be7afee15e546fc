"""Encoding of logged write batches: one msgpack body per batch, decoded to what the engine applies.

Each write kind maps to an encoder and a decoder; a kind without an entry (the saved-segment
changes, whose payloads are plain data) is logged as msgpack of the payload (tuples come back
as tuples).

>>> from engine.schema import ProfileUpdate
>>> body = encode("upsert", ([ProfileUpdate("u1", {"age": 3, "interests": ("a",)}, {"email": True})], 1000))
>>> decode("upsert", body)
([ProfileUpdate(id='u1', attrs={'age': 3, 'interests': ('a',)}, consents={'email': True})], 1000)
"""
from __future__ import annotations

from typing import Any, Callable

import msgpack
import numpy as np

from ..columns import CategoryColumn, Column, EventBatch, ProfileBatch, TagsColumn, ValueColumn
from ..schema import EventRecord, ProfileUpdate


def _unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, use_list=False, raw=False, strict_map_key=False)


def _array(values: np.ndarray) -> list:
    values = np.ascontiguousarray(values)
    return [values.dtype.str, values.tobytes()]


def _from_array(packed: tuple) -> np.ndarray:
    dtype, raw = packed
    return np.frombuffer(raw, dtype=np.dtype(dtype)).copy()


def _column(column: Column) -> list:
    if isinstance(column, CategoryColumn):
        return ["category", _array(column.codes), list(column.labels)]
    if isinstance(column, TagsColumn):
        return ["tags", _array(column.offsets), _array(column.values), list(column.labels), _array(column.valid)]
    return ["value", _array(column.values), _array(column.valid)]


def _from_column(packed: tuple) -> Column:
    kind = packed[0]
    if kind == "category":
        return CategoryColumn(_from_array(packed[1]), list(packed[2]))
    if kind == "tags":
        return TagsColumn(_from_array(packed[1]), _from_array(packed[2]), list(packed[3]), _from_array(packed[4]))
    return ValueColumn(_from_array(packed[1]), _from_array(packed[2]))


def _encode_profile_batch(batch: ProfileBatch) -> Any:
    return [list(batch.ids), {name: _column(col) for name, col in batch.columns.items()},
            {name: _array(np.asarray(flags, dtype=bool)) for name, flags in batch.consents.items()}]


def _decode_profile_batch(packed: tuple) -> ProfileBatch:
    ids, columns, consents = packed
    return ProfileBatch(list(ids), {name: _from_column(col) for name, col in columns.items()},
                        {name: _from_array(flags) for name, flags in consents.items()})


def _encode_event_batch(batch: EventBatch) -> Any:
    return [batch.event, list(batch.ids), _array(np.asarray(batch.ts, dtype=np.int64)),
            {name: _column(col) for name, col in batch.props.items()}]


def _decode_event_batch(packed: tuple) -> EventBatch:
    event, ids, ts, props = packed
    return EventBatch(event, list(ids), _from_array(ts), {name: _from_column(col) for name, col in props.items()})


def _identity(payload: Any) -> Any:
    return payload


def _with_clock(encode_body: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda payload: [payload[1], encode_body(payload[0])]


def _clocked(decode_body: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda packed: (decode_body(packed[1]), packed[0])


#: kind -> (payload to msgpack-able data, unpacked data to payload); payloads as in engine.persist.routing
CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "upsert": (_with_clock(_identity), _clocked(lambda rows: [ProfileUpdate(*row) for row in rows])),
    "events": (_with_clock(_identity), _clocked(lambda rows: [EventRecord(*row) for row in rows])),
    "load_profiles": (_with_clock(_encode_profile_batch), _clocked(_decode_profile_batch)),
    "load_events": (_with_clock(_encode_event_batch), _clocked(_decode_event_batch)),
}

def encode(kind: str, payload: Any) -> bytes:
    """The log body of a write of ``kind``."""
    encoder = CODECS.get(kind, (_identity, _identity))[0]
    return msgpack.packb(encoder(payload), use_bin_type=True)


def decode(kind: str, body: bytes) -> Any:
    """The payload of a logged write of ``kind`` (as the engine applies it)."""
    decoder = CODECS.get(kind, (_identity, _identity))[1]
    return decoder(_unpack(body))
