"""Reading snapshot parts of formats 1 and 3 (pickles of a shard's attributes), for ``migrate`` only.

Those formats stored every data attribute of the ``LocalShard`` (``profiles``, ``events``,
``did``, ``executor``, ``saved``, ``segments``, ``applied_seq``) with pickle protocol 5: frame 0
the pickle stream, the other frames its out-of-band buffers (NumPy arrays) in order. The schema,
the shard, attribute and event definitions and growable arrays were written as calls of
placeholders in ``engine.persist.shard_state`` (``_schema_ref``, ``_shard_ref``,
``_attribute_ref``, ``_event_ref``, ``_growable``), resolved here against the shard being restored.

Unpickling runs what the stream names, so names are only resolved from ``TRUSTED_MODULES`` (a
sanity guard, not a sandbox): only an operator's ``segengine migrate DIR`` reads these parts, once,
on a data directory they trust; the engine refuses them.
"""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataCorruption
from ..store.growable import GrowableArray

if TYPE_CHECKING:
    from ..shard.local import LocalShard

#: Modules whose classes and functions a legacy part may name (anything else is refused).
TRUSTED_MODULES = ("engine.", "numpy", "pyroaring", "builtins", "collections", "copyreg")
#: The module the placeholders of a legacy part are named in.
PLACEHOLDER_MODULE = "engine.persist.shard_state"
#: The shard attributes a legacy part holds, besides ``applied_seq``.
SHARD_ATTRIBUTES = frozenset({"profiles", "events", "did", "executor", "saved", "segments"})


class _Restorer(pickle.Unpickler):
    def __init__(self, stream: Any, shard: LocalShard, buffers: list[Any]):
        super().__init__(stream, buffers=buffers)
        self.shard = shard
        self.schema = shard.schema

    def find_class(self, module: str, name: str) -> Any:
        if module == PLACEHOLDER_MODULE:
            placeholders = {"_schema_ref": lambda: self.schema, "_shard_ref": lambda: self.shard,
                            "_event_ref": lambda event: self.schema.events[event],
                            "_attribute_ref": lambda attribute: self.schema.attributes[attribute],
                            "_growable": GrowableArray.adopt}
            if name in placeholders:
                return placeholders[name]
        if not module.startswith(TRUSTED_MODULES):
            raise DataCorruption(f"a snapshot refers to {module}.{name}, outside the modules a shard's state uses")
        return super().find_class(module, name)


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
        found = self.view[start:end].tobytes().find(b"\n")
        if found >= 0:
            end = start + found + 1
        self.position = end
        return self.view[start:end].tobytes()


def restore_legacy(shard: LocalShard, frames: list[np.ndarray]) -> None:
    """Replace ``shard``'s data by the legacy part in ``frames`` (fresh writable buffers, one per frame)."""
    state = _Restorer(_ViewReader(frames[0]), shard, list(frames[1:])).load()
    unknown = set(state) - SHARD_ATTRIBUTES - {"applied_seq"}
    if unknown:
        raise DataCorruption(f"a legacy snapshot holds shard attributes this engine does not have: {sorted(unknown)}")
    shard.persistence.applied_seq = int(state.pop("applied_seq", 0))
    for name, value in state.items():
        setattr(shard, name, value)
