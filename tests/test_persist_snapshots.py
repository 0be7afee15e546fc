"""Snapshots: what a capture copies and references, snapshot files (mapped, recycled), format 1.

A capture references the arrays of event runs instead of copying them, which is only correct
because the event store never changes a run in place: checked here against every kind of event
write. A loaded snapshot is a private mapping of its file: writes after a restart must not reach
the file, and a mapped file must never be recycled for a later snapshot.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


from engine import Engine, Schema
from engine.persist import meta, shard_state
from engine.persist import snapshot as snapshot_module
from engine.persist.arena import CaptureArena
from engine.persist.lmdb_env import close_env, open_env
from engine.schema import CONTRACT_SCHEMA

from test_persist import NOW, QUERIES, answers, open_engine, write_everything

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
PLAIN_QUERIES = [q for q in QUERIES if "SEGMENT" not in q]


def plain_answers(engine: Engine) -> dict[str, Any]:
    return {"counts": {q: engine.count(q, now=NOW) for q in PLAIN_QUERIES}, "profile": engine.profile("p14")}


def event_writes(engine: Engine, start: int) -> None:
    """Event writes of every shape: small batches (merged into runs), new labels past the int8
    codes (the code arrays of every run are widened), another epoch, unsorted timestamps."""
    for k in range(6):
        engine.track_events({"id": f"p{(start + i) % 350}", "event": "page_view", "ts": NOW - 7 * i - k,
                             "category": f"cat{(start + i) % 300}"} for i in range(40 * (k + 1)))
    engine.track_events({"id": f"p{i}", "event": "purchase", "ts": NOW - 60 * 86_400_000 - i, "amount": 1.5}
                        for i in range(0, 350, 3))  # 60 days back: another 2**32 ms epoch
    engine.track_events({"id": f"p{i}", "event": "cart_abandoned", "ts": NOW - (i * 7919) % 100_000,
                         "cart_value": 2.0} for i in range(500))


def test_event_runs_are_never_changed_in_place(tmp_path: Path) -> None:
    with Engine(SCHEMA, shards=1, backend="local") as engine:
        engine.clock = lambda: NOW
        write_everything(engine)
        event_writes(engine, 0)
        shard = engine.shards[0]
        arrays = list(shard_state.event_run_arrays(shard))
        assert len(arrays) > 10
        before = [(array, array.tobytes()) for array in arrays]
        write_everything(engine, 100)
        event_writes(engine, 1000)
        assert len(list(shard_state.event_run_arrays(shard))) > 10
        assert all(array.tobytes() == saved for array, saved in before)


def test_a_capture_does_not_follow_later_writes_and_reuses_its_memory(tmp_path: Path) -> None:
    with Engine(SCHEMA, shards=1, backend="local") as engine:
        engine.clock = lambda: NOW
        write_everything(engine)
        event_writes(engine, 0)
        arena = CaptureArena(slab_bytes=1 << 16)
        captured = shard_state.capture(engine.shards[0], arena)
        assert captured.referenced > 0 and captured.copied > 0  # event runs referenced, the rest copied
        expected = plain_answers(engine)
        write_everything(engine, 100)
        event_writes(engine, 1000)
        assert plain_answers(engine) != expected
        frames = [bytearray(memoryview(frame).cast("B")) for frame in captured.joined()]
        slabs = [id(region) for region, _ in arena.slabs]
        arena.reset()
        again = shard_state.capture(engine.shards[0], arena)
        assert [id(region) for region, _ in arena.slabs][: len(slabs) - 1] == slabs[:-1]  # the same memory
        assert again.nbytes > captured.nbytes
    with Engine(SCHEMA, shards=1, backend="local") as restored:
        restored.clock = lambda: NOW
        shard_state.restore(restored.shards[0], frames)
        assert plain_answers(restored) == expected


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seg_files(path: Path, shard: int = 0) -> list[str]:
    return sorted(p.name for p in (path / f"shard-{shard}").glob("*.seg"))


def test_writes_after_a_restart_do_not_reach_the_mapped_snapshot_file(tmp_path: Path) -> None:
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        event_writes(engine, 0)
        engine.snapshot()
    data = tmp_path / "shard-0" / "snap-0000000000000001.seg"
    digest = file_digest(data)
    with open_engine(tmp_path) as engine:  # the state is a private mapping of the file
        write_everything(engine, 100)  # overwrites attributes in place, merges runs, moves bitmaps
        event_writes(engine, 1000)
        expected = answers(engine)
    assert file_digest(data) == digest
    with open_engine(tmp_path) as engine:  # the snapshot verifies, the log replays on top of it
        assert engine.durable.recovery["snapshot_id"] == 1
        assert answers(engine) == expected


def test_snapshot_files_are_recycled_unless_mapped(tmp_path: Path) -> None:
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        engine.snapshot()
    assert seg_files(tmp_path) == ["snap-0000000000000001.seg"]
    with open_engine(tmp_path) as engine:  # maps snapshot 1
        expected = answers(engine)
        loaded = (tmp_path / "shard-0" / "snap-0000000000000001.seg").stat().st_ino
        engine.snapshot()
        # snapshot 1's file is mapped (by this engine): deleted, never reused
        assert seg_files(tmp_path) == ["snap-0000000000000002.seg"]
        engine.snapshot()
        assert seg_files(tmp_path) == ["snap-0000000000000003.seg", "spare.seg"]
        spare = (tmp_path / "shard-0" / "spare.seg").stat().st_ino
        assert spare != loaded
        event_writes(engine, 0)
        engine.snapshot()  # written into the spare
        assert seg_files(tmp_path) == ["snap-0000000000000004.seg", "spare.seg"]
        assert (tmp_path / "shard-0" / "snap-0000000000000004.seg").stat().st_ino == spare
        write_everything(engine, 100)
        engine.snapshot()
        expected = answers(engine)
    with open_engine(tmp_path) as engine:
        assert engine.durable.recovery["snapshot_id"] == 5
        assert answers(engine) == expected


def test_a_format_1_snapshot_still_loads_and_is_replaced(tmp_path: Path) -> None:
    with open_engine(tmp_path, 2) as engine:
        write_everything(engine)
        engine.snapshot()
        write_everything(engine, 100)
        expected = answers(engine)
        manifest = dict(engine.durable.manifest)
    # rewrite the snapshot as an engine before format 2 stored it: LMDB chunks, a format-1 part
    parts = []
    for shard, part in enumerate(manifest["parts"]):
        path = str(tmp_path / f"shard-{shard}")
        frames = [bytes(frame) for frame in snapshot_module._map_part(path, 1, part)]
        legacy = snapshot_module.ChunkStore(path)
        parts.append(legacy.write(1, frames))
        close_env(legacy.env)
        os.unlink(snapshot_module.snapshot_file(path, 1))
    env = open_env(str(tmp_path / "log"), ("wal", meta.DB))
    env.write(lambda txn: meta.put_manifest(txn, env.db(meta.DB), {**manifest, "parts": parts}))
    close_env(env)
    with open_engine(tmp_path, 2) as engine:
        assert answers(engine) == expected
        engine.snapshot()
    assert all(not (tmp_path / f"shard-{shard}" / "data.mdb").exists() for shard in (0, 1))
    with open_engine(tmp_path, 2) as engine:
        assert engine.durable.recovery["snapshot_id"] == 2
        assert answers(engine) == expected
