"""Erasure on disk: after ``snapshot()``, no file under the data_dir holds an erased id's bytes, nor
the event ids of its events (write-ahead log, snapshot stores and their free pages included), at 1, 2
and 3 shards."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
NOW = 1_800_000_000_000


CHUNK = 1 << 24


def file_pieces(path: str, overlap: int) -> list[bytes]:
    """The data of a (possibly sparse) file in overlapping pieces; holes read as zeros and are skipped."""
    pieces = []
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        fd = handle.fileno()
        position = 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:  # no data past position
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            at = start
            while at < end:
                handle.seek(at)
                pieces.append(handle.read(min(CHUNK + overlap, end - at)))
                at += CHUNK
            position = end
    return pieces


def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """Per needle, the files under ``root`` whose bytes contain it."""
    found: dict[str, list[str]] = {}
    overlap = max(len(n) for n in needles)
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            pieces = file_pieces(path, overlap)
            for needle in needles:
                if any(needle in piece for piece in pieces):
                    found.setdefault(needle.decode(), []).append(os.path.relpath(path, root))
    return found


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_no_file_holds_an_erased_id_after_a_snapshot(tmp_path: Path, shards: int) -> None:
    erased = [f"erase-me-{i:04d}-canary" for i in range(40)]
    aliases = [f"alias-of-{i:04d}-canary" for i in range(40)]
    kept = [f"keep-me-{i:04d}-canary" for i in range(40)]
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles([{"id": pid, "age": i} for i, pid in enumerate(erased + kept)])
        engine.track_events([{"id": pid, "event": "purchase", "ts": NOW - i, "amount": 1.0,
                              "event_id": f"order-of-{pid}"} for i, pid in enumerate(erased + kept)])
        engine.snapshot()  # the erased ids are in a snapshot, then in free pages once it is replaced
        engine.track_events([{"id": alias, "event": "page_view", "ts": NOW, "event_id": f"view-by-{alias}"}
                             for alias in aliases])  # events of the aliases-to-be, merged into erased profiles
        engine.merge_many(list(zip(aliases, erased)))
        engine.snapshot()
        event_ids = [f"order-of-{pid}" for pid in erased] + [f"view-by-{alias}" for alias in aliases]
        needles = [pid.encode() for pid in erased + aliases + event_ids]
        assert files_holding(tmp_path, needles)  # the canary finds them before the erasure
        assert engine.delete_profiles(erased[:20] + aliases[20:]) == 40
        summary = engine.snapshot()
        assert summary["compacted"] is not None
        assert files_holding(tmp_path, needles) == {}
        assert set(files_holding(tmp_path, [pid.encode() for pid in kept])) == set(kept)
        assert set(files_holding(tmp_path, [f"order-of-{pid}".encode() for pid in kept])) == {
            f"order-of-{pid}" for pid in kept}
        assert engine.ids("ALL", now=NOW) == sorted(kept)
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        assert engine.ids("ALL", now=NOW) == sorted(kept)
        assert engine.count("DID(purchase)", now=NOW) == 40
        assert engine.track_events([{"id": pid, "event": "purchase", "ts": NOW, "event_id": f"order-of-{pid}"}
                                    for pid in kept]) == 0
        engine.upsert_profiles([{"id": "after-reopen"}])
    assert files_holding(tmp_path, needles) == {}


CRASHING_SNAPSHOT = """
import os, sys
from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
from engine.persist import meta
from engine.shard.local import LocalShard

data_dir, crash_at, now = sys.argv[1], sys.argv[2], int(sys.argv[3])
erased = [f"erase-me-{i:04d}-canary" for i in range(30)]
kept = [f"keep-me-{i:04d}-canary" for i in range(30)]
engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1, data_dir=data_dir)
engine.upsert_profiles([{"id": pid, "age": i} for i, pid in enumerate(erased + kept)])
engine.track_events([{"id": pid, "event": "purchase", "ts": now - i, "amount": 1.0} for i, pid in enumerate(erased + kept)])
engine.snapshot()
engine.upsert_profiles([{"id": pid, "age": 99} for pid in erased])  # a second snapshot: both stores hold them
engine.snapshot()
assert engine.delete_profiles(erased) == 30
if crash_at == "before the manifest":
    meta.put_manifest = lambda *args: os._exit(0)
else:  # after the manifest's commit, before the fresh store replaces the shard's
    LocalShard.snapshot_prune = lambda *args: os._exit(0)
engine.snapshot()
os._exit(1)
"""


@pytest.mark.parametrize("crash_at", ["before the manifest", "before the promotion"])
def test_a_crash_in_the_snapshot_after_an_erasure_brings_nothing_back(tmp_path: Path, crash_at: str) -> None:
    """The snapshot after an erasure is written into a fresh store that replaces the shard's once the
    manifest is committed. Killed before the commit, the fresh store is dropped on reopening (the
    erasure is replayed from the log); killed after it, reopening promotes the fresh store and
    compacts the log's store. Either way no erased profile comes back, and after the next snapshot
    no file holds its id."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    child = subprocess.run([sys.executable, "-c", CRASHING_SNAPSHOT, str(tmp_path), crash_at, str(NOW)],
                           cwd=root, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    fresh = tmp_path / "shard-0" / "fresh" / "data.mdb"
    assert fresh.exists()  # the crash left the fresh store behind
    erased = [f"erase-me-{i:04d}-canary".encode() for i in range(30)]
    kept = [f"keep-me-{i:04d}-canary" for i in range(30)]
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as engine:
        assert not fresh.parent.exists()  # promoted or dropped when the shard loaded
        assert engine.ids("ALL", now=NOW) == sorted(kept)
        assert engine.count("DID(purchase)", now=NOW) == 30
        assert engine.count("age = 99", now=NOW) == 0
        if crash_at == "before the promotion":  # the snapshot was committed: opening finishes its compaction
            assert files_holding(tmp_path, erased) == {}
        engine.snapshot()
        assert files_holding(tmp_path, erased) == {}
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as engine:
        assert engine.ids("ALL", now=NOW) == sorted(kept)
