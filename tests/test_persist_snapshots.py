"""Snapshots: what a capture copies and references, the chunk store, format 2 refused.

A capture references the arrays of event runs instead of copying them, which is only correct
because the event store never changes a run in place: checked here against every kind of event
write. A snapshot lives in the shard's LMDB store: how frames are cut into chunks, a map that
grows (with writemap), pages of deleted snapshots reused, a loaded snapshot independent of the
store (writes after a restart must not reach it), format 2 refused (formats 1 and 3, and format 4
itself: tests/test_persist_format.py).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import Engine, Schema
from engine.errors import DataDirMismatch
from engine.persist import chunk_store, shard_state, snapshot
from engine.persist.arena import CaptureArena
from engine.persist.forked_writer import ForkedSnapshotJob
from engine.persist.framing import unpack_key
from engine.persist.lmdb_env import close_env, open_env
from engine.schema import CONTRACT_SCHEMA
from engine.store import growable

from legacy_snapshots import rewrite_manifest
from test_persist import NOW, QUERIES, answers, open_engine, shard_chunks as stored, write_everything

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


@pytest.mark.parametrize("writer", ["fork", "thread"])
def test_a_part_is_written_at_a_lower_os_priority(tmp_path: Path, writer: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The child or thread writing a part lowers its nice value by WRITER_NICE (capped at 19); the
    serving threads keep theirs."""
    monkeypatch.setattr(snapshot, "WRITER", writer)
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        before = os.getpriority(os.PRIO_PROCESS, 0)
        engine.snapshot()
        assert engine.shards[0].persistence.job.nice == min(before + snapshot.WRITER_NICE, 19)
        assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_a_capture_past_its_copy_budget_is_written_before_the_next_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With less memory than the copy needs (here a budget of 0 bytes), a capture references what it
    would copy and the part is written before the snapshot call returns (writers wait meanwhile):
    the snapshot holds exactly the state of its log position, and later writes replay on top
    (the thread writer's fallback: a forked child's memory is its own)."""
    monkeypatch.setattr(snapshot, "WRITER", "thread")
    monkeypatch.setenv("SEGENGINE_SNAPSHOT_COPY_BUDGET", "0")
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        event_writes(engine, 0)
        expected = plain_answers(engine)
        summary = engine.snapshot()
        assert engine.shards[0].persistence.job.thread is None  # written in the capture call
        assert summary["in_place"] == [1]
        after_snapshot = plain_answers(engine)
        assert after_snapshot == expected
        write_everything(engine, 100)
        later = plain_answers(engine)
        snapshot_id, part = engine.durable.manifest["id"], engine.durable.manifest["parts"][0]
    monkeypatch.delenv("SEGENGINE_SNAPSHOT_COPY_BUDGET")
    check_part_and_log(tmp_path, snapshot_id, part, expected, later)


def check_part_and_log(path: Path, snapshot_id: int, part: dict[str, Any], expected: dict[str, Any],
                       later: dict[str, Any]) -> None:
    """The part alone restores ``expected`` (the state it captured); reopening replays the log to ``later``."""
    store = snapshot.ShardStore(str(path / "shard-0"))
    frames = store.read(snapshot_id, part)
    store.close()
    with Engine(SCHEMA, shards=1, backend="local") as restored:
        restored.clock = lambda: NOW
        shard_state.restore(restored.shards[0], frames)
        assert plain_answers(restored) == expected
    with open_engine(path) as reopened:
        assert plain_answers(reopened) == later


def slow_part_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every snapshot part waits ``seconds`` before it is written (in the forked child too: it inherits the patch)."""
    write = chunk_store.ChunkStore.write

    def slow(store: chunk_store.ChunkStore, *args: Any, **kwargs: Any) -> dict[str, int]:
        time.sleep(seconds)
        return write(store, *args, **kwargs)

    monkeypatch.setattr(chunk_store.ChunkStore, "write", slow)


@pytest.mark.parametrize("mapped", [False, True])
def test_a_forked_part_holds_the_state_of_its_fork(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapped: bool) -> None:
    """The child writes the memory as it was at the fork: writes applied while it writes (attributes
    overwritten in place, runs merged, bitmaps changed, a merge's source id forgotten) do not reach
    the part; they replay from the log. ``mapped``: every zero-filled array is a mapping of its own
    (``growable.zeroed``, as the id map's and the latest times' arrays are at scale)."""
    monkeypatch.setattr(snapshot, "WRITER", "fork")
    if mapped:
        monkeypatch.setattr(growable, "MAPPED_BYTES", 0)
    slow_part_writes(monkeypatch, 0.5)
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        event_writes(engine, 0)
        expected = plain_answers(engine)
        summaries: list[dict[str, Any]] = []
        writer = threading.Thread(target=lambda: summaries.append(engine.snapshot()))
        writer.start()
        while engine.shards[0].persistence.job is None:
            time.sleep(0.005)
        job = engine.shards[0].persistence.job
        assert isinstance(job, ForkedSnapshotJob) and job.status() is None  # the child is writing
        write_everything(engine, 100)
        event_writes(engine, 1000)
        engine.merge("p14", "p15")
        later = plain_answers(engine)
        writer.join()
        assert summaries[0]["forked"] == [1] and later != expected
        snapshot_id, part = engine.durable.manifest["id"], engine.durable.manifest["parts"][0]
    check_part_and_log(tmp_path, snapshot_id, part, expected, later)


def test_a_failed_fork_writes_the_part_from_a_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory() -> int:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(snapshot, "WRITER", "fork")
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        expected = answers(engine)
        monkeypatch.setattr(os, "fork", no_memory)
        assert engine.snapshot()["forked"] == [0]
        monkeypatch.undo()
    with open_engine(tmp_path) as engine:
        assert engine.durable.recovery["snapshot_id"] == 1
        assert answers(engine) == expected


KILLED_PARENT = """
import sys, time
sys.path[:0] = {paths!r}
from engine.persist import chunk_store, snapshot
from test_persist import open_engine, write_everything
write = chunk_store.ChunkStore.write
chunk_store.ChunkStore.write = lambda *a, **k: (time.sleep(600), write(*a, **k))[1]
snapshot.WRITER = "fork"
with open_engine({path!r}) as engine:
    write_everything(engine)
    import threading
    threading.Thread(target=engine.snapshot, daemon=True).start()
    while engine.shards[0].persistence.job is None:
        time.sleep(0.01)
    print(engine.shards[0].persistence.job.pid, flush=True)
    time.sleep(600)
"""


def test_the_child_writing_a_part_exits_with_its_killed_parent(tmp_path: Path) -> None:
    """kill -9 of the process holding the shard: its snapshot child exits too (it releases the shard
    directory), and the data directory recovers every acknowledged write from the log."""
    paths = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT.format(paths=paths, path=str(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not Path(f"/proc/{child}").exists()
    finally:
        parent.kill()
        parent.stdout.close()
    with open_engine(tmp_path) as engine:
        expected_engine = Engine(SCHEMA, shards=1, backend="local")
        expected_engine.clock = lambda: NOW
        write_everything(expected_engine)
        assert engine.durable.recovery["snapshot_id"] is None
        assert answers(engine) == answers(expected_engine)
        expected_engine.close()


def used_bytes(path: Path, shard: int = 0) -> int:
    """Bytes of a shard store's data file up to its last page (the store may be open in this process)."""
    env = open_env(str(path / f"shard-{shard}"), (chunk_store.DB,), writemap=True)
    try:
        return env.used_bytes()
    finally:
        close_env(env)


def test_frames_are_cut_into_chunks_and_the_map_grows(tmp_path: Path) -> None:
    chunk = chunk_store.CHUNK_BYTES
    big = np.arange(3 * chunk // 8 + 100, dtype=np.int64)  # 3 chunks and 800 bytes
    frames: list[list[Any]] = [[b"ab", memoryview(b"c" * 5000)], [big], [b"tail", bytearray(b"x" * (chunk - 4))], []]
    store = chunk_store.ChunkStore(str(tmp_path), map_size=1 << 20)  # filled by the first snapshot: grown
    try:
        part = store.write(7, frames)
        assert store.env.env.info()["map_size"] >= 4 * chunk
        with store.env.read() as txn:
            values = {unpack_key(k): bytes(v) for k, v in txn.cursor(db=store.db)}
        # a piece of at least a chunk starts a chunk (its full chunks are slices of it), the rest is joined
        assert [len(values[(7, n)]) for n in range(1, part["chunks"] + 1)] == [5002, chunk, chunk, chunk, chunk, 800]
        assert part == {"format": 4, "chunks": 6, "bytes": 5002 + big.nbytes + chunk, "index_crc": part["index_crc"]}
        read = store.read(7, part)
        assert [bytes(frame) for frame in read] == [b"ab" + b"c" * 5000, big.tobytes(), b"tail" + b"x" * (chunk - 4),
                                                     b""]
        assert all(frame.flags.writeable for frame in read)
        store.write(8, [[big]])
        assert store.snapshot_ids() == [7, 8]
        assert store.delete({8}) == 7 and store.snapshot_ids() == [8]
    finally:
        store.close()


def test_the_pages_of_deleted_snapshots_are_reused(tmp_path: Path) -> None:
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        engine.upsert_profiles({"id": f"u{i:06d}", "age": i % 90, "country": f"c{i}"} for i in range(100_000))
        engine.snapshot()
        expected = plain_answers(engine)
    assert {snapshot_id for snapshot_id, _ in stored(tmp_path)} == {1}
    one = used_bytes(tmp_path)
    sizes = []
    with open_engine(tmp_path) as engine:
        for _ in range(5):
            engine.snapshot()
            sizes.append(used_bytes(tmp_path))
    assert {snapshot_id for snapshot_id, _ in stored(tmp_path)} == {6}
    # two snapshots' worth of pages: the new one is written where the one before last was
    assert one > 3 << 20 and max(sizes) <= 2 * one + (1 << 20)
    # disk blocks reserved for each write (fallocate) past the used pages were given back
    assert (tmp_path / "shard-0" / "data.mdb").stat().st_blocks * 512 <= max(sizes) + (1 << 20)
    with open_engine(tmp_path) as engine:
        assert engine.durable.recovery["snapshot_id"] == 6
        assert plain_answers(engine) == expected


def test_a_disk_too_full_for_a_snapshot_fails_it_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(name: str, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with open_engine(tmp_path) as engine:
        write_everything(engine)
        engine.snapshot()
        monkeypatch.setattr(chunk_store, "_fallocate", full)
        write_everything(engine, 100)
        with pytest.raises(OSError, match=r"no room on disk for a snapshot of \d+ bytes in .*shard-0"):
            engine.snapshot()  # refused before anything is written into the map (no SIGBUS)
        engine.upsert_profiles([{"id": "after", "age": 3}])  # still serving and logging
        expected = answers(engine)
        monkeypatch.undo()
        assert engine.snapshot()["id"] == 2
    with open_engine(tmp_path) as engine:
        assert engine.durable.recovery["snapshot_id"] == 2
        assert answers(engine) == expected


def test_writes_after_a_restart_do_not_reach_the_loaded_snapshot(tmp_path: Path) -> None:
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        event_writes(engine, 0)
        engine.snapshot()
    snapshot = stored(tmp_path)
    with open_engine(tmp_path) as engine:  # the state is a copy of the snapshot's chunks
        write_everything(engine, 100)  # overwrites attributes in place, merges runs, moves bitmaps
        event_writes(engine, 1000)
        expected = answers(engine)
    assert stored(tmp_path) == snapshot
    with open_engine(tmp_path) as engine:  # the snapshot verifies, the log replays on top of it
        assert engine.durable.recovery["snapshot_id"] == 1
        assert answers(engine) == expected


def test_a_format_2_snapshot_is_refused(tmp_path: Path) -> None:
    with open_engine(tmp_path) as engine:
        write_everything(engine)
        engine.snapshot()
        part = engine.durable.manifest["parts"][0]
    rewrite_manifest(tmp_path, [{**part, "format": 2, "file_bytes": 1 << 20, "index_bytes": 100}])
    with pytest.raises(DataDirMismatch, match=r"snapshot 1 in .*shard-0 is in format 2, which this engine does "
                                              r"not read \(it reads format 4\)"):
        open_engine(tmp_path)
