"""Damaged data directories: a torn log tail is cut back, corruption anywhere else is refused.

LMDB commits are atomic, so these damages are made from outside: log records rewritten cut
short (at every byte of the last records), bytes flipped inside records, snapshot chunks, snapshot
indexes and manifests (through LMDB and directly in the files), records and files removed, files
cut or lengthened.
"""
from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest

from engine import Engine, Schema
from engine.errors import DataCorruption
from engine.persist.framing import pack_key, unpack_key
from engine.persist.snapshot import CHUNK_BYTES
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
        self.env = lmdb.open(str(path), max_dbs=2)
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


def snapshot_file(path: Path, shard: int) -> Path:
    """The file of the one snapshot of ``shard`` (format 2: one file per shard and snapshot)."""
    files = sorted((path / f"shard-{shard}").glob("snap-*.seg"))
    assert len(files) == 1, files
    return files[0]


def flip_at(path: Path, offset: int) -> None:
    """Flip a bit of the byte at ``offset`` (negative: from the end) of the file, on disk."""
    with open(path, "r+b") as handle:
        handle.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        at = handle.tell()
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))
        handle.flush()
        os.fsync(handle.fileno())


def test_a_flipped_bit_on_disk_in_a_snapshot_chunk_is_refused(tmp_path: Path) -> None:
    snapshot_then_write(tmp_path)
    data = snapshot_file(tmp_path, 1)
    assert data.stat().st_size > CHUNK_BYTES + 4096  # the state spans several checksummed chunks
    flip_at(data, CHUNK_BYTES + 1000)  # inside chunk 2
    with pytest.raises(DataCorruption, match=r"snapshot 1 in .*shard-1: chunk 2 of \d+ fails its checksum"):
        open_engine(tmp_path, 2)


def test_a_flipped_bit_in_a_snapshot_index_is_refused(tmp_path: Path) -> None:
    snapshot_then_write(tmp_path)
    flip_at(snapshot_file(tmp_path, 0), -3)  # the index is the file's last bytes
    with pytest.raises(DataCorruption, match=r"snapshot 1 in .*shard-0: its index fails its checksum"):
        open_engine(tmp_path, 2)


def test_a_missing_snapshot_file_or_damaged_manifest_is_refused(tmp_path: Path) -> None:
    snapshot_then_write(tmp_path)
    data = snapshot_file(tmp_path, 0)
    aside = tmp_path / "aside"
    data.rename(aside)
    with pytest.raises(DataCorruption, match=r"snapshot 1 in .*shard-0: its file snap-\d+\.seg is missing"):
        open_engine(tmp_path, 2)
    aside.rename(data)
    with open(data, "ab") as handle:  # a file longer than written is refused too
        handle.write(b"x")
    with pytest.raises(DataCorruption, match=r"shard-0: snap-\d+\.seg is longer than written"):
        open_engine(tmp_path, 2)
    os.truncate(data, data.stat().st_size - 1)
    meta = Store(tmp_path / "log", b"meta")
    key, value = next((k, v) for k, v in meta.items() if k.startswith(b"manifest"))
    meta.replace([], [(key, flip(value, len(value) - 3))])
    meta.close()
    with pytest.raises(DataCorruption, match="the manifest of snapshot 1 fails its checksum"):
        open_engine(tmp_path, 2)


@pytest.mark.parametrize("store", ["log", "shard-0"])
def test_a_data_file_cut_short_is_refused(tmp_path: Path, store: str) -> None:
    snapshot_then_write(tmp_path)
    data = tmp_path / "log" / "data.mdb" if store == "log" else snapshot_file(tmp_path, 0)
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(DataCorruption, match="is cut short"):
        open_engine(tmp_path, 2)
