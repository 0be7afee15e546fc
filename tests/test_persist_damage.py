"""Damaged data directories: a torn log tail is cut back, corruption anywhere else is refused.

LMDB commits are atomic, so these damages are made from outside: log records rewritten cut
short (at every byte of the last records), bytes flipped inside records, snapshot chunks, snapshot
indexes and manifests (through LMDB and directly in the files), records, chunks and stores
removed, chunks added, swapped or cut, files cut.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import lmdb
import pytest

from engine import Engine, Schema
from engine.errors import DataCorruption
from engine.persist.chunk_store import CHUNK_BYTES
from engine.persist.framing import pack_key, unpack_key
from engine.schema import CONTRACT_SCHEMA

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
MANUAL = {"snapshot_every_s": None, "snapshot_log_bytes": None}
RECORDS = 6  # each writes two profiles r<i>-0, r<i>-1


def open_engine(path: Path, shards: int = 1) -> Engine:
    return Engine(SCHEMA, shards=shards, backend="local", data_dir=str(path), durability=MANUAL)


def make_log(path: Path, shards: int = 1, big_last: bool = False) -> None:
    with open_engine(path, shards) as engine:
        for i in range(RECORDS):
            engine.upsert_profiles([{"id": f"r{i}-0", "age": i}, {"id": f"r{i}-1", "age": i}])
        if big_last:
            engine.upsert_profiles({"id": f"big-{k:07d}", "country": f"c{k % 977}-" + "x" * 20}
                                   for k in range(70_000))


class Store:
    """Raw access to one LMDB database of a data directory (the engine must be closed)."""

    def __init__(self, path: Path, db: bytes):
        self.env = lmdb.open(str(path), max_dbs=2, map_size=1 << 30)
        self.db = self.env.open_db(db)

    def items(self) -> list[tuple[bytes, bytes]]:
        with self.env.begin(db=self.db) as txn:
            return list(txn.cursor())

    def replace(self, remove: list[bytes], put: list[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            for key in remove:
                txn.delete(key)
            for key, value in put:
                txn.put(key, value)

    def close(self) -> None:
        self.env.close()


def present(engine: Engine) -> list[int]:
    """Which of the small records are present (both profiles or neither, checked)."""
    found = []
    for i in range(RECORDS):
        count = engine.count(f"age = {i}")
        assert count in (0, 2), f"record {i} half-applied"
        if count:
            found.append(i)
    return found


def test_log_cut_at_every_byte_of_its_last_records_recovers_the_complete_ones(tmp_path: Path) -> None:
    make_log(tmp_path)
    log = Store(tmp_path / "log", b"wal")
    original = log.items()
    log.close()
    assert [unpack_key(k) for k, _ in original] == [(seq, 0) for seq in range(1, RECORDS + 1)]
    last = original[-3:]
    stream_end = sum(len(v) for _, v in last)
    for cut in range(stream_end):
        kept, partial, offset = [], None, 0
        for key, value in last:
            if offset + len(value) <= cut:
                kept.append((key, value))
            elif cut > offset:
                partial = (key, value[: cut - offset])
            offset += len(value)
        log = Store(tmp_path / "log", b"wal")
        log.replace([k for k, _ in last], kept + ([partial] if partial else []))
        log.close()
        with open_engine(tmp_path) as engine:
            assert present(engine) == list(range(RECORDS - 3 + len(kept))), f"cut at byte {cut}"
            assert engine.durable.recovery["torn_tail_cut"] == (1 if partial else 0)
            assert engine.durable.pipeline.next_seq == RECORDS - 3 + len(kept) + 1
        log = Store(tmp_path / "log", b"wal")
        assert len(log.items()) == RECORDS - 3 + len(kept)  # the torn record is gone from the log
        log.replace([], last)
        log.close()


@pytest.mark.parametrize("damage", ["drop last part", "cut inside a middle part", "keep only part 0",
                                    "cut part 0 short"])
def test_a_torn_multi_part_record_is_cut_back(tmp_path: Path, damage: str) -> None:
    make_log(tmp_path, big_last=True)
    log = Store(tmp_path / "log", b"wal")
    parts = [(k, v) for k, v in log.items() if unpack_key(k)[0] == RECORDS + 1]
    assert len(parts) >= 3
    remove = [k for k, _ in parts]
    put = {
        "drop last part": parts[:-1],
        "cut inside a middle part": parts[:1] + [(parts[1][0], parts[1][1][:5000])],
        "keep only part 0": parts[:1],
        "cut part 0 short": [(parts[0][0], parts[0][1][:11])],
    }[damage]
    log.replace(remove, put)
    log.close()
    with open_engine(tmp_path) as engine:
        assert present(engine) == list(range(RECORDS))
        assert engine.count("ALL") == 2 * RECORDS
        engine.upsert_profiles([{"id": "next", "age": 99}])  # takes the cut record's sequence number
    with open_engine(tmp_path) as engine:
        assert engine.count("age = 99") == 1 and engine.count("ALL") == 2 * RECORDS + 1


def flip(value: bytes, at: int) -> bytes:
    return value[:at] + bytes([value[at] ^ 0x5A]) + value[at + 1 :]


@pytest.mark.parametrize("at", [0, 3, 4, 9, 12, -1])
def test_a_flipped_byte_in_a_middle_record_is_refused(tmp_path: Path, at: int) -> None:
    make_log(tmp_path)
    log = Store(tmp_path / "log", b"wal")
    key, value = log.items()[2]
    log.replace([], [(key, flip(value, at % len(value)))])
    log.close()
    with pytest.raises(DataCorruption, match=r"corrupted in the middle: record 3: part 0 fails its checksum"):
        open_engine(tmp_path)


def test_a_flipped_byte_in_the_last_record_counts_as_a_torn_tail(tmp_path: Path) -> None:
    make_log(tmp_path)
    log = Store(tmp_path / "log", b"wal")
    key, value = log.items()[-1]
    log.replace([], [(key, flip(value, len(value) // 2))])
    log.close()
    with open_engine(tmp_path) as engine:
        assert present(engine) == list(range(RECORDS - 1))


def test_a_missing_middle_record_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path)
    log = Store(tmp_path / "log", b"wal")
    log.replace([pack_key(4, 0)], [])
    log.close()
    with pytest.raises(DataCorruption, match=r"record 4: records 4\.\.4 are missing"):
        open_engine(tmp_path)


def flip_in_file(path: Path, needle: bytes, offset: int) -> None:
    """Flip a bit ``offset`` bytes into every occurrence of ``needle`` in the file.

    (Copy-on-write leaves stale copies of a value in freed pages; flipping those is harmless.)
    """
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0
    while at >= 0:
        data[at + offset] ^= 0x01
        at = data.find(needle, at + 1)
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def test_a_flipped_bit_on_disk_in_the_log_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path)
    flip_in_file(tmp_path / "log" / "data.mdb", b"r2-1", 1)
    with pytest.raises(DataCorruption, match="record 3: part 0 fails its checksum"):
        open_engine(tmp_path)


def snapshot_then_write(path: Path, shards: int = 2) -> None:
    with open_engine(path, shards) as engine:
        engine.upsert_profiles({"id": f"u{i:06d}", "age": i % 90, "country": f"c{i}"} for i in range(150_000))
        engine.snapshot()
        engine.upsert_profiles([{"id": "after", "age": 1}])


def chunks_of(path: Path, shard: int) -> Store:
    """The snapshot chunks of ``shard`` (format 3: keys (snapshot id, chunk number), chunk 0 the index)."""
    return Store(path / f"shard-{shard}", b"chunks")


def used_bytes(store: Path) -> int:
    """Bytes of an LMDB data file up to its last committed page (a snapshot store's file is as long as its map)."""
    env = lmdb.open(str(store), readonly=True, lock=False)
    try:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()


def flip_on_disk(store: Path, needle: bytes, offset: int) -> int:
    """Flip a bit ``offset`` bytes into every occurrence of ``needle`` in the used part of the
    store's data file, on disk; returns the occurrences."""
    name = store / "data.mdb"
    with open(name, "rb") as handle:
        data = bytearray(handle.read(used_bytes(store)))
    found = []
    at = data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    with open(name, "r+b") as handle:
        for at in found:
            handle.seek(at + offset)
            handle.write(bytes([data[at + offset] ^ 0x01]))
        handle.flush()
        os.fsync(handle.fileno())
    return len(found)


def snapshot_chunks(path: Path, shard: int) -> dict[int, bytes]:
    """Chunk number -> value of the one snapshot of ``shard``."""
    chunks = chunks_of(path, shard)
    items = {unpack_key(key): value for key, value in chunks.items()}
    chunks.close()
    assert {snapshot_id for snapshot_id, _ in items} == {1}
    return {number: value for (_, number), value in items.items()}


def test_a_flipped_bit_on_disk_in_a_snapshot_chunk_is_refused(tmp_path: Path) -> None:
    snapshot_then_write(tmp_path)
    chunks = snapshot_chunks(tmp_path, 1)
    assert len(chunks) > 3 and len(chunks[2]) > 2000  # the state spans several checksummed chunks
    assert all(len(value) <= CHUNK_BYTES for value in chunks.values())
    assert flip_on_disk(tmp_path / "shard-1", chunks[2], 1000) == 1  # inside chunk 2 (stored once)
    with pytest.raises(DataCorruption, match=r"snapshot 1 in .*shard-1: chunk 2 of \d+ fails its checksum"):
        open_engine(tmp_path, 2)


@pytest.mark.parametrize("damage, message", [
    ("flip a byte", r"chunk 2 of (\d+) fails its checksum"),
    ("cut it short", r"chunk 2 of (\d+) fails its checksum"),
    ("put chunk 3 in its place", r"chunk 2 of (\d+) fails its checksum"),
    ("delete it", r"chunk 2 of (\d+) is missing"),
    ("delete the last chunk", r"chunk (\d+) of \1 is missing"),
    ("add a chunk after the last", r"it has chunks past its last one \((\d+)\)"),
    ("flip a byte of the index", r"its index \(chunk 0\) fails its checksum"),
    ("delete the index", r"its index \(chunk 0\) is missing"),
])
def test_a_damaged_snapshot_chunk_is_refused(tmp_path: Path, damage: str, message: str) -> None:
    snapshot_then_write(tmp_path)
    chunks = snapshot_chunks(tmp_path, 0)
    last = max(chunks)
    assert last > 3 and len(chunks[2]) > 2000
    key = pack_key(1, 2)
    remove, put = {
        "flip a byte": ([], [(key, flip(chunks[2], len(chunks[2]) // 2))]),
        "cut it short": ([], [(key, chunks[2][:-1])]),
        "put chunk 3 in its place": ([], [(key, chunks[3])]),
        "delete it": ([key], []),
        "delete the last chunk": ([pack_key(1, last)], []),
        "add a chunk after the last": ([], [(pack_key(1, last + 1), chunks[last])]),
        "flip a byte of the index": ([], [(pack_key(1, 0), flip(chunks[0], 7))]),
        "delete the index": ([pack_key(1, 0)], []),
    }[damage]
    store = chunks_of(tmp_path, 0)
    store.replace(remove, put)
    store.close()
    expected = r"snapshot 1 in .*shard-0: " + message + "; refusing to serve"
    with pytest.raises(DataCorruption, match=expected) as error:
        open_engine(tmp_path, 2)
    found = re.search(expected, str(error.value))
    assert found is not None and all(int(count) == last for count in found.groups())  # the snapshot's chunk count


def test_a_flipped_bit_on_disk_in_a_snapshot_index_is_refused(tmp_path: Path) -> None:
    snapshot_then_write(tmp_path)
    index = snapshot_chunks(tmp_path, 0)[0]
    assert flip_on_disk(tmp_path / "shard-0", index, len(index) - 3) >= 1
    with pytest.raises(DataCorruption, match=r"snapshot 1 in .*shard-0: its index \(chunk 0\) fails its checksum"):
        open_engine(tmp_path, 2)


def test_a_missing_snapshot_store_or_damaged_manifest_is_refused(tmp_path: Path) -> None:
    snapshot_then_write(tmp_path)
    data = tmp_path / "shard-0" / "data.mdb"
    aside = tmp_path / "aside"
    data.rename(aside)
    with pytest.raises(DataCorruption, match=r"snapshot 1 in .*shard-0: its LMDB store \(data\.mdb\) is missing"):
        open_engine(tmp_path, 2)
    assert not data.exists()  # not created empty by the failed open
    aside.rename(data)
    meta = Store(tmp_path / "log", b"meta")
    key, value = next((k, v) for k, v in meta.items() if k.startswith(b"manifest"))
    meta.replace([], [(key, flip(value, len(value) - 3))])
    meta.close()
    with pytest.raises(DataCorruption, match="the manifest of snapshot 1 fails its checksum"):
        open_engine(tmp_path, 2)


@pytest.mark.parametrize("store", ["log", "shard-0"])
def test_a_data_file_cut_short_is_refused(tmp_path: Path, store: str) -> None:
    snapshot_then_write(tmp_path)
    data = tmp_path / store / "data.mdb"
    used = used_bytes(tmp_path / store)
    assert used > 100_000
    # the log's file is as long as its pages; a snapshot store's is as long as its map (sparse)
    os.truncate(data, min(data.stat().st_size, used) // 2)
    with pytest.raises(DataCorruption, match=rf"the LMDB store .*{store} is cut short"):
        open_engine(tmp_path, 2)
