"""Change streams of saved segments (engine.watch): order, replay, filters, markers, overflow."""
from __future__ import annotations

import random
import threading

import pytest

from engine import Engine, Schema
from engine.errors import SegmentNotFound, WatchOverflow
from engine.schema import CONTRACT_SCHEMA
from engine.watch import ChangeHub

from test_segments import DAY, HOUR, SEGMENTS, make_engine, random_writes


@pytest.fixture
def engine():
    eng = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1)
    eng.clock = lambda: 1_800_000_000_000
    yield eng
    eng.close()


def test_replaying_the_stream_reproduces_every_segment():
    engine, clock, ids = make_engine(profiles=2000, events=20000)
    try:
        for name, text in SEGMENTS.items():
            engine.create_segment(name, text)
        members = {name: set(engine.ids(f"SEGMENT('{name}')")) for name in SEGMENTS}
        subscription = engine.watch()
        rng = random.Random(2)
        last_seq = 0
        for _ in range(10):
            clock.now += rng.choice([1, 5 * HOUR, DAY])
            profiles, events = random_writes(rng, ids, clock.now, 50)
            engine.upsert_profiles(profiles)
            engine.track_events(events)
            for change in subscription.get(timeout=0, max_items=10**6):
                assert change.seq == last_seq + 1
                last_seq = change.seq
                assert change.at_ms == clock.now
                if change.kind == "entered":
                    assert change.id not in members[change.segment]
                    members[change.segment].add(change.id)
                else:
                    assert change.kind == "exited"
                    members[change.segment].remove(change.id)
            for name in SEGMENTS:
                assert members[name] == set(engine.ids(f"SEGMENT('{name}')")), name
        assert last_seq > 100
    finally:
        engine.close()


def test_filtered_watch_and_segment_markers(engine):
    engine.create_segment("fr", "country = 'FR'")
    everything = engine.watch()
    only_fr = engine.watch(["fr"])
    engine.upsert_profiles([{"id": "a", "country": "FR"}, {"id": "b", "country": "DE"}])
    engine.create_segment("de", "country = 'DE'")
    engine.create_segment("fr", "country IN ('FR', 'DE')", replace=True)
    engine.upsert_profiles([{"id": "a", "country": None}])
    engine.delete_segment("de")
    seen = [(c.kind, c.segment, c.id) for c in everything.get(timeout=0)]
    assert seen == [("entered", "fr", "a"), ("created", "de", ""), ("replaced", "fr", ""), ("entered", "fr", "b"),
                    ("exited", "fr", "a"), ("deleted", "de", "")]
    assert [(c.kind, c.id) for c in only_fr.get(timeout=0)] == [("entered", "a"), ("replaced", ""), ("entered", "b"),
                                                                ("exited", "a")]
    with pytest.raises(SegmentNotFound):
        engine.watch(["nope"])


def test_a_slow_watcher_is_dropped_and_writes_do_not_wait(engine):
    engine.create_segment("all", "ALL")
    slow = engine.watch(capacity=5)
    fast = engine.watch(capacity=1000)
    engine.upsert_profiles([{"id": f"u{i}"} for i in range(3)])
    engine.upsert_profiles([{"id": f"v{i}"} for i in range(3)])  # 6 > 5 pending: slow is dropped
    with pytest.raises(WatchOverflow, match="more than 5 changes pending"):
        slow.get(timeout=0)
    assert len(fast.get(timeout=0)) == 6


def test_get_waits_for_changes_and_close_wakes_it():
    hub = ChangeHub()
    subscription = hub.subscribe()
    results = []
    waiter = threading.Thread(target=lambda: results.append(subscription.get(timeout=5)))
    waiter.start()
    hub.publish([["entered", "s", ["x"]]], at=1)
    waiter.join(2)
    assert [c.id for c in results[0]] == ["x"]
    waiter = threading.Thread(target=lambda: results.append(subscription.get(timeout=5)))
    waiter.start()
    subscription.close()
    waiter.join(2)
    assert results[1] == [] and not hub.subscribers


def test_capture_stops_when_nobody_watches(engine):
    engine.create_segment("all", "ALL")
    subscription = engine.watch()
    subscription.close()
    engine.upsert_profiles([{"id": "z"}])
    assert engine.shards[0].saved.capture is False
    assert engine.shards[0].saved.pending == []
