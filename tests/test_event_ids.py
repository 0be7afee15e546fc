"""Event ids (idempotent ingest, contract section 6) against the oracle (tests/oracle_retention.py):
random interleavings of events with ids, retried batches, merges of profiles holding the same ids,
expiry and erasure at 1, 2 and 3 shards, in memory and replayed from a data directory; validation,
the columnar path and the store's compaction by hand."""
from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import DataError, Engine, Schema
from engine.columns import EventBatch, ValueColumn
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA
from engine.shard.local import LocalShard
from engine.store.events import COMPACT_MIN_DEAD

try:
    from oracle_retention import RetentionStore
except ImportError:  # tests/ imported as a package
    from tests.oracle_retention import RetentionStore

DAY = 86_400_000
NOW = 1_800_000_000_000
SPEC = copy.deepcopy(CONTRACT_SCHEMA)
SPEC["events"]["page_view"]["retention"] = "3d"
SCHEMA = Schema.from_dict(SPEC)
QUERIES = ["DID(purchase)", "DID(purchase, COUNT >= 2)", "DID(page_view, COUNT = 0)", "DID(page_view, COUNT >= 2)",
           "DID(purchase, SUM(amount) > 20)", "DID(cart_abandoned WHERE category = 'shoes')"]


def random_event(rng: random.Random, pid: str) -> dict[str, Any]:
    event = rng.choice(["purchase", "page_view", "cart_abandoned"])
    record: dict[str, Any] = {"id": pid, "event": event, "ts": NOW - rng.randrange(6 * DAY)}
    if event == "purchase":
        record["amount"] = rng.choice([5.0, 25.5, None])
    else:
        record["category"] = rng.choice(["shoes", "books"])
    if rng.random() < 0.7:
        record["event_id"] = f"e{rng.randrange(6)}"  # few ids: repeats within and across profiles
    return record


def random_ops(seed: int, steps: int = 40, pool: int = 8) -> list[tuple[str, Any]]:
    """Events with ids, retries of earlier batches, merges, erasures and expiry over a small id pool."""
    rng = random.Random(seed)
    ids = [f"u{i}" for i in range(pool)]
    sent: list[list[dict[str, Any]]] = []
    ops: list[tuple[str, Any]] = []
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.35 or not sent:
            batch = [random_event(rng, rng.choice(ids)) for _ in range(rng.randrange(1, 6))]
            sent.append(batch)
            ops.append(("track", batch))
        elif roll < 0.55:
            ops.append(("track", rng.choice(sent)))  # a producer's retry
        elif roll < 0.75:
            ops.append(("merge", [(rng.choice(ids), rng.choice(ids)) for _ in range(rng.randrange(1, 3))]))
        elif roll < 0.85:
            ops.append(("erase", rng.sample(ids, 1)))
        else:
            ops.append(("expire", NOW - rng.randrange(3 * DAY)))
    return ops


def prefixed(kind: str, arg: Any, prefix: str) -> Any:
    if kind == "track":
        return [{**r, "id": prefix + r["id"]} for r in arg]
    if kind == "merge":
        return [(prefix + a, prefix + b) for a, b in arg]
    if kind == "erase":
        return [prefix + i for i in arg]
    return arg


def run(engine: Engine, oracle: RetentionStore, ops: list[tuple[str, Any]], prefix: str = "") -> None:
    for kind, arg in ops:
        arg = prefixed(kind, arg, prefix)
        if kind == "track":
            assert engine.track_events(arg) == oracle.track(arg)
        elif kind == "merge":
            engine.merge_many(arg)
            oracle.merge_many(arg)
        elif kind == "erase":
            assert engine.delete_profiles(arg) == oracle.delete(arg)
        else:
            assert engine.expire(arg) == oracle.expire(arg)


def comparable(export: dict[str, Any] | None) -> Any:
    if export is None:
        return None
    return {**export, "events": sorted(export["events"], key=lambda e: (e["ts"], e["event"], repr(sorted(e.items()))))}


def assert_matches(engine: Engine, oracle: RetentionStore, prefix: str = "") -> None:
    for text in QUERIES:
        expected = sorted(i for i in oracle.evaluate(bind(parse(text), SCHEMA), NOW) if i.startswith(prefix))
        assert [i for i in engine.ids(text, now=NOW) if i.startswith(prefix)] == expected, f"{prefix}: {text}"
    wall = time.time_ns() // 1_000_000
    for pid in sorted(i for i in {*oracle.attrs, *oracle.aliases, *(f"{prefix}u{i}" for i in range(8))}
                      if i.startswith(prefix)):
        assert comparable(engine.export_profile(pid)) == comparable(oracle.export(pid, now=wall)), pid


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_random_event_ids_match_the_oracle(shards: int) -> None:
    oracle = RetentionStore(SPEC)  # one for every round: expire reaches every round's events
    with Engine(SCHEMA, shards=shards) as engine:
        for seed in range({1: 6, 2: 3, 3: 2}[shards]):
            prefix = f"s{seed}-"
            run(engine, oracle, random_ops(seed), prefix)
            assert_matches(engine, oracle, prefix)


@pytest.mark.parametrize("shards", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_event_ids_replay_from_the_log_and_snapshots(tmp_path: Path, shards: int) -> None:
    """Dedup is decided when a record is applied, so replaying the log (and a snapshot) gives the same state."""
    ops = random_ops(200 + shards, steps=50)
    oracle = RetentionStore(SPEC)
    half = len(ops) // 2
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        run(engine, oracle, ops[:half])
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        assert_matches(engine, oracle)
        engine.snapshot()
        run(engine, oracle, ops[half:])
        assert_matches(engine, oracle)
        engine.snapshot()
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        assert_matches(engine, oracle)
        retry = [record for kind, arg in ops if kind == "track" for record in arg]
        assert engine.track_events(retry) == oracle.track(retry)  # every held id still refuses its retry
        assert_matches(engine, oracle)


def test_a_retried_batch_is_ignored_and_repeats_in_a_batch_count_once() -> None:
    with Engine(SCHEMA, shards=1) as engine:
        batch = [{"id": "a", "event": "purchase", "ts": NOW - 3, "amount": 5.0, "event_id": "o1"},
                 {"id": "a", "event": "purchase", "ts": NOW - 2, "amount": 7.0, "event_id": "o1"},
                 {"id": "b", "event": "purchase", "ts": NOW - 2, "event_id": "o1"},
                 {"id": "a", "event": "purchase", "ts": NOW - 1}]
        assert engine.track_events(batch) == 3
        assert engine.track_events(batch) == 1  # only the event without an id is applied again
        assert engine.ids("DID(purchase, SUM(amount) = 5)", now=NOW) == ["a"]
        assert [e.get("event_id") for e in engine.export_profile("a")["events"]] == ["o1", None, None]


@pytest.fixture(scope="module")
def two_shards() -> Any:
    with Engine(SCHEMA, shards=2) as engine:
        yield engine


def test_a_merge_moves_every_event_and_the_target_holds_both_ids(two_shards: Engine) -> None:
    engine = two_shards  # a and b share a shard, c is on the other
    for pid in ("a", "b", "c"):
        engine.track_events([{"id": pid, "event": "purchase", "ts": NOW - 5, "event_id": "x"},
                             {"id": pid, "event": "purchase", "ts": NOW - 4, "event_id": pid}])
    engine.merge_many([("a", "b"), ("c", "b")])
    assert engine.ids("DID(purchase, COUNT = 6)", now=NOW) == ["b"]
    assert engine.track_events([{"id": "b", "event": "purchase", "ts": NOW, "event_id": i}
                                for i in ("x", "a", "b", "c")]) == 0
    assert engine.track_events([{"id": "a", "event": "purchase", "ts": NOW, "event_id": "c"},
                                {"id": "c", "event": "purchase", "ts": NOW, "event_id": "d"}]) == 1
    assert sorted(e["event_id"] for e in engine.export_profile("c")["events"]) == ["a", "b", "c", "d", "x", "x", "x"]


def test_expiry_and_erasure_forget_the_ids() -> None:
    with Engine(SCHEMA, shards=1) as engine:
        old = {"id": "a", "event": "page_view", "ts": NOW - 5 * DAY, "event_id": "v"}
        assert engine.track_events([old, {**old, "id": "z", "ts": NOW - DAY}]) == 2
        assert engine.expire(NOW) == 1
        assert engine.track_events([old, {**old, "id": "z"}]) == 1  # a's id went with its event
        assert engine.delete_profiles(["z"]) == 1
        assert engine.track_events([{**old, "id": "z"}]) == 1


def test_the_columnar_path_takes_event_ids(two_shards: Engine) -> None:
    engine = two_shards
    ids = ["m", "n", "m", "m"]
    batch = EventBatch("purchase", ids, np.array([1, 2, 3, 4], dtype=np.int64) + NOW - 10,
                       {"amount": ValueColumn(np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4, dtype=bool))},
                       ["k", "k", "k", None])
    assert engine.load_checked_events(batch) == 3
    assert engine.load_events(batch) == 1
    assert engine.track_events([{"id": "m", "event": "purchase", "ts": NOW, "event_id": "k"}]) == 0
    assert [(e["ts"] - NOW, e.get("event_id")) for e in engine.export_profile("m")["events"]] == [
        (-9, "k"), (-6, None), (-6, None)]
    with pytest.raises(DataError, match="record 1, field 'event_id': event_id must be a non-empty string"):
        engine.load_checked_events(EventBatch("purchase", ["m", "n"], np.array([1, 2]), {}, ["k", ""]))


@pytest.mark.parametrize("value, message", [
    ("", "event_id must be a non-empty string"), (7, "event_id must be a non-empty string"),
    ("é" * 65, "event_id is longer than 128 UTF-8 bytes")])
def test_bad_event_ids_name_the_record_and_field(value: Any, message: str) -> None:
    with Engine(SCHEMA, shards=1) as engine:
        good = {"id": "a", "event": "purchase", "ts": NOW}
        with pytest.raises(DataError) as caught:
            engine.track_events([good, {**good, "event_id": value}])
        assert str(caught.value) == f"record 1, field 'event_id': {message}"
        assert engine.track_events([{**good, "event_id": "é" * 64}, {**good, "event_id": None}]) == 2


def test_a_schema_may_not_name_a_property_event_id() -> None:
    spec = {"events": {"order": {"properties": {"event_id": "category"}}}}
    with pytest.raises(ValueError, match="property name 'event_id' is empty or reserved"):
        Schema.from_dict(spec)


def test_released_ids_are_compacted_and_the_rest_still_dedupe() -> None:
    shard = LocalShard(SCHEMA)
    n = COMPACT_MIN_DEAD * 2 + 10
    pids = [f"p{i % 1000}" for i in range(n)]
    ts = NOW - np.arange(n, dtype=np.int64) % (5 * DAY)
    assert shard.load_events(EventBatch("page_view", pids, ts, {}, [f"id{i}" for i in range(n)])) == n
    assert shard.expire(NOW) == int((ts <= NOW - 3 * DAY).sum())
    store = shard.events.event_ids
    assert store.size == store.live == len(shard.events) and store.dead == 0  # compacted
    kept = np.flatnonzero(ts > NOW - 3 * DAY)
    again = EventBatch("page_view", pids, ts, {}, [f"id{i}" for i in range(n)])
    assert shard.load_events(again) == n - len(kept)  # the expired ones come back, the kept ones are held


def test_a_snapshot_part_without_event_ids_is_read() -> None:
    """Parts written before event ids were kept have no ``event_ids`` state and no run ``eids``: they hold none."""
    import msgpack

    from engine.persist import shard_state

    shard = LocalShard(SCHEMA)
    shard.track([SCHEMA.validate_event({"id": "a", "event": "purchase", "ts": NOW})])
    frames = [bytes(memoryview(frame).cast("B")) for frame in shard_state.capture(shard).joined()]
    header = msgpack.unpackb(frames[0])
    del header["state"]["event_ids"]
    frames[0] = msgpack.packb(header)
    restored = LocalShard(SCHEMA)
    shard_state.restore(restored, [np.frombuffer(bytearray(frame), dtype=np.uint8) for frame in frames])
    assert len(restored.events) == 1 and len(restored.events.event_ids) == 0
    assert restored.track([SCHEMA.validate_event({"id": "a", "event": "purchase", "ts": NOW, "event_id": "r"})] * 2) == 1


def test_jsonl_and_csv_files_carry_event_ids(tmp_path: Path) -> None:
    from loaders.csv_events import load_events_csv
    from loaders.jsonl import load_events_jsonl

    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(f'{{"id": "a", "event": "purchase", "ts": {NOW}, "event_id": "o1"}}\n'
                     f'{{"id": "a", "event": "purchase", "ts": {NOW}, "event_id": ""}}\n'
                     f'{{"id": "a", "event": "purchase", "ts": {NOW}, "event_id": "o1"}}\n')
    csv = tmp_path / "events.csv"
    csv.write_text(f"id,event,ts,event_id,amount\na,purchase,{NOW},o1,2\na,purchase,{NOW},o2,\nb,purchase,{NOW},,3\n")
    with Engine(SCHEMA, shards=1) as engine:
        report = load_events_jsonl(engine, jsonl, progress=False)
        assert (report.applied, report.errors) == (1, ["line 2, field 'event_id': event_id must be a non-empty string"])
        report = load_events_csv(engine, csv, progress=False)
        assert (report.applied, report.errors) == (2, [])
        assert sorted(e.get("event_id", "-") for e in engine.export_profile("a")["events"]) == ["o1", "o2"]


def test_the_writer_keeps_event_ids() -> None:
    import io
    import json

    from loaders.writer import event_records, write_events

    batch = EventBatch("purchase", ["a", "b"], np.array([NOW, NOW + 1]), {}, ['o"1', None])
    handle = io.StringIO()
    write_events(batch, SCHEMA, handle, "ms")
    assert [json.loads(line) for line in handle.getvalue().splitlines()] == list(event_records(batch)) == [
        {"id": "a", "event": "purchase", "ts": NOW, "event_id": 'o"1'}, {"id": "b", "event": "purchase", "ts": NOW + 1}]
