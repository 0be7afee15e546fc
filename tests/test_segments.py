"""Saved segments (engine.segments): exact under writes and a moving clock, references, membership."""
from __future__ import annotations

import random
import re

import pytest
from pyroaring import BitMap

from engine import Engine, QueryError, Schema
from engine.errors import ProfileNotFound, SegmentExists, SegmentInUse, SegmentNotFound
from loaders.generator import generate

NOW = 1_800_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR

#: Segments covering every kind of predicate and time dependency (and references between them).
SEGMENTS = {
    "fr": "country = 'FR'",
    "adults_not_vip": "age >= 18 AND NOT vip = TRUE",
    "tagged": "interests HAS ANY ('shoes', 'tech') OR interests IS NULL",
    "email": "CONSENTED(email)",
    "sampled": "SAMPLE(30, 7)",
    "carted_7d": "DID(cart_abandoned, WITHIN 7d)",
    "big_carts": "DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)",
    "no_purchase_7d": "DID(purchase, WITHIN 7d, COUNT = 0)",
    "big_carts_ever": "DID(cart_abandoned WHERE cart_value > 50)",
    "null_or_books_30d": "DID(cart_abandoned WHERE cart_value IS NULL OR category IN ('toys', 'books'), WITHIN 30d)",
    "no_big_purchase_7d": "DID(purchase WHERE amount > 60 OR amount = 5, COUNT = 0, WITHIN 7d)",
    "old_views": "DID(page_view, BEFORE NOW - 2d)",
    "recent_views": "DID(page_view, SINCE NOW - 3d, COUNT < 3)",
    "abandoned_unbought": "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
    "new_signups": "signup_at > NOW - 30d",
    "example": ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40"
                " AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)"
                " AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)"),
    "spenders_30d": "DID(purchase, SUM(amount) > 100, WITHIN 30d)",
    "low_spend_7d": "DID(purchase, SUM(amount) < 10, WITHIN 7d)",
    "avg_carts": "DID(cart_abandoned, AVG(cart_value) > 80, COUNT >= 2, WITHIN 14d)",
    "funnel": "SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 30d)",
    "repeat_carts": "SEQUENCE(cart_abandoned WHERE cart_value > 50 THEN cart_abandoned, SINCE NOW - 3d)",
    "variant_a": "BUCKET(42) BETWEEN 1000 AND 5499",
    "holdout_carted": "BUCKET(42) < 1000 AND NOT SEGMENT('carted_7d')",
    "fr_carted": "SEGMENT('fr') AND SEGMENT('carted_7d')",
    "fr_carted_or_new": "SEGMENT('fr_carted') OR (SEGMENT('new_signups') AND NOT SEGMENT('email'))",
}


def expand(text: str, segments: dict[str, str]) -> str:
    """``text`` with every SEGMENT('x') replaced by x's query (a plain ad-hoc query)."""
    return re.sub(r"SEGMENT\('([^']*)'\)", lambda m: f"({expand(segments[m.group(1)], segments)})", text)


class Clock:
    """A settable clock for the engine."""

    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


def make_engine(profiles: int = 3000, events: int = 30000, shards: int = 1, backend: str = "local",
                seed: int = 3) -> tuple[Engine, Clock, list[str]]:
    ds = generate(profiles=profiles, events=events, seed=seed, now_ms=NOW)
    engine = Engine(Schema.from_dict(ds.schema), shards=shards, backend=backend)
    clock = Clock(NOW)
    engine.clock = clock
    engine.refresh_ms = 0
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    return engine, clock, list(ds.profiles.ids)


@pytest.fixture
def env():
    engine, clock, ids = make_engine()
    yield engine, clock, ids
    engine.close()


def random_writes(rng: random.Random, ids: list[str], now: int, n: int) -> tuple[list[dict], list[dict]]:
    """A batch of random profile upserts and events around ``now`` (some ids new)."""
    profiles, events = [], []
    for _ in range(n):
        pid = rng.choice(ids) if rng.random() < 0.9 else f"new{rng.randrange(10**6)}"
        if rng.random() < 0.5:
            record: dict = {"id": pid}
            if rng.random() < 0.6:
                record["country"] = rng.choice(["FR", "BE", "DE", None])
            if rng.random() < 0.5:
                record["age"] = rng.choice([None, rng.randrange(10, 70)])
            if rng.random() < 0.3:
                record["vip"] = rng.choice([True, False, None])
            if rng.random() < 0.3:
                record["interests"] = rng.choice([[], ["shoes"], ["tech", "art"], None])
            if rng.random() < 0.3:
                record["signup_at"] = now - rng.randrange(0, 60) * DAY
            if rng.random() < 0.3:
                record["consent"] = {"email": rng.random() < 0.5}
            profiles.append(record)
        else:
            event = rng.choice(["cart_abandoned", "purchase", "page_view"])
            record = {"id": pid, "event": event, "ts": now + rng.randrange(-10 * DAY, 2 * HOUR)}
            if event == "cart_abandoned":
                record["cart_value"] = rng.choice([10.0, 60.0, 120.0, None])
            if event == "purchase":
                record["amount"] = rng.choice([5.0, 49.99, 120.5, None])
            events.append(record)
    return profiles, events


def assert_exact(engine: Engine, clock: Clock, names: dict[str, str], sample_ids: list[str]) -> None:
    """Every saved segment equals a fresh ad-hoc query of its text; membership agrees with both."""
    members = {}
    kept_counts = engine.sizes.current()  # the member counts the shards keep through every change
    for name, text in names.items():
        saved = engine.ids(f"SEGMENT('{name}')")
        assert saved == engine.ids(expand(text, names), now=clock.now), name
        assert engine.get_segment(name)["count"] == len(saved) == kept_counts[name]
        members[name] = set(saved)
    for pid in sample_ids:
        assert engine.membership(pid) == sorted(n for n, m in members.items() if pid in m), pid


def test_saved_segments_stay_exact_under_writes_and_time(env):
    engine, clock, ids = env
    for name, text in SEGMENTS.items():
        engine.create_segment(name, text)
    rng = random.Random(11)
    assert_exact(engine, clock, SEGMENTS, rng.sample(ids, 50))
    for _ in range(12):
        clock.now += rng.choice([0, 1, 7 * 60_000, 5 * HOUR, DAY + 17, 3 * DAY])
        profiles, events = random_writes(rng, ids, clock.now, 60)
        engine.upsert_profiles(profiles)
        engine.track_events(events)
        touched = [r["id"] for r in profiles + events]
        assert_exact(engine, clock, SEGMENTS, touched[:30] + rng.sample(ids, 20))


def test_time_alone_moves_members_out_of_windows(env):
    engine, clock, ids = env
    engine.create_segment("carted_7d", "DID(cart_abandoned, WITHIN 7d)")
    before = engine.count("SEGMENT('carted_7d')")
    assert before > 0
    clock.now += 8 * DAY  # no event is newer than NOW: everyone ages out
    assert engine.count("SEGMENT('carted_7d')") == 0
    assert engine.get_segment("carted_7d")["as_of_ms"] == clock.now


def test_refresh_reevaluates_only_rows_crossing_a_time_edge(env):
    engine, clock, ids = env
    engine.create_segment("carted_7d", "DID(cart_abandoned, WITHIN 7d)")
    shard = engine.shards[0]
    full, restricted = [], []
    evaluate, visit = shard.saved.restricted.evaluate, shard.saved.restricted.visit
    shard.executor.evaluate = shard.saved.restricted.evaluate = lambda step, now: full.append(1) or evaluate(step, now)
    shard.saved.restricted.visit = lambda step, found: restricted.append(len(found or ())) or visit(step, found)
    clock.now += HOUR
    engine.refresh_segments()
    assert full == []
    assert 0 < restricted[0] < len(ids) // 20  # only the rows with events in the hour that aged out
    assert engine.ids("SEGMENT('carted_7d')") == engine.ids("DID(cart_abandoned, WITHIN 7d)", now=clock.now)


@pytest.mark.parametrize("text", [
    "DID(page_view)", "DID(page_view, WITHIN 1d)", "DID(purchase, SINCE NOW - 2d)",
    "DID(cart_abandoned, WITHIN 7d, COUNT = 0)", "DID(purchase, COUNT < 1)",
    "DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)", "DID(page_view, COUNT < 3, WITHIN 3d)",
    "DID(purchase, BEFORE NOW - 1d)", "DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
    "DID(page_view WHERE category IS NULL OR NOT category = 'books', COUNT = 2)"])
def test_restricted_presence_matches_the_full_evaluation(env, text):
    engine, clock, ids = env
    engine.track_events([{"id": ids[i], "event": e, "ts": NOW + (i + 1) * HOUR}  # some latest events in the future
                         for i in range(0, 200, 7) for e in ("page_view", "purchase", "cart_abandoned")])
    shard = engine.shards[0]
    step = engine.compile(text)
    rng = random.Random(1)
    for now in (NOW - DAY, NOW, NOW + 5 * HOUR, NOW + 3 * DAY):
        expected = shard.executor.evaluate(step, now)
        shard.saved.restricted.now = now
        for _ in range(5):
            found = BitMap(rng.sample(range(len(ids)), 40))
            assert shard.saved.restricted.visit(step, found) & found == expected & found


def test_future_events_count_once_the_clock_reaches_them(env):
    engine, clock, ids = env
    engine.create_segment("bought_1h", "DID(purchase, WITHIN 1h)")
    engine.track_events([{"id": "later", "event": "purchase", "ts": NOW + 10 * 60_000}])
    assert "bought_1h" not in engine.membership("later")
    clock.now += 10 * 60_000
    assert engine.membership("later") == ["bought_1h"]
    clock.now += HOUR
    assert engine.membership("later") == []


def test_read_your_writes(env):
    engine, clock, ids = env
    engine.create_segment("vip_fr", "vip = TRUE AND country = 'FR'")
    engine.upsert_profiles([{"id": "x1", "vip": True, "country": "FR"}])
    assert engine.membership("x1") == ["vip_fr"]
    engine.upsert_profiles([{"id": "x1", "country": None}])
    assert engine.membership("x1") == []
    assert "x1" not in engine.ids("SEGMENT('vip_fr')")


def test_membership_restricted_to_names(env):
    engine, clock, ids = env
    engine.create_segment("all", "ALL")
    engine.create_segment("none", "NOT ALL")
    engine.create_segment("fr", "country = 'FR'")
    engine.upsert_profiles([{"id": "m1", "country": "FR"}])
    assert engine.membership("m1") == ["all", "fr"]
    assert engine.membership("m1", ["fr", "none"]) == ["fr"]
    with pytest.raises(SegmentNotFound, match="unknown segment 'nope'"):
        engine.membership("m1", ["fr", "nope"])
    with pytest.raises(ProfileNotFound, match="unknown profile 'nobody'"):
        engine.membership("nobody")


def test_membership_with_more_than_64_segments(env):
    engine, clock, ids = env
    for i in range(130):
        engine.create_segment(f"s{i:03d}", f"age >= {i % 65}")
    engine.upsert_profiles([{"id": "old", "age": 64}])
    assert engine.membership("old") == [f"s{i:03d}" for i in range(130)]
    engine.upsert_profiles([{"id": "old", "age": 3}])
    assert engine.membership("old") == sorted(f"s{i:03d}" for i in range(130) if i % 65 <= 3)


def test_references_update_their_readers(env):
    engine, clock, ids = env
    engine.create_segment("base", "country = 'FR'")
    engine.create_segment("reader", "SEGMENT('base') AND vip = TRUE")
    engine.create_segment("reader2", "NOT SEGMENT('reader')")
    engine.create_segment("base", "country = 'DE'", replace=True)
    names = {"base": "country = 'DE'", "reader": "SEGMENT('base') AND vip = TRUE", "reader2": "NOT SEGMENT('reader')"}
    assert_exact(engine, clock, names, ids[:20])
    assert [s["name"] for s in engine.list_segments()] == ["base", "reader", "reader2"]
    assert engine.get_segment("reader")["depends_on"] == ["base"]


def test_cycles_and_bad_definitions_are_refused(env):
    engine, clock, ids = env
    engine.create_segment("a", "country = 'FR'")
    engine.create_segment("b", "SEGMENT('a') AND age > 30")
    with pytest.raises(QueryError, match=r"segment reference cycle: a -> b -> a"):
        engine.create_segment("a", "SEGMENT('b')", replace=True)
    with pytest.raises(QueryError, match=r"segment reference cycle: self -> self"):
        engine.create_segment("self", "SEGMENT('self')")
    with pytest.raises(SegmentNotFound, match="unknown segment 'zz'"):
        engine.create_segment("c", "SEGMENT('zz')")
    with pytest.raises(SegmentExists, match="segment 'a' already exists"):
        engine.create_segment("a", "ALL")
    with pytest.raises(QueryError, match="column 7"):
        engine.create_segment("bad", "age = 'x'")
    with pytest.raises(SegmentInUse, match="segment 'a' is read by 'b'"):
        engine.delete_segment("a")
    assert engine.get_segment("a")["query"] == "country = 'FR'"  # nothing changed
    assert [s["name"] for s in engine.list_segments()] == ["a", "b"]
    engine.delete_segment("b")
    engine.delete_segment("a")
    assert engine.list_segments() == []
    with pytest.raises(SegmentNotFound):
        engine.get_segment("a")
    with pytest.raises(SegmentNotFound):
        engine.count("SEGMENT('a') AND NOT ALL")  # checked even when nothing would be read


def test_deleted_slot_is_reused_without_stale_members(env):
    engine, clock, ids = env
    engine.create_segment("one", "ALL")
    engine.delete_segment("one")
    engine.create_segment("two", "NOT ALL")
    assert engine.membership(ids[0]) == []


def test_profile_record(env):
    engine, clock, ids = env
    engine.upsert_profiles([{"id": "p1", "age": 31, "interests": ["tech", "shoes"], "consent": {"email": True}}])
    record = engine.profile("p1")
    assert record["id"] == "p1" and record["age"] == 31 and record["interests"] == ["shoes", "tech"]
    assert record["consent"] == {"email": True, "sms": False, "push": False, "ads": False}
    with pytest.raises(ProfileNotFound):
        engine.profile("nobody")


@pytest.mark.parametrize("backend", ["local", "process"])
def test_two_shards(backend):
    engine, clock, ids = make_engine(profiles=1500, events=15000, shards=2, backend=backend)
    try:
        names = {k: SEGMENTS[k] for k in ("fr", "carted_7d", "big_carts", "fr_carted", "sampled")}
        for name, text in names.items():
            engine.create_segment(name, text)
        rng = random.Random(5)
        sub = engine.watch(["fr"])
        for _ in range(4):
            clock.now += rng.choice([HOUR, 2 * DAY])
            profiles, events = random_writes(rng, ids, clock.now, 40)
            engine.upsert_profiles(profiles)
            engine.track_events(events)
            assert_exact(engine, clock, names, [r["id"] for r in profiles[:10]] + ids[:10])
        assert all(c.segment == "fr" for c in sub.get(timeout=0, max_items=10**6))
        assert engine.get_segment("fr")["count"] == engine.count("country = 'FR'")
    finally:
        engine.close()
