"""A merge's prepare phase (engine/shard/prepared_merge.py): a plan made against a shard that changed
before the commit is not taken (the merge still applies exactly, by the oracle), and a reader never
sees a merge batch half applied across worker shards. (Random interleavings through the prepared
path, and replays through the whole path, are tests/test_identity_oracle.py's.)"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from engine import Engine
from engine.commands import route
from engine.shard.partition import shard_of
from engine.store.events import SLOT_MS

try:
    from oracle_identity import IdentityStore
    from test_identity_oracle import DAY, NOW, QUERIES, SCHEMA, assert_matches, run
except ImportError:  # tests/ imported as a package
    from tests.oracle_identity import IdentityStore
    from tests.test_identity_oracle import DAY, NOW, QUERIES, SCHEMA, assert_matches, run

from engine.schema import CONTRACT_SCHEMA

PROFILES = [
    {"id": "a", "age": 30, "country": "FR", "consent": {"email": True, "sms": True}},
    {"id": "b", "interests": ["a"]},
    {"id": "c", "vip": True, "consent": {"push": False}},
    {"id": "d", "country": "BE"},
]
EVENTS = [
    {"id": "a", "event": "purchase", "ts": NOW - DAY, "amount": 5.0, "category": "shoes"},
    {"id": "a", "event": "page_view", "ts": NOW - 2 * DAY, "category": "books"},
    {"id": "b", "event": "cart_abandoned", "ts": NOW - 3 * DAY, "category": "shoes"},
    {"id": "c", "event": "purchase", "ts": NOW - 4 * DAY, "amount": 25.5},
    {"id": "d", "event": "page_view", "ts": NOW - 5 * DAY},
]
#: Merges into an existing target, into a target the batch creates, and along a chain.
PAIRS = [("a", "b"), ("c", "fresh"), ("d", "b"), ("b", "e")]
#: Writes committed between the merge's prepare and its commit (the merge's sources stay as they
#: were planned, as the coordinator's identity lock makes sure): the targets' attributes, consents
#: and events change, a target the plan would create exists, and new profiles take the rows the
#: plan gave the targets it creates.
BETWEEN = [
    ("upsert", [{"id": "e", "age": 41, "consent": {"email": False}}, {"id": "x"},
                {"id": "fresh", "age": 50, "consent": {"push": True}}]),
    ("track", [{"id": "e", "event": "purchase", "ts": NOW - 6 * DAY, "amount": 25.5},
               {"id": "y", "event": "page_view", "ts": NOW - DAY}]),
]


def prepared_merge(between: list, later_slots: bool = False) -> None:
    """Prepare the merge of PAIRS on a one-shard engine, commit ``between`` first, then commit the
    merge on the shard; the engine must match the oracle that applied the same writes in that order
    (``later_slots``: a query starts keeping more slot days between the prepare and the commit)."""
    with Engine(SCHEMA, shards=1, backend="local") as engine:
        oracle = IdentityStore(CONTRACT_SCHEMA)
        run(engine, oracle, [("upsert", PROFILES), ("track", EVENTS)])
        for text in QUERIES:  # the bin bitmaps and count levels they build are kept by the writes
            engine.count(text, now=NOW)
        command = engine.identity.plan_merges(PAIRS, NOW)
        assert command is not None
        [(method, args)] = route(command, 1, None)
        shard = engine.shards[0]
        seq = engine._last_seq + len(between) + 1
        keep_slots(shard, range(1, 4))  # kept when the plan is made
        assert shard.prepare_logged(seq, method, args)
        run(engine, oracle, between)
        if later_slots:
            keep_slots(shard, range(4, 7))  # kept from a query after the plan was made
        with engine._write_lock, engine.publish.writing():  # the commit of write ``seq`` (Engine.apply's part)
            shard.apply_logged(seq, method, args)
            engine._last_seq = seq
            engine.identity.applied(command)
        oracle.merge_many(PAIRS)
        assert_matches(engine, oracle)
        for store in shard.events.types.values():  # the kept slot bitmaps as built afresh from the runs
            per_day = DAY // SLOT_MS
            for day in store.slot_days:
                fresh: dict[int, Any] = {}
                store._build_slots(day, fresh)
                kept = {key: bitmap for key, bitmap in store.slots.items()
                        if day * per_day <= key < (day + 1) * per_day and bitmap}
                assert kept == {key: bitmap for key, bitmap in fresh.items() if bitmap}
        assert sorted(engine.ids("ALL", now=NOW)) == sorted(["e", "fresh", "x", "y"] if between else ["e", "fresh"])


def keep_slots(shard: Any, days_ago: range) -> None:
    """Keep the slot bitmaps of the days ``days_ago`` before NOW in every event type (as a query does)."""
    for store in shard.events.types.values():
        for days in days_ago:
            store.ensure_slots((NOW - days * DAY) // DAY)


def test_a_prepared_merge_applies_exactly():
    prepared_merge([])


def test_a_prepared_merge_applies_exactly_with_slot_days_kept_since_the_prepare():
    prepared_merge([], later_slots=True)


def test_a_prepared_merge_whose_shard_changed_before_its_commit_applies_exactly():
    prepared_merge(BETWEEN, later_slots=True)


def test_a_commit_sent_by_reference_takes_the_prepared_arguments_and_needs_them():
    with Engine(SCHEMA, shards=1, backend="local") as engine:
        oracle = IdentityStore(CONTRACT_SCHEMA)
        run(engine, oracle, [("upsert", PROFILES), ("track", EVENTS)])
        command = engine.identity.plan_merges(PAIRS, NOW)
        [(method, args)] = route(command, 1, None)
        shard = engine.shards[0]
        seq = engine._last_seq + 1
        with pytest.raises(RuntimeError, match="sent by reference"):  # nothing prepared: nothing to apply
            shard.apply_logged(seq, method, None)
        assert shard.prepare_logged(seq, method, args)
        with engine._write_lock, engine.publish.writing():
            assert shard.apply_logged(seq, method, None) == len(args[0])
            engine._last_seq = seq
            engine.identity.applied(command)
        assert shard.apply_logged(seq, method, None) is None  # applied already (as after a replay)
        oracle.merge_many(PAIRS)
        assert_matches(engine, oracle)


def test_a_reader_never_sees_a_merge_batch_half_applied_across_worker_shards():
    pairs = 1200
    sources = [f"s{i}" for i in range(pairs)]
    targets = [next(f"t{i}-{k}" for k in range(100) if shard_of(f"t{i}-{k}", 2) != shard_of(f"s{i}", 2))
               for i in range(pairs)]  # every pair across the two shards
    with Engine(SCHEMA, shards=2, backend="process") as engine:
        engine.track_events([{"id": s, "event": "purchase", "ts": NOW - DAY, "amount": 5.0} for s in sources])
        engine.track_events([{"id": t, "event": "page_view", "ts": NOW - DAY} for t in targets])
        seen: list[tuple[int, int, int]] = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                seen.append((engine.count("DID(purchase)", now=NOW),
                             engine.count("DID(purchase) AND DID(page_view)", now=NOW),
                             engine.count("ALL", now=NOW)))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while not seen and time.monotonic() < deadline:  # the reader reads before the first merge
                time.sleep(0.01)
            batch = 300
            for start in range(0, pairs, batch):
                assert engine.merge_many(list(zip(sources, targets))[start:start + batch]) == batch
        finally:
            done.set()
            reader.join(60)
        merged = set(range(0, pairs + 1, batch))  # pairs merged after each whole batch
        assert len(seen) >= 2
        # a purchase is on its source or on its target, never on both or neither; whole batches only
        assert {purchases for purchases, _, _ in seen} == {pairs}
        assert {both for _, both, _ in seen} <= merged
        assert {2 * pairs - everyone for _, _, everyone in seen} <= merged
        assert engine.count("DID(purchase) AND DID(page_view)", now=NOW) == pairs
        assert engine.count("ALL", now=NOW) == pairs
