"""Log record bodies: one msgpack body per write command, decoded back to the command.

>>> from engine.commands import Upsert
>>> from engine.schema import ProfileUpdate
>>> command = Upsert([ProfileUpdate("u1", {"age": 3, "interests": ("a",)}, {"email": True})], 1000)
>>> decode(command.kind, encode(command))
Upsert(updates=[ProfileUpdate(id='u1', attrs={'age': 3, 'interests': ('a',)}, consents={'email': True})], now=1000)
"""
from __future__ import annotations

import json
from typing import Any, Callable

import msgpack
import numpy as np

from ..columns import CategoryColumn, Column, EventBatch, ProfileBatch, TagsColumn, ValueColumn
from ..commands import (AddDestination, Command, CreateSegment, DeleteSegment, Erase, Expire, LoadEvents, LoadProfiles, Merge, Track, UpdateSchema,
                        RemoveDestination, Upsert)
from ..shard import messages
from ..schema import EventRecord, ProfileUpdate


def _unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, use_list=False, raw=False, strict_map_key=False)


def _array(values: np.ndarray) -> list:
    values = np.ascontiguousarray(values)
    # packed as a msgpack bin straight from the array's memory: the bytes of ``tobytes()``, not a copy of them
    return [values.dtype.str, memoryview(values.reshape(-1)).cast("B")]


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
    packed = [batch.event, list(batch.ids), _array(np.asarray(batch.ts, dtype=np.int64)),
              {name: _column(col) for name, col in batch.props.items()}]
    if batch.event_ids is not None:
        packed.append(list(batch.event_ids))
    return packed


def _decode_event_batch(packed: tuple) -> EventBatch:
    event, ids, ts, props = packed[:4]
    event_ids = list(packed[4]) if len(packed) > 4 else None  # records without the column have no event ids
    return EventBatch(event, list(ids), _from_array(ts), {name: _from_column(col) for name, col in props.items()},
                      event_ids)


#: command kind -> (command to msgpack-able data, unpacked data to command); the bodies of the
#: data commands are [now, records or batch], of the segment commands their fields in order.
CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    Upsert.kind: (lambda c: [c.now, c.updates],
                  lambda p: Upsert([ProfileUpdate(*row) for row in p[1]], p[0])),
    Track.kind: (lambda c: [c.now, c.events],
                 lambda p: Track([EventRecord(*row) for row in p[1]], p[0])),
    LoadProfiles.kind: (lambda c: [c.now, _encode_profile_batch(c.batch)],
                        lambda p: LoadProfiles(_decode_profile_batch(p[1]), p[0])),
    LoadEvents.kind: (lambda c: [c.now, _encode_event_batch(c.batch)],
                      lambda p: LoadEvents(_decode_event_batch(p[1]), p[0])),
    CreateSegment.kind: (lambda c: [c.name, c.query, c.now, c.replace],
                         lambda p: CreateSegment(p[0], p[1], p[2], bool(p[3]))),
    DeleteSegment.kind: (lambda c: [c.name], lambda p: DeleteSegment(p[0])),
    UpdateSchema.kind: (lambda c: [json.dumps(c.spec, sort_keys=True)], lambda p: UpdateSchema(json.loads(p[0]))),
    Merge.kind: (lambda c: [c.now, messages.pack(c.steps)], lambda p: Merge(messages.unpack(p[1]), p[0])),
    Erase.kind: (lambda c: [c.now, list(c.ids)], lambda p: Erase(list(p[1]), p[0])),
    Expire.kind: (lambda c: [c.now], lambda p: Expire(p[0])),
    AddDestination.kind: (lambda c: [c.name, c.segment, c.url, c.secret, json.dumps(c.options, sort_keys=True), c.now],
                          lambda p: AddDestination(p[0], p[1], p[2], p[3], json.loads(p[4]), p[5])),
    RemoveDestination.kind: (lambda c: [c.name], lambda p: RemoveDestination(p[0])),
}


#: msgpack's starting buffer; a batch's body is sized up front instead (``_body_size``), so the
#: packer does not grow a buffer of tens of MB by copying it over and over.
PACK_BUFFER = 1 << 18


def _body_size(command: Command) -> int:
    """About the size of the body of ``command`` (over rather than under): its arrays' bytes and 24
    bytes per id."""
    batch = getattr(command, "batch", None)
    if batch is None:
        return PACK_BUFFER
    columns = batch.columns if isinstance(batch, ProfileBatch) else batch.props
    arrays = [array for column in columns.values() for array in vars(column).values() if isinstance(array, np.ndarray)]
    if isinstance(batch, ProfileBatch):
        arrays += [np.asarray(flags) for flags in batch.consents.values()]
    else:
        arrays.append(np.asarray(batch.ts))
    return PACK_BUFFER + 24 * len(batch.ids) + sum(array.nbytes for array in arrays)


def encode(command: Command) -> bytes:
    """The log body of ``command`` (its kind is stored beside it)."""
    return msgpack.Packer(use_bin_type=True, buf_size=_body_size(command)).pack(CODECS[command.kind][0](command))


def decode(kind: str, body: bytes) -> Command:
    """The command of a log record of ``kind``."""
    codec = CODECS.get(kind)
    if codec is None:
        raise ValueError(f"unknown log record kind {kind!r}")
    return codec[1](_unpack(body))
