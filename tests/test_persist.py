"""Durability: Engine(..., data_dir=D) restores every acknowledged write when reopened.

Covers the write kinds (upserts, events, columnar loads, saved segments), snapshots and log
truncation, the layout checks, group commit, snapshots taken while writing, map growth, stale
LMDB reader slots and worker processes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import numpy as np
import pytest

from engine import Engine, Schema
from engine.columns import CategoryColumn, EventBatch, ProfileBatch, ValueColumn
from engine.errors import DataDirMismatch, SegmentExists, ShardError
from engine.persist import chunk_store, snapshot
from engine.persist.framing import checksum, pack_key, unpack_key, unseal
from engine.schema import CONTRACT_SCHEMA

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
NOW = 1_800_000_000_000
MANUAL = {"snapshot_every_s": None, "snapshot_log_bytes": None}
QUERIES = [
    "ALL", "country = 'FR'", "age BETWEEN 20 AND 40", "interests HAS 'tech'", "CONSENTED(email)",
    "vip IS NULL", "DID(page_view)", "DID(purchase WHERE amount > 10, COUNT >= 2)", "SEGMENT('adults')",
    "SEGMENT('fr_adults')", "NOT SEGMENT('adults') AND DID(cart_abandoned)",
]


def open_engine(path: Path, shards: int = 1, backend: str = "local", **options: Any) -> Engine:
    engine = Engine(SCHEMA, shards=shards, backend=backend, data_dir=str(path), durability={**MANUAL, **options})
    engine.clock = lambda: NOW
    return engine


def event(i: int) -> dict:
    record = {"id": f"p{i % 350}", "ts": NOW - 1000 * i}
    if i % 3 == 0:
        return {**record, "event": "page_view", "category": "shoes"}
    if i % 3 == 1:
        return {**record, "event": "purchase", "amount": float(i % 40)}
    return {**record, "event": "cart_abandoned", "cart_value": 3.5}


def write_everything(engine: Engine, start: int = 0) -> None:
    """Every write kind, with overwrites, nulls, tags, consents and segment changes."""
    engine.upsert_profiles({"id": f"p{i}", "country": ["FR", "DE", "BE"][i % 3], "age": i % 70,
                            "interests": ["tech", "books"][: i % 3], "consent": {"email": i % 2 == 0},
                            "vip": True if i % 5 == 0 else None} for i in range(start, start + 300))
    engine.upsert_profiles({"id": f"p{i}", "age": None, "country": "IT"} for i in range(start, start + 300, 7))
    engine.track_events(event(i) for i in range(start, start + 900))
    ids = [f"q{start + i}" for i in range(50)]
    engine.load_profiles(ProfileBatch(ids, {"age": ValueColumn(np.arange(50), np.ones(50, bool)),
                                            "country": CategoryColumn(np.zeros(50, np.int32), ["NL"])},
                                      {"email": np.ones(50, bool)}))
    engine.load_events(EventBatch("purchase", ids, np.full(50, NOW - 5, np.int64),
                                  {"amount": ValueColumn(np.full(50, 99.0), np.ones(50, bool))}))
    if "adults" not in engine.catalog:
        engine.create_segment("adults", "age >= 18")
        engine.create_segment("fr_adults", "SEGMENT('adults') AND country = 'FR'")
        engine.create_segment("gone", "age < 3")
        engine.delete_segment("gone")
    else:
        engine.create_segment("adults", "age >= 21", replace=True)


def answers(engine: Engine) -> dict[str, Any]:
    return {"counts": {q: engine.count(q, now=NOW) for q in QUERIES},
            "ids": {q: engine.ids(q, now=NOW) for q in QUERIES[1:4]},
            "segments": [(s["name"], s["query"], s["count"]) for s in engine.list_segments()],
            "profile": engine.profile("p14")}


def in_memory_answers(rounds: int) -> dict[str, Any]:
    with Engine(SCHEMA, shards=1, backend="local") as memory:
        memory.clock = lambda: NOW
        for r in range(rounds):
            write_everything(memory, 100 * r)
        return answers(memory)


@pytest.mark.parametrize("shards", [1, 2])
def test_reopen_restores_every_write_kind_from_the_log_then_from_a_snapshot(tmp_path: Path, shards: int) -> None:
    with open_engine(tmp_path, shards) as engine:
        write_everything(engine)
        assert answers(engine) == in_memory_answers(1)
    with open_engine(tmp_path, shards) as engine:  # log replay only
        assert engine.durable.recovery["snapshot_id"] is None
        assert answers(engine) == in_memory_answers(1)
        engine.snapshot()
        write_everything(engine, 100)
    with open_engine(tmp_path, shards) as engine:  # snapshot + log after it
        assert engine.durable.recovery["snapshot_id"] == 1
        assert answers(engine) == in_memory_answers(2)
        assert sorted(engine.catalog.defs) == ["adults", "fr_adults"]
        with pytest.raises(SegmentExists):
            engine.create_segment("adults", "ALL")


def log_keys(path: Path) -> list[tuple[int, int]]:
    env = lmdb.open(str(path / "log"), max_dbs=2, readonly=True, lock=False)
    try:
        with env.begin(db=env.open_db(b"wal", create=False)) as txn:
            return [unpack_key(key) for key in txn.cursor().iternext(values=False)]
    finally:
        env.close()


def shard_chunks(path: Path, shard: int = 0) -> dict[tuple[int, int], bytes]:
    """Every (snapshot id, chunk number) -> value of a shard's LMDB store (the engine must be closed)."""
    env = lmdb.open(str(path / f"shard-{shard}"), max_dbs=1, readonly=True, lock=False)
    try:
        with env.begin(db=env.open_db(chunk_store.DB.encode(), create=False)) as txn:
            return {unpack_key(key): value for key, value in txn.cursor()}
    finally:
        env.close()


def snapshot_index(path: Path, part: dict, snapshot_id: int, shard: int = 0) -> tuple[int, list[int]]:
    """(frames, chunk CRCs) from the index (chunk 0) of a format-4 part, checked against the part and the chunks."""
    chunks = shard_chunks(path, shard)
    key = pack_key(snapshot_id, 0)
    fmt, lengths, crcs = msgpack.unpackb(unseal(key, chunks[(snapshot_id, 0)]))
    assert fmt == part["format"] == 4 and sum(lengths) == part["bytes"] and len(crcs) == part["chunks"]
    assert sorted(chunks) == [(snapshot_id, n) for n in range(len(crcs) + 1)]  # no other snapshot, no gap
    bodies = [chunks[(snapshot_id, n)] for n in range(1, len(crcs) + 1)]
    assert all(len(body) <= chunk_store.CHUNK_BYTES <= 1 << 20 for body in bodies)
    assert sum(map(len, bodies)) == part["bytes"]
    assert [checksum(pack_key(snapshot_id, n), body) for n, body in enumerate(bodies, start=1)] == crcs
    return len(lengths), crcs


def test_snapshot_truncates_the_log_and_is_checksummed_by_the_megabyte(tmp_path: Path) -> None:
    with open_engine(tmp_path) as engine:
        ids = [f"u{i}" for i in range(300_000)]
        engine.load_profiles(ProfileBatch(ids, {"age": ValueColumn(np.arange(300_000) % 90, np.ones(300_000, bool))}))
        engine.upsert_profiles([{"id": "last", "age": 1}])
        summary = engine.snapshot()
        engine.upsert_profiles([{"id": "after", "age": 2}])
        assert summary["wal_seq"] == 2 and summary["id"] == 1
        part = engine.durable.manifest["parts"][0]
    assert [seq for seq, part in log_keys(tmp_path)] == [3]
    frames, crcs = snapshot_index(tmp_path, part, 1)
    assert len(crcs) == part["chunks"] > 5
    full = -(-part["bytes"] // chunk_store.CHUNK_BYTES)
    assert full <= len(crcs) <= full + frames  # a chunk is short only before a large piece of a frame, or last
    with open_engine(tmp_path) as engine:
        assert engine.count("ALL") == 300_002
        assert engine.count("age = 89") == len(range(89, 300_000, 90))
        engine.snapshot()
    # only the newest snapshot is kept
    assert {snapshot_id for snapshot_id, _ in shard_chunks(tmp_path)} == {2}


def test_a_write_larger_than_a_value_spans_several_log_parts(tmp_path: Path) -> None:
    records = [{"id": f"user-with-a-long-id-{i:08d}", "country": f"country-{i % 1000}"} for i in range(60_000)]
    with open_engine(tmp_path) as engine:
        engine.upsert_profiles(records)
    parts = [part for seq, part in log_keys(tmp_path) if seq == 1]
    assert len(parts) >= 3
    with open_engine(tmp_path) as engine:
        assert engine.count("ALL") == 60_000
        assert engine.count("country = 'country-7'") == 60


def test_reopening_with_another_schema_or_shard_count_or_twice_is_refused(tmp_path: Path) -> None:
    with open_engine(tmp_path, 2) as engine:
        engine.upsert_profiles([{"id": "u1", "age": 3}])
        with pytest.raises(DataDirMismatch, match="in use by another engine"):
            open_engine(tmp_path, 2)
    other = dict(CONTRACT_SCHEMA, attributes=dict(CONTRACT_SCHEMA["attributes"], age={"type": "float"}))
    with pytest.raises(DataDirMismatch, match=r"written with a schema that this one does not extend \(schema change "
                                              r"refused: attribute 'age' changes type from int to float"):
        Engine(Schema.from_dict(other), shards=2, backend="local", data_dir=str(tmp_path))
    with pytest.raises(DataDirMismatch, match=r"holds 2 shards; open it with shards=2"):
        open_engine(tmp_path, 3)
    assert Schema.from_file(tmp_path / "schema.json").to_dict() == SCHEMA.to_dict()
    with open_engine(tmp_path, 2) as engine:  # the refusals left it intact
        assert engine.count("age = 3") == 1


def test_concurrent_writers_share_fsyncs_and_all_survive(tmp_path: Path) -> None:
    threads, writes = 8, 25
    with open_engine(tmp_path) as engine:
        def writer(t: int) -> None:
            for i in range(writes):
                engine.upsert_profiles([{"id": f"t{t}-{i}", "age": t}])

        workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert engine.durable.pipeline.next_seq == threads * writes + 1
        assert engine.durable.pipeline.commits < threads * writes
    with open_engine(tmp_path) as engine:
        assert [engine.count(f"age = {t}") for t in range(threads)] == [writes] * threads


@pytest.mark.parametrize("writer", ["fork", "thread"])
def test_writes_are_acknowledged_while_a_snapshot_is_being_written(tmp_path: Path, monkeypatch, writer: str) -> None:
    writing = tmp_path / "writing"  # a file: the forked child that writes a part shares no memory with the test
    original = chunk_store.ChunkStore._chunks

    def slow_chunks(self: Any, frames: Any) -> Any:
        for chunk in original(self, frames):
            writing.touch()
            time.sleep(0.5)
            yield chunk

    monkeypatch.setattr(chunk_store.ChunkStore, "_chunks", slow_chunks)
    monkeypatch.setattr(snapshot, "WRITER", writer)
    with open_engine(tmp_path / "data", 2) as engine:
        engine.upsert_profiles({"id": f"before{i}", "age": 1} for i in range(100))
        taker = threading.Thread(target=engine.snapshot)
        taker.start()
        deadline = time.monotonic() + 5
        while not writing.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writing.exists()
        for i in range(20):
            assert engine.upsert_profiles([{"id": f"during{i}", "age": 2}]) == 1
        assert taker.is_alive()  # the 20 writes were acknowledged before the snapshot finished
        taker.join()
        assert engine.durable.manifest["wal_seq"] == 1
        engine.upsert_profiles([{"id": "after", "age": 3}])
    with open_engine(tmp_path / "data", 2) as engine:
        assert [engine.count(f"age = {a}") for a in (1, 2, 3)] == [100, 20, 1]
        assert engine.durable.recovery["snapshot_id"] == 1


def test_snapshots_are_taken_when_the_log_grows(tmp_path: Path) -> None:
    with open_engine(tmp_path, snapshot_log_bytes=20_000) as engine:
        for i in range(20):
            engine.upsert_profiles({"id": f"u{i}-{k}", "age": i} for k in range(100))
        deadline = time.monotonic() + 10
        while engine.durable.manifest is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.durable.manifest is not None
    with open_engine(tmp_path) as engine:
        assert engine.count("ALL") == 2000


def test_the_map_grows_when_full(tmp_path: Path) -> None:
    with open_engine(tmp_path, map_size=1 << 20) as engine:
        for i in range(10):
            engine.upsert_profiles({"id": f"u{i}-{k}", "country": "x" * 40} for k in range(2000))
        assert engine.durable.env.env.info()["map_size"] > 1 << 20
    with open_engine(tmp_path) as engine:
        assert engine.count("ALL") == 20_000


def lmdb_process(log: Path, script: str) -> subprocess.Popen:
    """A process that opens the log store and runs ``script`` (stdin/stdout are pipes)."""
    code = f"import lmdb, sys, time\nenv = lmdb.open({str(log)!r}, max_dbs=2)\n" + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_reader_slots_of_dead_processes_are_cleared(tmp_path: Path) -> None:
    with open_engine(tmp_path) as engine:
        engine.upsert_profiles([{"id": "u1"}])
    # a live process keeps the lock file in use, so the dead reader's slot is not reset by a fresh open
    keeper = lmdb_process(tmp_path / "log", """
        print("open", flush=True)
        sys.stdin.readline()
        print(repr(env.readers()), flush=True)
        time.sleep(60)
    """)
    try:
        assert keeper.stdout.readline() == "open\n"
        holder = lmdb_process(tmp_path / "log", """
            txn = env.begin()
            print("reading", flush=True)
            time.sleep(60)
        """)
        assert holder.stdout.readline() == "reading\n"
        holder.kill()
        holder.wait()
        keeper.stdin.write("readers?\n")
        keeper.stdin.flush()
        assert f" {holder.pid} " in eval(keeper.stdout.readline())  # the dead reader's stale slot
        with open_engine(tmp_path) as engine:  # opening runs reader_check()
            assert f" {holder.pid} " not in engine.durable.env.env.readers()
            assert engine.count("ALL") == 1
    finally:
        keeper.kill()
        keeper.wait()


def test_worker_processes_recover_and_snapshot_themselves(tmp_path: Path) -> None:
    with open_engine(tmp_path, 2, backend="process") as engine:
        write_everything(engine)
        expected = answers(engine)
        engine.snapshot()
        write_everything(engine, 100)
        expected_after = answers(engine)
    assert expected == in_memory_answers(1) and expected_after == in_memory_answers(2)
    with open_engine(tmp_path, 2, backend="process") as engine:
        assert answers(engine) == expected_after
        assert [s["snapshot_id"] for s in engine.durable.recovery["shards"]] == [1, 1]


def test_a_killed_worker_is_reloaded_and_no_write_is_lost(tmp_path: Path) -> None:
    with open_engine(tmp_path, 2, backend="process") as engine:
        engine.upsert_profiles({"id": f"a{i}", "age": 1} for i in range(200))
        engine.snapshot()
        engine.track_events({"id": f"a{i}", "event": "page_view", "ts": NOW - 10} for i in range(200))
        for victim in (0, 1):
            os.kill(engine.shards[victim].pid, signal.SIGKILL)
            time.sleep(0.2)
            # the write meets the dead worker: it is respawned, reloads, and the write still lands once
            assert engine.upsert_profiles({"id": f"b{victim}-{i}", "age": 2} for i in range(100)) == 100
        assert [s.respawns for s in engine.shards] == [1, 1]
        assert engine.count("age = 1") == 200 and engine.count("age = 2") == 200
        assert engine.count("DID(page_view, COUNT = 1)", now=NOW) == 200
        # a worker respawned by a failed query is reloaded before the next write reaches it
        os.kill(engine.shards[1].pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(ShardError):
            engine.count("ALL")
        # the respawned worker reloaded itself before serving: a read alone sees every write
        assert engine.count("ALL") == 400 and engine.count("DID(page_view, COUNT = 1)", now=NOW) == 200
        assert engine.upsert_profiles([{"id": "c", "age": 3}]) == 1
        assert engine.count("ALL") == 401 and engine.count("DID(page_view, COUNT = 1)", now=NOW) == 200
        engine.snapshot()
    with open_engine(tmp_path, 2, backend="process") as engine:
        assert engine.count("age = 1") == 200 and engine.count("age = 2") == 200
        assert engine.count("DID(page_view, COUNT = 1)", now=NOW) == 200 and engine.count("ALL") == 401
