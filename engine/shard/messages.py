"""Messages between the coordinator and its shards: msgpack frames, never pickles.

A request frame is an 8-byte little-endian request id followed by msgpack ``[method, args]``;
a reply frame is the same id followed by ``[True, result]`` or ``[False, [error class name,
message, attributes]]``. Values that msgpack has no type for travel as extension types:

- plan steps, AST nodes, columnar batches, ProfileUpdate/EventRecord (``OBJECT``): the class
  name and the field values, for the registered classes of ``engine.plan.steps``,
  ``engine.query.ast``, ``engine.columns`` and ``engine.schema``;
- tuples (``TUPLE``) and sets (``SET``), so that lists, tuples and sets come back as they went;
- numpy arrays (``NDARRAY``): dtype, shape and the raw bytes;
- Roaring bitmaps (``BITMAP``): their portable ``serialize()`` bytes;
- integers outside msgpack's -2**63..2**64-1 (``BIG_INT``, a query literal such as
  ``amount > 18446744073709551616``): their decimal digits.

A plan is encoded once per Step object on the coordinator and decoded once per distinct
encoding on the shard (both sides cache).

>>> from engine.plan.steps import Pred
>>> from engine.query.ast import Compare, Now
>>> step = Pred(Compare("signup_at", ">", Now(-5)))
>>> frame = encode_request(7, "count", (step, 1000))
>>> decode_request(frame) == (7, "count", (step, 1000)), peek_method(frame)
(True, 'count')
>>> unpack(pack([2**64, -2**63 - 1]))
[18446744073709551616, -9223372036854775809]
"""
from __future__ import annotations

import dataclasses
import struct
from collections import OrderedDict
from typing import Any

import msgpack
import numpy as np
from pyroaring import BitMap, FrozenBitMap

from .. import columns, errors, schema
from ..plan import steps
from ..query import ast

TUPLE, SET, OBJECT, NDARRAY, BITMAP, FROZEN_BITMAP, FROZEN_SET, BIG_INT = 1, 2, 3, 4, 5, 6, 7, 8

#: Request ids are 8-byte little-endian unsigned ints in front of each frame.
HEADER = struct.Struct("<Q")
#: Set in a request frame's id by a background caller (engine.priority): the worker serves the
#: request at a lower OS priority. Replies carry the id without it.
BACKGROUND = 1 << 63
#: Set in a request frame's id by a view call (engine.concurrency.view_call): a view read, which a
#: worker may serve beside a view write, or a view write, whose membership switch waits for
#: ``publish_view``.
VIEW = 1 << 62


def request_header(request_id: int, background: bool, view: bool) -> bytes:
    """The id header of a request frame, with its flags."""
    return HEADER.pack(request_id | (BACKGROUND if background else 0) | (VIEW if view else 0))


def request_id(frame: bytes) -> tuple[int, bool, bool]:
    """(request id, sent by a background caller, sent by a view call) of a request frame."""
    (raw,) = HEADER.unpack_from(frame)
    return raw & ~(BACKGROUND | VIEW), bool(raw & BACKGROUND), bool(raw & VIEW)


def _registry() -> dict[str, tuple[type, tuple[str, ...]]]:
    """Class name -> (class, field names) of every value class that may cross a shard boundary."""
    found: dict[str, tuple[type, tuple[str, ...]]] = {}
    for module in (steps, ast, columns):
        for name, value in vars(module).items():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__:
                found[name] = (value, tuple(f.name for f in dataclasses.fields(value)))
    for record in (schema.ProfileUpdate, schema.EventRecord):
        found[record.__name__] = (record, tuple(record._fields))
    return found


CLASSES = _registry()


class PlanEncodings:
    """Encoded plans (msgpack extension values) per Step object (a plan is compiled once and sent many times)."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self.entries: OrderedDict[int, tuple[object, msgpack.ExtType]] = OrderedDict()

    def get(self, step: object) -> msgpack.ExtType | None:
        hit = self.entries.get(id(step))
        return hit[1] if hit is not None and hit[0] is step else None

    def put(self, step: object, encoded: msgpack.ExtType) -> None:
        self.entries[id(step)] = (step, encoded)  # the entry keeps the step alive, so its id stays unique
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


class PlanDecodings:
    """Decoded plans per encoding (the shard side of the cache)."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self.entries: dict[bytes, object] = {}

    def get(self, payload: bytes) -> object | None:
        return self.entries.get(payload)

    def put(self, payload: bytes, step: object) -> None:
        if len(self.entries) >= self.capacity:
            try:  # a worker decodes requests in several threads: another may evict the same entry
                self.entries.pop(next(iter(self.entries)), None)
            except (RuntimeError, StopIteration):
                pass
        self.entries[payload] = step


_encoded_plans = PlanEncodings()
_decoded_plans = PlanDecodings()


def _default(value: Any) -> msgpack.ExtType:
    """Encode what msgpack has no native type for (see the module docstring)."""
    kind = type(value)
    if kind is tuple:
        return msgpack.ExtType(TUPLE, pack(list(value)))
    if kind is int:  # msgpack calls back only for an int out of its range
        return msgpack.ExtType(BIG_INT, str(value).encode("ascii"))
    if kind.__name__ in CLASSES and CLASSES[kind.__name__][0] is kind:
        return msgpack.ExtType(OBJECT, _pack_object(value))
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("object arrays cannot be sent to a shard")
        array = np.ascontiguousarray(value)
        return msgpack.ExtType(NDARRAY, pack([array.dtype.str, list(array.shape), array.tobytes()]))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, FrozenBitMap):
        return msgpack.ExtType(FROZEN_BITMAP, value.serialize())
    if isinstance(value, BitMap):
        return msgpack.ExtType(BITMAP, value.serialize())
    if isinstance(value, frozenset):
        return msgpack.ExtType(FROZEN_SET, pack(list(value)))
    if isinstance(value, set):
        return msgpack.ExtType(SET, pack(list(value)))
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"cannot send a {kind.__name__} to a shard")


def _pack_object(value: Any) -> bytes:
    kind = type(value)
    names = CLASSES[kind.__name__][1]
    return pack([kind.__name__, *(getattr(value, name) for name in names)])


def _ext_hook(code: int, data: bytes) -> Any:
    if code == OBJECT:
        cached = _decoded_plans.get(data)
        if cached is not None:
            return cached
        name, *values = unpack(data)
        kind, names = CLASSES[name]
        value = kind(**dict(zip(names, values)))
        if isinstance(value, steps.Step):
            _decoded_plans.put(data, value)
        return value
    if code == TUPLE:
        return tuple(unpack(data))
    if code == NDARRAY:
        dtype, shape, raw = unpack(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if code == BITMAP:
        return BitMap.deserialize(data)
    if code == FROZEN_BITMAP:
        return FrozenBitMap.deserialize(data)
    if code == SET:
        return set(unpack(data))
    if code == FROZEN_SET:
        return frozenset(unpack(data))
    if code == BIG_INT:
        return int(data)
    return msgpack.ExtType(code, data)


def pack(value: Any) -> bytes:
    """msgpack ``value``; lists, tuples and sets are kept apart (strict types)."""
    return msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """The value of a ``pack`` encoding."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


# -- frames ------------------------------------------------------------------------------------
def encode_body(method: str, args: tuple) -> bytes:
    """The msgpack part of a request (shared by every shard of a fan-out); plans come from the cache."""
    return pack([method, [_plan(arg) if isinstance(arg, steps.Step) else arg for arg in args]])


def _plan(step: steps.Step) -> msgpack.ExtType:
    encoded = _encoded_plans.get(step)
    if encoded is None:
        encoded = msgpack.ExtType(OBJECT, _pack_object(step))
        _encoded_plans.put(step, encoded)
    return encoded


def encode_request(request_id: int, method: str, args: tuple) -> bytes:
    """A request frame."""
    return HEADER.pack(request_id) + encode_body(method, args)


def peek_method(frame: bytes) -> str:
    """The method name of a request frame, without decoding its arguments."""
    marker, size = frame[HEADER.size], frame[HEADER.size + 1]
    if marker == 0x92 and 0xA0 <= size <= 0xBF:  # [fixstr method, args]: every shard method name
        start = HEADER.size + 2
        return bytes(frame[start:start + (size & 0x1F)]).decode()
    return decode_request(frame)[1]


def decode_request(frame: bytes) -> tuple[int, str, tuple]:
    """(request id, method, args) of a request frame."""
    method, args = unpack(memoryview(frame)[HEADER.size:])
    return request_id(frame)[0], method, tuple(args)


def encode_reply(request_id: int, result: Any) -> bytes:
    """A successful reply frame."""
    return HEADER.pack(request_id) + pack([True, result])


def encode_error(request_id: int, error: BaseException) -> bytes:
    """An error reply frame: class name, message and the error's simple attributes."""
    attributes = {k: v for k, v in vars(error).items() if isinstance(v, (str, int, float, bool, type(None)))}
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return HEADER.pack(request_id) + pack([False, [type(error).__name__, message, attributes]])


def decode_reply(frame: bytes) -> tuple[int, bool, Any]:
    """(request id, ok, result or error description) of a reply frame."""
    (request_id,) = HEADER.unpack_from(frame)
    ok, result = unpack(memoryview(frame)[HEADER.size:])
    return request_id, ok, result


#: Built-in exceptions a shard may raise that are re-raised as themselves.
_BUILTIN_ERRORS = {cls.__name__: cls for cls in (ValueError, KeyError, TypeError, IndexError, LookupError,
                                                 NotImplementedError, AttributeError)}


def rebuild_error(description: list, shard_id: int) -> Exception:
    """The coordinator-side exception for a shard's error reply (same class for segengine errors)."""
    name, message, attributes = description
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.SegengineError):
        error = cls(message)
        for key, value in attributes.items():
            setattr(error, key, value)
        return error
    if name in _BUILTIN_ERRORS:
        return _BUILTIN_ERRORS[name](message)
    return errors.ShardError(f"shard {shard_id} failed: {name}: {message}")
