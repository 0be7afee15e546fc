"""Sharded execution: the same answers at every shard count, messages, worker processes."""
from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np
import pytest
from pyroaring import BitMap, FrozenBitMap

from engine import DataError, Engine, QueryError, Schema
from engine.columns import CategoryColumn, EventBatch, ProfileBatch, TagsColumn, ValueColumn
from engine.errors import SegmentNotFound, ShardError
from engine.plan.steps import Intersect, Pred, Union, Universe
from engine.query import ast
from engine.schema import CONTRACT_SCHEMA, EventRecord, ProfileUpdate
from engine.shard import messages
from engine.shard.process import ProcessShard, fanout, start_process_shards
from loaders.generator import generate
from loaders.writer import dataset_records

NOW = 1_800_000_000_000
SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)

QUERIES = [
    "ALL",
    "NOT ALL",
    "age = -12345",
    "country = 'FR'",
    "country IN ('FR', 'DE', 'US') AND age BETWEEN 25 AND 40",
    "country NOT IN ('FR') OR age NOT BETWEEN 20 AND 60",
    "NOT country IS NULL AND age > 30.5",
    "country >= 'GB' AND country < 'PL'",
    "cart_value >= 100 OR vip = TRUE",
    "vip != TRUE",
    "interests HAS 'tech'",
    "interests HAS ALL ('shoes', 'tech')",
    "NOT interests HAS ANY ('books', 'music')",
    "interests IS NULL",
    "signup_at > NOW - 365d",
    "signup_at BETWEEN '2025-01-01T00:00:00Z' AND NOW - 30d",
    "CONSENTED(email) AND NOT CONSENTED(sms)",
    "SAMPLE(25, 3)",
    "SAMPLE(50) AND NOT SAMPLE(10, 9)",
    "DID(page_view, WITHIN 7d)",
    "DID(page_view, COUNT >= 3, WITHIN 30d)",
    "DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2)",
    "DID(purchase WHERE category IN ('shoes', 'books'))",
    "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
    "DID(add_to_cart, SINCE NOW - 14d, BEFORE NOW - 1d)",
    "DID(purchase, COUNT = 0) AND DID(page_view, WITHIN 1d)",
    "NOT DID(purchase WHERE NOT amount < 20)",
    "(country = 'FR' OR vip = TRUE) AND NOT (age < 30 OR DID(purchase, WITHIN 30d))",
    "DID(purchase, SUM(amount) > 100, WITHIN 30d)",
    "DID(purchase, SUM(amount) < 10, WITHIN 30d) AND NOT DID(cart_abandoned, AVG(cart_value) >= 50)",
    "country IN ('FR', 'BE') AND DID(cart_abandoned, AVG(cart_value) > 80, COUNT >= 2, WITHIN 14d)",
    "DID(purchase, MIN(amount) < 20, MAX(amount) >= 100)",
    "SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 30d)",
    "SEQUENCE(add_to_cart WHERE cart_value > 50 THEN add_to_cart THEN purchase) OR SAMPLE(1, 5)",
    "BUCKET(42) BETWEEN 1000 AND 5499 AND CONSENTED(email)",
    "BUCKET(7) NOT IN (0, 1, 9999) AND NOT BUCKET(7) < 5000 AND NOT SAMPLE(60, 7)",
]


def fill(engine: Engine) -> None:
    """The same data every time: generated batches, then record upserts and events on top."""
    ds = generate(profiles=3000, events=20000, seed=11, now_ms=NOW)
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    profiles, events = dataset_records(generate(profiles=400, events=3000, seed=12, now_ms=NOW))
    engine.upsert_profiles([{**p, "id": "r" + p["id"]} for p in profiles])
    engine.track_events([{**e, "id": "r" + e["id"]} for e in events])
    engine.upsert_profiles([{"id": f"u{i:08d}", "age": None, "country": "FR", "interests": ["tech"],
                             "consent": {"sms": True}} for i in range(0, 3000, 7)])
    engine.track_events([{"id": "new-only-events", "event": "purchase", "ts": NOW - 5, "amount": 10.0}])


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[int, Engine]]:
    """Engines at 1 (in-process), 2 and 3 shards (worker processes) over the same data."""
    schema = Schema.from_dict(generate(profiles=0, events=0, now_ms=NOW).schema)
    opened = {n: Engine(schema, shards=n) for n in (1, 2, 3)}
    try:
        for engine in opened.values():
            fill(engine)
        yield opened
    finally:
        for engine in opened.values():
            engine.close()


def test_backends_by_shard_count(engines: dict[int, Engine]) -> None:
    assert [engines[n].shards.backend for n in (1, 2, 3)] == ["local", "process", "process"]


@pytest.mark.parametrize("text", QUERIES)
def test_same_answers_at_every_shard_count(engines: dict[int, Engine], text: str) -> None:
    expected = engines[1].ids(text, now=NOW)
    for n in (2, 3):
        assert engines[n].ids(text, now=NOW) == expected, (n, text)
        assert engines[n].count(text, now=NOW) == len(expected), (n, text)


def test_every_profile_lives_in_exactly_one_shard(engines: dict[int, Engine]) -> None:
    total = engines[1].count("ALL", now=NOW)
    assert total == 3000 + 400 + 1
    for n in (2, 3):
        stats = engines[n].stats()
        assert stats["profiles"] == total
        assert stats["events"] == engines[1].stats()["events"]
        assert all(s["profiles"] > 0 for s in stats["shards"])
        parts = [set(shard.ids(engines[n].compile("ALL"), NOW)) for shard in engines[n].shards]
        assert sum(len(p) for p in parts) == len(set().union(*parts)) == total


def test_errors_cross_the_process_boundary_with_their_class(engines: dict[int, Engine]) -> None:
    with pytest.raises(SegmentNotFound, match="unknown segment 'nope'"):
        engines[2].count("SEGMENT('nope')")
    with pytest.raises(QueryError, match="column 1"):
        engines[2].count("nosuch = 1")
    with pytest.raises(DataError):
        engines[2].upsert_profiles([{"id": "ok"}, {"id": "bad", "age": "x"}])
    assert engines[2].count("age = -12345") == 0  # the connections are still in step


def test_a_plan_crosses_to_a_worker_and_back_as_rows(engines: dict[int, Engine]) -> None:
    engine = engines[2]
    step = engine.compile("country = 'FR'")
    parts = engine.shards.call_all("rows", step, NOW)
    assert all(type(p) is BitMap for p in parts)
    assert sum(len(p) for p in parts) == engine.count("country = 'FR'", now=NOW)


def test_methods_outside_the_shard_api_are_refused(engines: dict[int, Engine]) -> None:
    shard = engines[2].shards[0]
    with pytest.raises(AttributeError, match="^'nosuch' is not a shard method$"):
        shard.call("nosuch")
    with pytest.raises(AttributeError, match="^'profiles' is not a shard method$"):
        engines[2].shards.call_all("profiles")
    for name in ("__init__", "saved", "_worker_delay"):  # sent anyway: the worker refuses them too
        with pytest.raises(AttributeError, match=f"^'{name}' is not a shard method$"):
            shard.request(messages.encode_body(name, ()), name)
    assert "__getattr__" not in vars(ProcessShard)  # no method is forwarded by its name alone


def test_concurrent_queries_from_many_threads(engines: dict[int, Engine]) -> None:
    engine = engines[3]
    expected = {text: engines[1].count(text, now=NOW) for text in QUERIES}
    failures: list[str] = []

    def client(offset: int) -> None:
        for i in range(60):
            text = QUERIES[(offset + i) % len(QUERIES)]
            got = engine.count(text, now=NOW) if i % 2 else len(engine.ids(text, now=NOW))
            if got != expected[text]:
                failures.append(f"{text}: {got} != {expected[text]}")

    threads = [threading.Thread(target=client, args=(k * 5,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_workers_never_import_grpc_or_protobuf() -> None:
    pytest.importorskip("grpc")
    import grpc  # noqa: F401  (the coordinator may have imported it: the worker must not)

    shards = start_process_shards(SCHEMA, 1)
    try:
        assert shards[0].call("_worker_modules", ["grpc", "google.protobuf"]) == []
        assert shards[0].call("_worker_modules", ["engine.shard.local"]) == ["engine.shard.local"]
    finally:
        shards.close()


def test_close_ends_every_worker() -> None:
    engine = Engine(SCHEMA, shards=3)
    pids = [shard.pid for shard in engine.shards]
    assert all(_alive(pid) for pid in pids)
    engine.close()
    engine.close()
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(ShardError, match="closed"):
        engine.shards[0].count(engine.compile("ALL"), NOW)


def test_fanout_skips_shards_without_work() -> None:
    with start_process_shards(SCHEMA, 2) as shards:
        update = ProfileUpdate("a", {"age": 3}, {})
        assert fanout(shards, "apply_logged", [None, (1, "upsert", ([update],))]) == [None, 1]
        assert [s["profiles"] for s in shards.call_all("stats")] == [0, 1]


def test_a_single_process_shard_is_a_valid_engine() -> None:
    with Engine(SCHEMA, shards=1, backend="process") as engine:
        assert isinstance(engine.shards[0], ProcessShard)
        engine.upsert_profiles([{"id": "b", "age": 1}, {"id": "a", "age": 2}])
        assert engine.ids("ALL") == ["a", "b"]


# -- messages -----------------------------------------------------------------------------------


def roundtrip(value: object) -> object:
    return messages.unpack(messages.pack(value))


def test_plans_and_ast_nodes_roundtrip_with_positions() -> None:
    node = ast.And((ast.Compare("age", ">", 30, pos=5), ast.Did("purchase", ast.Not(ast.IsNull("amount")),
                                                                   count_op="=", count_n=0, since=ast.Now(-86400000))))
    step = Intersect((Pred(node), Union((Universe(), Pred(ast.Sample(12.5, 3))))), (Pred(ast.SegmentRef("s")),))
    back = roundtrip(step)
    assert back == step and hash(back) == hash(step)
    assert back.items[0].node.items[0].pos == 5
    assert type(back.items[0].node.items) is tuple


def test_records_batches_bitmaps_and_containers_roundtrip() -> None:
    updates = [ProfileUpdate("u1", {"interests": ("a", "b"), "age": None}, {"email": True})]
    events = [EventRecord("u1", "purchase", 12, {"amount": 2.5})]
    assert roundtrip(updates) == updates and type(roundtrip(updates)[0]) is ProfileUpdate
    assert roundtrip(events) == events and type(roundtrip(events)[0]) is EventRecord
    value = {"list": [1, 2], "tuple": (1, "x"), "set": {3}, "frozen": frozenset({4}), 7: b"raw", "np": np.int64(5)}
    assert roundtrip(value) == {**value, "np": 5}
    assert type(roundtrip((1,))) is tuple and type(roundtrip([1])) is list
    bitmap = BitMap(range(0, 1_000_000, 3))
    assert roundtrip(bitmap) == bitmap and type(roundtrip(FrozenBitMap(bitmap))) is FrozenBitMap
    batch = ProfileBatch(["a", "b"], {"country": CategoryColumn(np.array([0, -1], dtype=np.int32), ["FR"]),
                                      "age": ValueColumn(np.array([3, 0]), np.array([True, False])),
                                      "interests": TagsColumn(np.array([0, 1, 1]), np.array([0], dtype=np.int32),
                                                              ["x"], np.array([True, False]))},
                         {"email": np.array([True, False])})
    back = roundtrip(batch)
    assert back.ids == ["a", "b"] and back.columns["country"].labels == ["FR"]
    assert back.columns["age"].values.tolist() == [3, 0] and back.columns["age"].values.flags.writeable
    assert back.consents["email"].dtype == np.bool_
    events_batch = roundtrip(EventBatch("purchase", ["a"], np.array([5], dtype=np.int64), {}))
    assert events_batch.ts.dtype == np.int64 and events_batch.event == "purchase"


def test_requests_and_replies() -> None:
    step = Pred(ast.Compare("age", "=", 3))
    frame = messages.encode_request(9, "count", (step, NOW))
    assert messages.decode_request(frame) == (9, "count", (step, NOW))
    assert messages.encode_body("count", (step, NOW)) == frame[8:]
    assert messages.decode_reply(messages.encode_reply(9, ["a"])) == (9, True, ["a"])
    error = messages.decode_reply(messages.encode_error(4, QueryError("bad", 3, "x")))
    rebuilt = messages.rebuild_error(error[2], 1)
    assert type(rebuilt) is QueryError and str(rebuilt) == "bad at column 3 near 'x'" and rebuilt.column == 3
    other = messages.rebuild_error(messages.decode_reply(messages.encode_error(4, ZeroDivisionError("z")))[2], 1)
    assert type(other) is ShardError and str(other) == "shard 1 failed: ZeroDivisionError: z"


def test_unsendable_values_are_refused() -> None:
    with pytest.raises(TypeError, match="cannot send a object"):
        messages.pack(object())
    with pytest.raises(TypeError, match="object arrays"):
        messages.pack(np.array(["a", None], dtype=object))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
