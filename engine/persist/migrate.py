"""``segengine migrate DIR``: convert a data directory's snapshot from a pickle format (1 or 3) to format 4.

The engine refuses a snapshot of format 1 or 3 (pickled Python objects: loading one runs what it
names). This is the one code path that still reads them, by an operator's choice, once: with the
directory locked (no engine may have it open), each shard's part of the current snapshot is
verified and unpickled into a shard (``legacy``), captured in format 4 and written into the
shard's store as a new snapshot; then one log transaction commits a manifest for it that includes
the same log position (the log is not touched), and the old parts are deleted. A crash before the
manifest commit leaves the old snapshot current (run it again); after it, the new one.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from ..schema import Schema
from . import meta, shard_state
from .chunk_store import FORMAT, LEGACY_FORMAT, LEGACY_FORMATS
from .datadir import lock_directory
from .errors import DataDirMismatch
from .legacy import restore_legacy
from .lmdb_env import close_env, open_env
from .recovery import log_path, shard_path
from .snapshot import ShardStore
from .wal import DB as WAL_DB


def migrate(data_dir: str, say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Convert the snapshot of ``data_dir`` to format 4 in place; returns what was done.

    ``{"migrated": False, ...}`` when there is nothing to convert (no snapshot, or format 4 already).
    """
    data_dir = os.path.abspath(data_dir)
    if not os.path.exists(os.path.join(log_path(data_dir), "data.mdb")):
        raise DataDirMismatch(f"{data_dir} is not a segengine data directory (it has no log store)")
    lock = lock_directory(data_dir)
    env = open_env(log_path(data_dir), (WAL_DB, meta.DB))
    try:
        meta_db = env.db(meta.DB)
        with env.read() as txn:
            layout = meta.read_layout(txn, meta_db, data_dir)
            manifest = meta.latest_manifest(txn, meta_db, data_dir)
        if layout is None:
            raise DataDirMismatch(f"{data_dir} has no layout record: nothing to migrate")
        formats = [part.get("format", LEGACY_FORMAT) for part in manifest["parts"]] if manifest else []
        if not formats or all(fmt == FORMAT for fmt in formats):
            say(f"{data_dir}: " + (f"snapshot {manifest['id']} is in format {FORMAT} already" if manifest
                                   else "no snapshot (the log alone is read as it is)") + "; nothing to do")
            return {"migrated": False, "snapshot_id": manifest["id"] if manifest else None}
        for fmt in formats:
            if fmt not in (*LEGACY_FORMATS, FORMAT):
                raise DataDirMismatch(f"{data_dir}: snapshot {manifest['id']} has a part in format {fmt}, which "
                                      f"migrate does not read (it reads formats {', '.join(map(str, LEGACY_FORMATS))})")
        schema = Schema.from_dict(meta.schema_dict(layout))
        new_id = manifest["id"] + 1
        parts = [_migrate_part(schema, data_dir, shard_no, manifest["id"], part, new_id, say)
                 for shard_no, part in enumerate(manifest["parts"])]
        migrated = {**manifest, "id": new_id, "parts": parts, "bytes": sum(part["bytes"] for part in parts),
                    "created_ms": time.time_ns() // 1_000_000}
        env.write(lambda txn: meta.put_manifest(txn, meta_db, migrated))
        for shard_no in range(len(parts)):
            store = ShardStore(shard_path(data_dir, shard_no))
            try:
                store.prune({new_id})
            finally:
                store.close()
        say(f"{data_dir}: snapshot {manifest['id']} (formats {sorted(set(formats))}) is now snapshot {new_id} in "
            f"format {FORMAT}, at the same log position ({manifest['wal_seq']})")
        return {"migrated": True, "from_formats": sorted(set(formats)), "snapshot_id": new_id,
                "wal_seq": manifest["wal_seq"], "bytes": migrated["bytes"]}
    finally:
        close_env(env)
        lock.close()


def _migrate_part(schema: Schema, data_dir: str, shard_no: int, snapshot_id: int, part: dict[str, Any],
                  new_id: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Write shard ``shard_no``'s part of snapshot ``snapshot_id`` as part ``new_id`` in format 4."""
    from ..shard.local import LocalShard

    store = ShardStore(shard_path(data_dir, shard_no))
    try:
        fmt = part.get("format", LEGACY_FORMAT)
        frames = store.read(snapshot_id, part, formats=(*LEGACY_FORMATS, FORMAT))
        shard = LocalShard(schema, shard_no)
        if fmt == FORMAT:
            shard_state.restore(shard, frames, f"snapshot {snapshot_id} in {store.path}")
        else:
            restore_legacy(shard, frames)
        del frames
        written = store.write(new_id, shard_state.capture(shard, copy=False).frames)
        say(f"shard {shard_no}: {len(shard.profiles)} profiles, {len(shard.events)} events, "
            f"{len(shard.saved.catalog)} saved segments; {written['bytes']} bytes in format {FORMAT}")
        return written
    finally:
        store.close()
