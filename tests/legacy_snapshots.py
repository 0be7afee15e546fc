"""Writing snapshot parts the way engines of formats 1 and 3 did (pickles), to test refusal and migration.

The pickler is the one those engines used (protocol 5, NumPy buffers out of band, the schema, the
shard, its attribute and event definitions and growable arrays as calls of placeholders named in
``engine.persist.shard_state``), and the data attributes are the ones a ``LocalShard`` had then.
"""
from __future__ import annotations

import io
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lmdb
import msgpack
import numpy as np

from engine.exec.did import DidEvaluator
from engine.exec.executor import Executor
from engine.persist import chunk_store, meta
from engine.persist import shard_state as placeholder_module
from engine.persist.framing import MAX_VALUE, checksum, crc32, pack_key, seal
from engine.persist.lmdb_env import close_env, open_env
from engine.schema import AttrDef, EventDef
from engine.store.growable import GrowableArray

PLACEHOLDERS = ("_schema_ref", "_shard_ref", "_attribute_ref", "_event_ref", "_growable")


def _placeholder(name: str) -> Any:
    def placeholder(*args: Any) -> None:
        raise AssertionError("a placeholder is never called")

    placeholder.__name__ = placeholder.__qualname__ = name
    placeholder.__module__ = placeholder_module.__name__
    return placeholder


@contextmanager
def placeholders() -> Iterator[dict[str, Any]]:
    """The placeholder functions, findable by pickle under their old module while the context lasts."""
    made = {name: _placeholder(name) for name in PLACEHOLDERS}
    for name, function in made.items():
        setattr(placeholder_module, name, function)
    try:
        yield made
    finally:
        for name in made:
            delattr(placeholder_module, name)


class _LegacyPickler(pickle.Pickler):
    def __init__(self, stream: Any, shard: Any, refs: dict[str, Any]):
        super().__init__(stream, protocol=5, buffer_callback=self.buffers_append)
        self.shard, self.schema, self.refs = shard, shard.schema, refs
        self.buffers: list[bytes] = []

    def buffers_append(self, buffer: pickle.PickleBuffer) -> None:
        self.buffers.append(bytes(buffer.raw()))

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is GrowableArray:
            return self.refs["_growable"], (obj.data[: obj.size], obj.fill)
        if obj is self.schema:
            return self.refs["_schema_ref"], ()
        if obj is self.shard:
            return self.refs["_shard_ref"], ()
        if type(obj) is Executor:
            return Executor, (obj.store, obj.events, obj.segments)
        if type(obj) is DidEvaluator:
            return DidEvaluator, (obj.events,)
        if type(obj) is EventDef and self.schema.events.get(obj.name) == obj:
            return self.refs["_event_ref"], (obj.name,)
        if type(obj) is AttrDef and self.schema.attributes.get(obj.name) == obj:
            return self.refs["_attribute_ref"], (obj.name,)
        return NotImplemented


def legacy_frames(shard: Any) -> list[bytes]:
    """The frames of ``shard`` as a format-1/3 part: the pickle stream of its data attributes, then its buffers."""
    attributes = {"profiles": shard.profiles, "events": shard.events, "did": shard.did, "executor": shard.executor,
                  "saved": shard.saved, "segments": shard.segments, "applied_seq": shard.persistence.applied_seq}
    stream = io.BytesIO()
    with placeholders() as refs:
        pickler = _LegacyPickler(stream, shard, refs)
        pickler.dump(attributes)
    return [stream.getvalue(), *pickler.buffers]


def write_legacy_part(path: Path, snapshot_id: int, frames: list[bytes], fmt: int) -> dict[str, int]:
    """Store ``frames`` as snapshot ``snapshot_id`` in the shard store ``path`` (replacing its snapshots) as an
    engine of format ``fmt`` did: format 3 as ``ChunkStore.write`` cuts chunks, format 1 in chunks of
    exactly MAX_VALUE and without a format in the part."""
    store = chunk_store.ChunkStore(str(path))
    try:
        store.delete(set())
        if fmt == 3:
            return store.write(snapshot_id, [[np.frombuffer(frame, dtype=np.uint8)] for frame in frames], fmt=3)
    finally:
        store.close()
    data = b"".join(frames)
    bodies = [data[at : at + MAX_VALUE] for at in range(0, len(data), MAX_VALUE)]
    crcs = [checksum(pack_key(snapshot_id, n), body) for n, body in enumerate(bodies, start=1)]
    index = seal(pack_key(snapshot_id, 0), msgpack.packb([1, [len(frame) for frame in frames], crcs]))
    env = lmdb.open(str(path), max_dbs=1, map_size=1 << 30)
    with env.begin(write=True, db=env.open_db(b"chunks")) as txn:
        for n, body in enumerate(bodies, start=1):
            txn.put(pack_key(snapshot_id, n), body)
        txn.put(pack_key(snapshot_id, 0), index)
    env.close()
    return {"chunks": len(crcs), "bytes": len(data), "index_crc": crc32(index)}


def rewrite_manifest(path: Path, parts: list[dict[str, Any]]) -> None:
    """Replace the parts of the current manifest of data directory ``path``."""
    env = open_env(str(path / "log"), ("wal", meta.DB))
    with env.read() as txn:
        manifest = meta.latest_manifest(txn, env.db(meta.DB), str(path))
    env.write(lambda txn: meta.put_manifest(txn, env.db(meta.DB), {**manifest, "parts": parts}))
    close_env(env)
