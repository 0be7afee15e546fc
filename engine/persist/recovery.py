"""A shard recovering itself from a data directory, and applying logged writes exactly once.

``recover_shard`` is what a shard runs when an engine opens a data directory and when a worker
process is respawned: in one read transaction of the log store it reads the layout, loads the
shard's part of the newest snapshot (from the shard's own store) and replays the log records
after it, applying only this shard's share (``engine.commands.route``). It works in whichever
process holds the shard, so shards recover in parallel.

Every logged write reaches a shard through ``apply_logged(seq, ...)``, which skips a record the
shard already has (``seq <= shard.persistence.applied_seq``). So a respawned worker, which
replays the log up to its end, is not given the same write twice by the coordinator, and a
snapshot part taken from a shard that is ahead of the manifest's sequence number replays correctly.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..errors import DataCorruption, SegengineError
from . import meta, records, snapshot
from .lmdb_env import close_env, open_env
from ..commands import SEGMENT_KINDS, SHARD_METHODS, route
from .shard_state import query_compiler
from .wal import DB as WAL_DB
from .wal import LogScan

if TYPE_CHECKING:
    from ..shard.local import LocalShard



def log_path(data_dir: str) -> str:
    """The log store of a data directory."""
    return os.path.join(data_dir, "log")


def shard_path(data_dir: str, shard_no: int) -> str:
    """The snapshot store of shard ``shard_no``."""
    return os.path.join(data_dir, f"shard-{shard_no}")


def apply_logged(shard: LocalShard, seq: int, method: str, args: tuple) -> Any:
    """Run ``shard.method(*args)`` for log record ``seq`` unless the shard already applied it."""
    if method not in SHARD_METHODS:
        raise ValueError(f"{method!r} is not a logged shard write")
    persistence = shard.persistence
    if seq <= persistence.applied_seq:
        return _already_applied(shard, method, args)
    try:
        return getattr(shard, method)(*args)
    finally:
        persistence.applied_seq = seq


def _already_applied(shard: LocalShard, method: str, args: tuple) -> Any:
    if method == "create_segment":
        return shard.segment_info(args[0])
    if method in ("delete_segment", "update_schema", "erase", "expire"):
        return None  # an erase replayed by a respawned worker: its count and aliases are not known again
    return len(args[0])


def recover_shard(shard: LocalShard, data_dir: str) -> dict[str, Any]:
    """Load ``shard`` from ``data_dir``: its newest snapshot part, then its share of the log after it."""
    data_dir = os.path.abspath(data_dir)
    persistence = shard.persistence
    if persistence.recovered_from == data_dir:
        return dict(persistence.recovery)
    began = time.perf_counter()
    info: dict[str, Any] = {"shard": shard.shard_id, "snapshot_id": None, "replayed_records": 0, "applied_seq": 0,
                            "log_end": 0, "log_bytes": 0, "torn_tail": None}
    if os.path.exists(os.path.join(log_path(data_dir), "data.mdb")):
        env = open_env(log_path(data_dir), (WAL_DB, meta.DB))
        try:
            with env.read() as txn:
                _recover_in(shard, data_dir, env, txn, info)
        finally:
            close_env(env)
    info["seconds"] = time.perf_counter() - began
    persistence.recovered_from = data_dir
    persistence.recovery = info
    return dict(info)


def _recover_in(shard: LocalShard, data_dir: str, env: Any, txn: Any, info: dict[str, Any]) -> None:
    meta_db = env.db(meta.DB)
    layout = meta.read_layout(txn, meta_db, data_dir)
    if layout is None:
        return
    meta.check_layout(layout, None, data_dir)
    schema = meta.widest_schema(layout, shard.schema, data_dir)
    shards = layout["shards"]
    if shard.shard_id >= shards:
        raise DataCorruption(f"data directory {data_dir} holds {shards} shards, not shard {shard.shard_id}")
    shard.update_schema(schema.to_dict())  # before the snapshot: its part is read into this schema
    manifest = meta.latest_manifest(txn, meta_db, data_dir)
    after = 0
    if manifest is not None:
        after = manifest["wal_seq"]
        info["log_end"] = after
        info["snapshot_id"] = manifest["id"]
        info["snapshot"] = snapshot.load(shard, shard_path(data_dir, shard.shard_id), manifest["id"],
                                         manifest["parts"][shard.shard_id])
    else:
        snapshot.prune(shard, shard_path(data_dir, shard.shard_id), [])
    scan = LogScan(txn, env.db(WAL_DB), env.path, after)
    persistence = shard.persistence
    for record in scan:
        if record.seq <= persistence.applied_seq:
            continue
        call = route(records.decode(record.kind, record.body), shards, query_compiler(shard.schema))[shard.shard_id]
        if call is None:
            continue
        try:
            apply_logged(shard, record.seq, *call)
        except SegengineError:
            if record.kind not in SEGMENT_KINDS:
                raise
            # the same change failed when it was first applied (a race between two definitions)
        info["replayed_records"] += 1
    persistence.applied_seq = max(persistence.applied_seq, scan.last)
    info.update(applied_seq=persistence.applied_seq, log_end=scan.last, log_bytes=scan.bytes,
                torn_tail=scan.torn.seq if scan.torn else None, schema=shard.schema.to_dict())
