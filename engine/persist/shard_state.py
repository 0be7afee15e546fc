"""A shard's data as bytes frames (pickle protocol 5, arrays out of band) and back.

The state of a shard is every attribute of the ``LocalShard`` but its constructor arguments
(``schema``, ``shard_id``) and private ones (a leading underscore): the profile store (id map,
columns, bitmap indexes, consents), the event store, the saved segments, the last applied log
sequence number, and whatever data attributes are added later. ``capture`` copies it, so the
shard can keep changing while the frames are written; ``restore`` puts frames back into a shard.

Not stored: the schema (references to it and to its attribute and event definitions are
written by name and resolved against the live schema), the shard itself (references resolve
to the shard being restored), and the executors' caches (an ``Executor`` or ``DidEvaluator`` is
stored as its constructor arguments and rebuilt empty). Growable arrays are stored trimmed to
their logical size.

Frame 0 is the pickle stream; the others are the out-of-band buffers, in order. Restoring only
resolves names in ``TRUSTED_MODULES`` (checksums catch damage; this also keeps a crafted file from
naming arbitrary callables).
"""
from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from ..errors import DataCorruption
from ..exec.did import DidEvaluator
from ..exec.executor import Executor
from ..schema import AttrDef, EventDef
from ..store.growable import GrowableArray

#: Modules whose classes and functions a snapshot may name (anything else is refused on restore).
TRUSTED_MODULES = ("engine.", "numpy", "pyroaring", "builtins", "collections", "copyreg")

#: Attributes of a LocalShard that are its constructor arguments, never stored.
DERIVED = frozenset({"schema", "shard_id"})


def data_attributes(shard: Any) -> dict[str, Any]:
    """The attributes of ``shard`` that make up its stored state."""
    return {name: value for name, value in vars(shard).items() if name not in DERIVED and not name.startswith("_")}


def _schema_ref() -> None:  # placeholders resolved by _Restorer.find_class
    raise AssertionError("placeholder")


def _shard_ref() -> None:
    raise AssertionError("placeholder")


def _attribute_ref(name: str) -> None:
    raise AssertionError("placeholder")


def _event_ref(name: str) -> None:
    raise AssertionError("placeholder")


def _growable(data: np.ndarray, fill: Any) -> GrowableArray:
    array = GrowableArray.__new__(GrowableArray)
    array.fill = fill
    array.data = data
    array.size = len(data)
    return array


class _Capturer(pickle.Pickler):
    def __init__(self, stream: io.BytesIO, shard: Any, copy: bool):
        super().__init__(stream, protocol=5, buffer_callback=self._keep)
        self.shard = shard
        self.schema = shard.schema
        self.copy = copy
        self.buffers: list[Any] = []

    def _keep(self, buffer: pickle.PickleBuffer) -> None:
        raw = buffer.raw()
        self.buffers.append(np.frombuffer(raw, dtype=np.uint8).copy() if self.copy else raw)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is GrowableArray:
            return _growable, (obj.data[: obj.size], obj.fill)
        if obj is self.schema:
            return _schema_ref, ()
        if obj is self.shard:
            return _shard_ref, ()
        if type(obj) is Executor:
            return Executor, (obj.store, obj.events, obj.segments)
        if type(obj) is DidEvaluator:
            return DidEvaluator, (obj.events,)
        if type(obj) is EventDef and self.schema.events.get(obj.name) == obj:
            return _event_ref, (obj.name,)
        if type(obj) is AttrDef and self.schema.attributes.get(obj.name) == obj:
            return _attribute_ref, (obj.name,)
        return NotImplemented


class _Restorer(pickle.Unpickler):
    def __init__(self, stream: io.BytesIO, shard: Any, buffers: list[Any]):
        super().__init__(stream, buffers=buffers)
        self.shard = shard
        self.schema = shard.schema

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__:
            if name == "_schema_ref":
                return lambda: self.schema
            if name == "_shard_ref":
                return lambda: self.shard
            if name == "_event_ref":
                return lambda event: self.schema.events[event]
            if name == "_attribute_ref":
                return lambda attribute: self.schema.attributes[attribute]
        if not module.startswith(TRUSTED_MODULES):
            raise DataCorruption(f"a snapshot refers to {module}.{name}, outside the modules a shard's state uses")
        return super().find_class(module, name)


def capture(shard: Any, copy: bool = True) -> list[Any]:
    """The frames of ``shard``'s state; ``copy`` makes them independent of later changes."""
    stream = io.BytesIO()
    capturer = _Capturer(stream, shard, copy)
    capturer.dump(data_attributes(shard))
    return [stream.getbuffer(), *capturer.buffers]


def restore(shard: Any, frames: list[Any]) -> None:
    """Replace ``shard``'s state by the one in ``frames`` (writable buffers: arrays are views of them).

    An attribute the snapshot lacks (added to LocalShard after it was taken) keeps its fresh value.
    """
    state = _Restorer(io.BytesIO(frames[0]), shard, list(frames[1:])).load()
    for name, value in state.items():
        setattr(shard, name, value)
