"""A shard's data as bytes frames (pickle protocol 5, arrays out of band) and back.

The state of a shard is every attribute of the ``LocalShard`` but its constructor arguments
(``schema``, ``shard_id``) and private ones (a leading underscore): the profile store (id map,
columns, bitmap indexes, consents), the event store, the saved segments, the last applied log
sequence number, and whatever data attributes are added later. ``capture`` takes it (copying
what writes change, see below), so the shard can keep changing while the frames are written;
``restore`` puts frames back into a shard.

Not stored: the schema (references to it and to its attribute and event definitions are
written by name and resolved against the live schema), the shard itself (references resolve
to the shard being restored), and the executors' caches (an ``Executor`` or ``DidEvaluator`` is
stored as its constructor arguments and rebuilt empty). Growable arrays are stored trimmed to
their logical size.

Frame 0 is the pickle stream; the others are the out-of-band buffers, in order. A captured frame
is a list of pieces (bytes-like objects, concatenated), so the pickle stream can be written
straight into reusable memory; ``restore`` takes one contiguous buffer per frame. Restoring only
resolves names in ``TRUSTED_MODULES`` (checksums catch damage; this also keeps a crafted file from
naming arbitrary callables).

What a capture copies and what it references: the event store guarantees that a run's arrays
are never changed once the run is written (``engine/store/events.py``: an append adds a new run,
a merge builds a new run from two, widening a category code dtype replaces the array in the
run's ``props``, never writes into it), so ``capture`` references the arrays of every event run
instead of copying them (about 40% of a shard's bytes), and copies every other array (columns,
the id map, membership bits... which writes change in place) into a ``CaptureArena`` whose
memory is reused from one snapshot to the next. ``tests/test_persist_snapshots.py`` checks the guarantee
(captured run buffers keep their bytes across every kind of event write).
"""
from __future__ import annotations

import pickle
import time
from typing import Any, Iterator

import numpy as np

from ..errors import DataCorruption
from ..exec.did import DidEvaluator
from ..exec.executor import Executor
from ..schema import AttrDef, EventDef
from ..store.growable import GrowableArray
from .arena import CaptureArena

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


class _Pieces:
    """A write-only stream that copies what is written into arena memory (a list of pieces)."""

    def __init__(self, arena: CaptureArena | None):
        self.arena = arena
        self.pieces: list[Any] = []
        self.nbytes = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self.arena is None:
            piece: Any = bytes(view)
        else:
            piece = self.arena.take(size)
            piece[:] = view
        self.pieces.append(piece)
        self.nbytes += size
        return size


def event_run_arrays(shard: Any) -> Iterator[np.ndarray]:
    """The arrays of every event run of ``shard`` (never changed in place: see the module docstring)."""
    events = getattr(shard, "events", None)
    for store in getattr(events, "types", {}).values():
        for runs in getattr(store, "epochs", {}).values():
            for run in runs:
                yield run.ts
                yield run.rows
                yield from run.props.values()
                yield from run.valid.values()


class _Capturer(pickle.Pickler):
    def __init__(self, stream: Any, shard: Any, copy: bool, arena: CaptureArena | None):
        super().__init__(stream, protocol=5, buffer_callback=self._keep)
        self.shard = shard
        self.schema = shard.schema
        self.copy = copy
        self.arena = arena
        self.buffers: list[Any] = []
        self.copied = 0
        self.referenced = 0
        self.copy_s = 0.0  # time spent copying out-of-band buffers
        # id -> array, held for the whole dump (so an id cannot be reused by a temporary object)
        self.frozen = {id(array): array for array in event_run_arrays(shard)} if copy else {}

    def _keep(self, buffer: pickle.PickleBuffer) -> None:
        raw = buffer.raw()
        owner = memoryview(buffer).obj
        if not self.copy or self.frozen.get(id(owner)) is owner:
            self.buffers.append(raw)
            self.referenced += raw.nbytes
            return
        began = time.perf_counter()
        source = np.frombuffer(raw, dtype=np.uint8)
        target = np.empty(len(source), dtype=np.uint8) if self.arena is None else self.arena.take(len(source))
        np.copyto(target, source)
        self.buffers.append(target)
        self.copied += raw.nbytes
        self.copy_s += time.perf_counter() - began

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
    def __init__(self, stream: Any, shard: Any, buffers: list[Any]):
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


class Capture:
    """The frames of a captured shard: ``frames[i]`` is a list of pieces (frame 0: the pickle stream)."""

    def __init__(self, frames: list[list[Any]], copied: int, referenced: int, copy_s: float = 0.0):
        self.frames = frames
        self.copied = copied
        self.referenced = referenced
        self.copy_s = copy_s

    @property
    def lengths(self) -> list[int]:
        """The byte length of every frame."""
        return [sum(memoryview(piece).nbytes for piece in pieces) for pieces in self.frames]

    @property
    def nbytes(self) -> int:
        """Bytes of all frames."""
        return sum(self.lengths)

    def joined(self) -> list[Any]:
        """One contiguous buffer per frame (copies the pieces of multi-piece frames; for tests and small states)."""
        return [pieces[0] if len(pieces) == 1 else b"".join(memoryview(p).cast("B") for p in pieces)
                for pieces in self.frames]


def capture(shard: Any, arena: CaptureArena | None = None, copy: bool = True) -> Capture:
    """The frames of ``shard``'s state, independent of later writes to the shard.

    Arrays that writes may change are copied (into ``arena`` when given, else fresh memory);
    event-run arrays, which never change, are referenced. ``copy=False`` references everything
    (the frames then follow later writes: only for a shard that is not written meanwhile).
    """
    stream = _Pieces(arena)
    capturer = _Capturer(stream, shard, copy, arena)
    capturer.dump(data_attributes(shard))
    frames = [stream.pieces, *([buffer] for buffer in capturer.buffers)]
    return Capture(frames, capturer.copied + stream.nbytes, capturer.referenced, capturer.copy_s)


class _ViewReader:
    """A read-only file over a buffer, without copying it (``io.BytesIO`` copies a memoryview)."""

    def __init__(self, buffer: Any):
        self.view = memoryview(buffer).cast("B")
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        start = self.position
        end = len(self.view) if size is None or size < 0 else min(start + size, len(self.view))
        self.position = end
        return self.view[start:end].tobytes()

    def readinto(self, target: Any) -> int:
        target = memoryview(target).cast("B")
        start = self.position
        end = min(start + len(target), len(self.view))
        target[: end - start] = self.view[start:end]
        self.position = end
        return end - start

    def readline(self, size: int = -1) -> bytes:
        start = self.position
        end = len(self.view) if size is None or size < 0 else min(start + size, len(self.view))
        at = start
        while at < end:
            found = self.view[at : min(at + 256, end)].tobytes().find(b"\n")
            if found >= 0:
                end = at + found + 1
                break
            at += 256
        self.position = end
        return self.view[start:end].tobytes()


def restore(shard: Any, frames: list[Any]) -> None:
    """Replace ``shard``'s state by the one in ``frames`` (one buffer per frame; arrays are views of
    writable buffers, so give writable ones, e.g. fresh arrays).

    An attribute the snapshot lacks (added to LocalShard after it was taken) keeps its fresh value.
    """
    state = _Restorer(_ViewReader(frames[0]), shard, list(frames[1:])).load()
    for name, value in state.items():
        setattr(shard, name, value)
