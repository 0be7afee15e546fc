"""Snapshot format 4: every kind of shard state round-trips; a crafted part runs nothing; pickle formats
are refused on open and converted by ``segengine migrate DIR``.

Round trips are checked twice: a restored shard captures to the very same frames as the original,
and a restored engine answers like one that never stopped, also after further writes.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from pyroaring import BitMap

from engine import Engine, Schema
from engine.columns import CategoryColumn, EventBatch, ProfileBatch, TagsColumn, ValueColumn
from engine.errors import DataCorruption, DataDirMismatch
from engine.persist import chunk_store, shard_state
from engine.persist.migrate import migrate
from engine.persist.snapshot import ShardStore
from engine.shard.local import LocalShard
from server.cli import main as cli

from legacy_snapshots import legacy_frames, rewrite_manifest, write_legacy_part
from test_persist import MANUAL

NOW = 1_800_000_000_000
DAY = 86_400_000
SCHEMA = Schema.from_dict({
    "attributes": {"country": {"type": "category"}, "age": {"type": "int"}, "score": {"type": "float"},
                   "vip": {"type": "bool"}, "interests": {"type": "tags"}, "signup_at": {"type": "timestamp"},
                   "visits": {"type": "int"}},
    "events": {"view": {"properties": {"page": "category"}},
               "order": {"properties": {"amount": "float", "qty": "int", "gift": "bool", "shipped_at": "timestamp",
                                        "channel": "category"}},
               "refund": {"properties": {"amount": "float"}}},
    "consents": ["email", "sms"],
})
SEGMENTS = {
    "adults": "age >= 18",
    "fr_adults": "SEGMENT('adults') AND country = 'FR'",
    "recent_viewers": "DID(view, WITHIN 3d)",
    "new_signups": "signup_at > NOW - 30d",
    "quiet_buyers": "DID(order) AND NOT DID(view, SINCE NOW - 2d)",
}
QUERIES = [
    "ALL", "country = 'FR'", "country IN ('FR', 'BE', 'c7')", "country > 'DE'", "age BETWEEN 20 AND 40",
    "age NOT BETWEEN 20 AND 40", "age IS NULL", "score > 55.5", "score BETWEEN 10 AND 20", "vip = true",
    "vip IS NULL", "interests HAS 'tech'", "interests HAS ANY ('books', 't17')", "interests IS NULL",
    "signup_at > NOW - 10d", "visits BETWEEN 100 AND 3000", "visits = 77", "CONSENTED(email)",
    "CONSENTED(sms) AND NOT CONSENTED(email)", "DID(view)", "DID(view WHERE page = 'p3', COUNT >= 2)",
    "DID(view WHERE page IS NULL)", "DID(view WHERE page = 'p200')", "DID(order WHERE amount > 10.5)",
    "DID(order WHERE amount IS NULL)", "DID(order WHERE qty > 2)", "DID(order WHERE qty IS NULL)",
    "DID(order WHERE gift = true)", "DID(order WHERE shipped_at > NOW - 5d)", "DID(order WHERE channel = 'web')",
    "DID(refund WHERE amount > 1)", "DID(order, WITHIN 2d, AFTER LAST view)", "DID(view, COUNT = 0)",
    "DID(order, WITHIN 70d)", "SAMPLE(30, 7)", "SEGMENT('fr_adults') OR SEGMENT('quiet_buyers')",
    "SEGMENT('recent_viewers') AND NOT SEGMENT('new_signups')",
]


def open_engine(path: Path, shards: int = 2, backend: str = "local") -> Engine:
    engine = Engine(SCHEMA, shards=shards, backend=backend, data_dir=str(path), durability=MANUAL)
    engine.clock = lambda: NOW
    return engine


def write_state(engine: Engine, start: int = 0) -> None:
    """Writes of every kind: attributes of every type with nulls and overwrites, tags, consents, events of
    every type (null properties, category codes past int8, floats that stop fitting hundredths, unsorted
    times, another epoch), columnar loads, saved and time-relative segments."""
    rows = range(start, start + 400)
    engine.upsert_profiles({"id": f"p{i}", "country": ["FR", "DE", "BE", f"c{i % 9}"][i % 4], "age": i % 80,
                            "score": (i * 7.25) % 100, "vip": [True, False, None][i % 3],
                            "interests": [["tech", "books"], [], [f"t{i % 20}"], None][i % 4],
                            "signup_at": NOW - (i % 60) * DAY, "visits": (i * 37) % 5000,
                            "consent": {"email": i % 2 == 0, "sms": i % 3 == 0}} for i in rows)
    engine.upsert_profiles({"id": f"p{i}", "age": None, "country": "IT", "interests": ["tech"], "consent": {"email": False}}
                           for i in range(start, start + 400, 9))
    engine.track_events({"id": f"p{i % 400}", "event": "view", "ts": NOW - (i * 7919) % (9 * DAY),
                         **({"page": f"p{i % 300}"} if i % 7 else {}),
                         **({"event_id": f"v{i % 1000}"} if i % 3 == 0 else {})}  # some repeat: ignored
                        for i in range(start, start + 1500))
    engine.track_events({"id": f"p{i % 300}", "event": "order", "ts": NOW - (i * 104_729) % (6 * DAY),
                         **({"amount": 0.5 * (i % 90), "qty": i % 5, "gift": i % 4 == 0,
                             "shipped_at": NOW - (i % 8) * DAY, "channel": ["web", "app"][i % 2]} if i % 6 else {})}
                        for i in range(start, start + 700))
    engine.track_events({"id": f"p{i}", "event": "refund", "ts": NOW - 60 * DAY - i, "amount": 1.0 + i / 3}
                        for i in range(start, start + 120, 2))  # another 2**32 ms epoch; thirds: float64 kept
    ids = [f"q{start + i}" for i in range(60)]
    engine.load_profiles(ProfileBatch(ids, {
        "age": ValueColumn(np.arange(60), np.arange(60) % 7 != 0),
        "country": CategoryColumn(np.where(np.arange(60) % 5 == 0, -1, np.arange(60) % 2).astype(np.int32), ["NL", "FR"]),
        "interests": TagsColumn(np.arange(61, dtype=np.int64), (np.arange(60) % 2).astype(np.int32),
                                ["books", "garden"], np.arange(60) % 4 != 0)},
        {"sms": np.arange(60) % 2 == 1}))
    engine.load_events(EventBatch("order", ids, np.full(60, NOW - 5, np.int64),
                                  {"amount": ValueColumn(np.full(60, 99.0), np.ones(60, bool)),
                                   "qty": ValueColumn(np.arange(60), np.arange(60) % 3 != 0)},
                                  [f"o{i % 40}" if i % 2 else None for i in range(60)]))
    if start:
        engine.create_segment("adults", "age >= 21", replace=True)
        engine.create_segment("late", "vip = true")  # takes the slot "gone" left
    else:
        for name, query in SEGMENTS.items():
            engine.create_segment(name, query)
        engine.create_segment("gone", "age < 3")
        engine.delete_segment("gone")
    engine.count("country IN ('FR', 'BE', 'c7')")  # kept unions and ranges (not stored) asked for twice
    engine.count("country IN ('FR', 'BE', 'c7')")
    engine.count("visits BETWEEN 100 AND 3000")
    engine.count("visits BETWEEN 100 AND 3000")


def answers(engine: Engine, now: int = NOW) -> dict[str, Any]:
    return {"counts": {q: engine.count(q, now=now) for q in QUERIES},
            "ids": {q: engine.ids(q, now=now) for q in QUERIES[1:12]},
            "segments": [(s["name"], s["query"], s["count"], s["time_relative"], s["created_ms"], s["updated_ms"])
                         for s in engine.list_segments()],
            "membership": {f"p{i}": engine.membership(f"p{i}") for i in range(0, 400, 13)},
            "profiles": [engine.profile(f"p{i}") for i in (0, 9, 14, 27, 399)] + [engine.profile("q5")],
            "exports": [engine.export_profile(f"p{i}") for i in (0, 3, 9, 399)] + [engine.export_profile("q41")]}


def in_memory(rounds: int, shards: int = 2) -> Engine:
    engine = Engine(SCHEMA, shards=shards, backend="local")
    engine.clock = lambda: NOW
    for r in range(rounds):
        write_state(engine, 1000 * r)
    return engine


def frames_of(shard: LocalShard) -> list[bytes]:
    return [bytes(memoryview(frame).cast("B")) for frame in shard_state.capture(shard).joined()]


def fresh(frames: list[bytes]) -> list[np.ndarray]:
    return [np.frombuffer(bytearray(frame), dtype=np.uint8) for frame in frames]


def test_a_restored_shard_captures_to_the_same_frames() -> None:
    with in_memory(2, shards=1) as engine:
        shard = engine.shards[0]
        types = {store.definition.name: store for store in shard.events.types.values()}
        assert types["view"].runs[0].props["page"].dtype == np.int16  # codes widened past int8
        assert types["refund"].scaled == {"amount": 0} and len(types["refund"].epochs) == 1
        assert types["order"].scaled == {"amount": 100}
        assert types["view"].last_ts is not None  # AFTER LAST asked for it
        assert shard.profiles.indexes["visits"].fine is not None and shard.profiles.indexes["age"].by_value
        original = frames_of(shard)
        header = msgpack.unpackb(original[0])
        assert sorted(header) == ["applied_seq", "arrays", "bitmaps", "format", "schema", "state"]
        assert header["format"] == 4 and header["schema"] == SCHEMA.to_dict()
        assert sorted(header["state"]) == ["aliases", "event_ids", "events", "profiles", "segments"]
        assert shard.events.event_ids.live > 0
        assert len(original) == len(header["arrays"]) + 2 and len(original[-1]) == sum(header["bitmaps"])
        restored = LocalShard(SCHEMA, 0)
        assert shard_state.restore(restored, fresh(original)).to_dict() == SCHEMA.to_dict()
        assert frames_of(restored) == original
        assert restored.segments is restored.saved.bitmaps


@pytest.mark.parametrize("shards", [1, 2])
def test_every_kind_of_state_round_trips_and_keeps_evolving_alike(tmp_path: Path, shards: int) -> None:
    with open_engine(tmp_path, shards) as engine:
        write_state(engine)
        engine.snapshot()
    with open_engine(tmp_path, shards) as engine, in_memory(1, shards) as memory:
        assert engine.durable.recovery["snapshot_id"] == 1
        assert [s["replayed_records"] for s in engine.durable.recovery["shards"]] == [0] * shards
        assert answers(engine) == answers(memory)
        later = NOW + 2 * DAY  # time-relative segments move on from the restored clock
        engine.refresh_segments(later)
        memory.refresh_segments(later)
        assert answers(engine, later) == answers(memory, later)
    with open_engine(tmp_path, shards) as engine, in_memory(1, shards) as memory:
        engine.clock = lambda: later
        memory.clock = lambda: later
        write_state(engine, 1000)  # every store grows from restored arrays
        write_state(memory, 1000)
        assert answers(engine, later) == answers(memory, later)
        engine.snapshot()
    with open_engine(tmp_path, shards) as engine, in_memory(1, shards) as memory:
        memory.clock = lambda: later
        write_state(memory, 1000)
        assert answers(engine, later) == answers(memory, later)


# -- crafted parts --------------------------------------------------------------------------------
MARKER = "segengine-crafted-snapshot-ran"


class RunsCode:
    """Pickles into a stream that creates the marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> Any:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def snapshot_one_shard(path: Path) -> list[bytes]:
    with open_engine(path, 1) as engine:
        write_state(engine)
        engine.snapshot()
        return frames_of(engine.shards[0])


def replace_part(path: Path, frames: list[bytes]) -> None:
    """Store ``frames`` as the current snapshot's part of shard 0, chunks and CRCs valid."""
    store = chunk_store.ChunkStore(str(path / "shard-0"))
    try:
        store.delete(set())
        part = store.write(1, [[frame] for frame in frames])
    finally:
        store.close()
    rewrite_manifest(path, [part])


def with_header(frames: list[bytes], change: Any) -> list[bytes]:
    header = msgpack.unpackb(frames[0])
    change(header)
    return [msgpack.packb(header), *frames[1:]]


def crafted(frames: list[bytes], marker: Path, how: str) -> list[bytes]:
    payload = pickle.dumps(RunsCode(marker), protocol=5)
    if how == "a pickle stream as the header":
        return [payload, *frames[1:]]
    if how == "a pickle stream as the bitmaps":
        return [*frames[:-1], payload]
    if how == "a pickle stream in an array's place":
        return [frames[0], payload, *frames[2:]]
    if how == "a pickle stream as an object array":
        def point(header: dict) -> None:
            header["arrays"][0] = ["|O", [1]]
        return [with_header(frames, point)[0], payload, *frames[2:]]
    if how == "a dtype naming os.system":
        return with_header(frames, lambda header: header["arrays"].__setitem__(0, ["os.system", [1]]))
    if how == "builtins.exec in place of a store":
        return with_header(frames, lambda header: header["state"].__setitem__("profiles", "builtins.exec"))
    if how == "a msgpack extension type":
        return with_header(frames, lambda header: header["state"].__setitem__("events", msgpack.ExtType(1, payload)))
    raise AssertionError(how)


@pytest.mark.parametrize("how, message", [
    ("a pickle stream as the header", r"the snapshot header is not (valid msgpack|a format-4 header)"),
    ("a pickle stream as the bitmaps", r"the snapshot's bitmap table does not match its bitmap frame"),
    ("a pickle stream in an array's place", r"array 0 holds \d+ bytes, not"),
    ("a pickle stream as an object array", r"array 0 has a bad table entry \['\|O', \[1\]\]"),
    ("a dtype naming os.system", r"array 0 has a bad table entry \['os.system', \[1\]\]"),
    ("builtins.exec in place of a store", r"its state is malformed"),
    ("a msgpack extension type", r"it holds a msgpack extension type \(1\)"),
])
def test_a_crafted_snapshot_is_refused_and_runs_nothing(tmp_path: Path, how: str, message: str) -> None:
    data, marker = tmp_path / "data", tmp_path / MARKER
    frames = snapshot_one_shard(data)
    pickle.loads(pickle.dumps(RunsCode(marker), protocol=5))  # the payload is live: unpickling it runs code
    assert marker.exists()
    marker.unlink()
    replace_part(data, crafted(frames, marker, how))
    with pytest.raises(DataCorruption, match=r"snapshot 1 in .*shard-0: .*" + message):
        open_engine(data, 1)
    assert not marker.exists()
    replace_part(data, frames)  # the same part untouched loads
    with open_engine(data, 1) as engine, in_memory(1, 1) as memory:
        assert answers(engine) == answers(memory)


def test_a_bitmap_or_run_naming_rows_past_the_profiles_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    frames = snapshot_one_shard(data)
    header = msgpack.unpackb(frames[0])
    rows = header["state"]["profiles"]["idmap"]["size"]
    live = header["state"]["profiles"]["live"]
    offsets = np.concatenate(([0], np.cumsum(header["bitmaps"]))).tolist()
    beyond = BitMap([0, rows]).serialize()
    bitmaps = frames[-1][: offsets[live]] + beyond + frames[-1][offsets[live + 1]:]
    header["bitmaps"][live] = len(beyond)
    replace_part(data, [msgpack.packb(header), *frames[1:-1], bitmaps])
    with pytest.raises(DataCorruption, match=rf"bitmap {live} holds row {rows} of {rows}"):
        open_engine(data, 1)
    run = header["state"]["events"]["view"]["epochs"][0][1][0]
    header = msgpack.unpackb(frames[0])
    ruined = bytearray(frames[run["rows"] + 1])
    ruined[:4] = np.int32(rows).tobytes()
    replace_part(data, [*frames[: run["rows"] + 1], bytes(ruined), *frames[run["rows"] + 2:]])
    with pytest.raises(DataCorruption, match=r"a run of view does not match the schema or the profiles"):
        open_engine(data, 1)


# -- pickle formats: refused, then migrated -------------------------------------------------------
def legacy_directory(path: Path, fmt: int, shards: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """A data directory whose snapshot is in pickle format ``fmt`` (written from the live shards at the
    snapshot's log position), with log records after it; returns (answers, manifest)."""
    with open_engine(path, shards) as engine:
        write_state(engine)
        ids = [f"u{i:06d}" for i in range(150_000)]
        engine.load_profiles(ProfileBatch(ids, {"visits": ValueColumn(np.arange(150_000), np.ones(150_000, bool))}))
        engine.snapshot()
        frames = [legacy_frames(shard) for shard in engine.shards]
        manifest = dict(engine.durable.manifest)
        write_state(engine, 1000)
        expected = answers(engine)
    parts = [write_legacy_part(path / f"shard-{n}", manifest["id"], frames[n], fmt) for n in range(shards)]
    assert all(part["chunks"] > 1 for part in parts)
    rewrite_manifest(path, parts)
    return expected, manifest


@pytest.mark.parametrize("fmt", [3, 1])
def test_a_pickle_format_directory_is_refused_naming_migrate_then_migrated(tmp_path: Path, fmt: int,
                                                                          capsys: pytest.CaptureFixture) -> None:
    expected, manifest = legacy_directory(tmp_path, fmt)
    with pytest.raises(DataDirMismatch, match=rf"snapshot 1 in .*shard-0 is in format {fmt} \(pickled Python "
                                              rf"objects\), which this engine does not load; .*: segengine migrate "
                                              rf"{tmp_path}$"):
        open_engine(tmp_path)
    assert cli(["migrate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"snapshot 1 (formats [{fmt}]) is now snapshot 2 in format 4, at the same log position " \
           f"({manifest['wal_seq']})" in out
    for shard in (0, 1):
        store = ShardStore(str(tmp_path / f"shard-{shard}"))
        assert store.chunks().snapshot_ids() == [2]
        store.close()
    with open_engine(tmp_path) as engine:
        assert engine.durable.recovery["snapshot_id"] == 2
        assert [part["format"] for part in engine.durable.manifest["parts"]] == [4, 4]
        assert engine.durable.manifest["wal_seq"] == manifest["wal_seq"]
        assert sum(s["replayed_records"] for s in engine.durable.recovery["shards"]) > 0  # the log after it
        assert answers(engine) == expected
    assert cli(["migrate", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path}: snapshot 2 is in format 4 already; nothing to do\n"


def test_a_refusal_crosses_from_a_worker_process_and_migrate_needs_the_directory_free(tmp_path: Path) -> None:
    expected, _ = legacy_directory(tmp_path, 3)
    with pytest.raises(DataDirMismatch, match=rf"is in format 3 .*: segengine migrate {tmp_path}$"):
        open_engine(tmp_path, backend="process")
    with open_engine(tmp_path / "other", 2) as engine:
        with pytest.raises(DataDirMismatch, match="in use by another engine"):
            migrate(str(tmp_path / "other"))
        engine.upsert_profiles([{"id": "x"}])
    assert migrate(str(tmp_path / "other")) == {"migrated": False, "snapshot_id": None}
    assert migrate(str(tmp_path))["migrated"] is True
    with open_engine(tmp_path, backend="process") as engine:
        assert answers(engine) == expected


def test_a_shard_keeps_its_persistence_state_in_one_object(tmp_path: Path) -> None:
    with open_engine(tmp_path, 1) as engine:
        write_state(engine)
        engine.snapshot()
        shard = engine.shards[0]
        assert sorted(vars(shard)) == ["aliases", "did", "events", "executor", "lookalike_features", "persistence",
                                       "prepared", "profiles", "saved", "schema", "segments", "shard_id"]
        persistence = shard.persistence
        assert persistence.applied_seq == engine.durable.manifest["wal_seq"] == 14
        assert persistence.recovered_from == str(tmp_path) and persistence.recovery["snapshot_id"] is None
        assert persistence.job is not None and persistence.job.status()["format"] == 4
        assert persistence.store is not None and persistence.store.path == str(tmp_path / "shard-0")
    assert persistence.job is None and persistence.store is None
    with open_engine(tmp_path, 1) as engine:
        assert engine.shards[0].persistence.recovery["snapshot_id"] == 1
        assert engine.shards[0].persistence.applied_seq == 14
