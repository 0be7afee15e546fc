"""Merges and aliases against the naive oracle (tests/oracle_identity.py): random interleavings of
upserts, events and merges (chains, unknown sources and targets, cross-shard, batches) at 1, 2 and
3 shards, in memory and replayed from a data directory; hand-written cases pin the rules."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import Engine, Schema
from engine.columns import ProfileBatch, column_from_values
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA

try:
    from oracle_identity import IdentityStore
except ImportError:  # tests/ imported as a package
    from tests.oracle_identity import IdentityStore

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
NOW = 1_800_000_000_000
DAY = 86_400_000
QUERIES = [
    "ALL", "age > 30", "age IS NULL", "country = 'FR'", "NOT country IN ('FR', 'BE')", "interests HAS 'a'",
    "interests IS NULL", "vip = TRUE", "CONSENTED(email)", "NOT CONSENTED(sms)", "CONSENTED(push) OR CONSENTED(ads)",
    "DID(purchase)", "DID(purchase, COUNT >= 2)", "DID(page_view, COUNT = 0)", "DID(page_view, WITHIN 3d)",
    "DID(purchase WHERE amount > 20)", "DID(cart_abandoned WHERE category = 'shoes', COUNT >= 1)",
    "DID(purchase, AFTER LAST cart_abandoned)", "SAMPLE(50, 3)",
    # the source's events stay in its shard's runs, marked dead, until compacted: every reader of runs skips them
    "DID(purchase, SUM(amount) > 20)", "DID(purchase, SUM(amount) < 10)", "DID(page_view, COUNT >= 2, WITHIN 3d)",
    "SEQUENCE(page_view THEN purchase)", "DID(cart_abandoned WHERE category = 'books', COUNT = 1)",
]


def random_profile(rng: random.Random, pid: str) -> dict[str, Any]:
    record: dict[str, Any] = {"id": pid}
    for name, values in (("age", [None, 20, 35, 50]), ("country", [None, "FR", "BE", "US"]),
                         ("interests", [None, [], ["a"], ["a", "b"]]), ("vip", [None, True, False])):
        if rng.random() < 0.4:
            record[name] = rng.choice(values)
    if rng.random() < 0.5:
        record["consent"] = {p: rng.random() < 0.5 for p in rng.sample(["email", "sms", "push", "ads"], 2)}
    return record


def random_event(rng: random.Random, pid: str) -> dict[str, Any]:
    event = rng.choice(["purchase", "page_view", "cart_abandoned"])
    record: dict[str, Any] = {"id": pid, "event": event, "ts": NOW - rng.randrange(6 * DAY)}
    if event == "purchase" and rng.random() < 0.7:
        record["amount"] = rng.choice([5.0, 25.5, None])
    if event != "purchase" or rng.random() < 0.5:
        record["category"] = rng.choice(["shoes", "books", None])
    return record


def random_ops(seed: int, steps: int = 40, pool: int = 14) -> list[tuple[str, Any]]:
    """A random interleaving of writes and merges over a small id pool (so chains and repeats happen)."""
    rng = random.Random(seed)
    ids = [f"u{i}" for i in range(pool)]
    ops: list[tuple[str, Any]] = []
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.3:
            ops.append(("upsert", [random_profile(rng, rng.choice(ids)) for _ in range(rng.randrange(1, 4))]))
        elif roll < 0.6:
            ops.append(("track", [random_event(rng, rng.choice(ids)) for _ in range(rng.randrange(1, 6))]))
        elif roll < 0.8:
            ops.append(("merge", (rng.choice(ids), rng.choice(ids))))
        elif roll < 0.9:
            ops.append(("erase", rng.sample(ids, rng.randrange(1, 3))))
        else:
            ops.append(("merge_many", [(rng.choice(ids), rng.choice(ids)) for _ in range(rng.randrange(1, 5))]))
    return ops


def run(engine: Engine, oracle: IdentityStore, ops: list[tuple[str, Any]], columnar: bool = False) -> None:
    """Apply ``ops`` to both; ``columnar``: upserts as columnar profile batches (one per record)."""
    for kind, arg in ops:
        if kind == "upsert" and columnar:
            for record in arg:
                assert engine.load_profiles(profile_batch(record)) == 1
            oracle.upsert(arg)
        elif kind == "upsert":
            assert engine.upsert_profiles(arg) == len(arg)
            oracle.upsert(arg)
        elif kind == "track":
            assert engine.track_events(arg) == len(arg)
            oracle.track(arg)
        elif kind == "merge":
            engine.merge(*arg)
            oracle.merge(*arg)
        elif kind == "erase":
            assert engine.delete_profiles(arg) == oracle.delete(arg)
        else:
            engine.merge_many(arg)
            oracle.merge_many(arg)


def profile_batch(record: dict[str, Any]) -> ProfileBatch:
    """One upsert record as a columnar batch of one profile (the same effect)."""
    columns = {name: column_from_values(SCHEMA.attributes[name].type, [value])
               for name, value in record.items() if name not in ("id", "consent")}
    consents = {purpose: np.array([granted]) for purpose, granted in record.get("consent", {}).items()}
    return ProfileBatch([record["id"]], columns, consents)


def comparable(export: dict[str, Any] | None) -> Any:
    """An export with its events in a canonical order (the order within a timestamp tie is unspecified)."""
    if export is None:
        return None
    return {**export, "events": sorted(export["events"], key=lambda e: (e["ts"], e["event"], repr(sorted(e.items()))))}


def assert_matches(engine: Engine, oracle: IdentityStore, prefix: str = "") -> None:
    """Every query's ids (among those starting with ``prefix``) and every export equal the oracle's."""
    for text in QUERIES:
        expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), NOW))
        everything = engine.ids(text, now=NOW)
        got = [i for i in everything if i.startswith(prefix)]
        assert got == expected, f"{prefix}: {text}"
        # no departed or erased row counted: their forgotten ids would show as empty or zeroed ones
        assert engine.count(text, now=NOW) == len(everything) and all(i and "\x00" not in i for i in everything), text
    for pid in sorted({*oracle.attrs, *oracle.aliases, *(prefix + f"u{i}" for i in range(14))}):
        assert comparable(engine.export_profile(pid)) == comparable(oracle.export(pid)), pid


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_random_merges_match_oracle(shards: int) -> None:
    with Engine(SCHEMA, shards=shards) as engine:
        for seed in range(12 if shards == 1 else 5):
            oracle = IdentityStore(CONTRACT_SCHEMA)
            prefix = f"s{seed}-"
            run(engine, oracle, [(kind, _prefixed(arg, prefix)) for kind, arg in random_ops(seed)])
            assert_matches(engine, oracle, prefix)


#: Saved segments kept through merges: a merge evaluates a segment again on the rows that received
#: data only if it reads what they received (attributes, consents, event types), and its departed
#: rows leave every segment without evaluation, so each kind of read is here.
SAVED = {
    "buyers": "DID(purchase)", "viewed_twice": "DID(page_view, COUNT >= 2)", "never_viewed": "DID(page_view, COUNT = 0)",
    "shoe_carts": "DID(cart_abandoned WHERE category = 'shoes')", "older": "age > 30", "no_age": "age IS NULL",
    "fr_vip": "country = 'FR' AND vip = TRUE", "tagged": "interests HAS 'a'", "email": "CONSENTED(email)",
    "not_sms": "NOT CONSENTED(sms)", "sampled": "SAMPLE(50, 3)", "everyone": "ALL",
    "older_buyers": "SEGMENT('older') AND SEGMENT('buyers')", "bought_after_cart": "DID(purchase, AFTER LAST cart_abandoned)",
    "not_email_buyers": "NOT SEGMENT('email') AND DID(purchase, SUM(amount) > 20)",
}


@pytest.mark.parametrize("shards", [1, 2])
def test_saved_segments_follow_random_merges(shards: int) -> None:
    """Saved segments of every kind of read, kept through random upserts (every other round as columnar
    batches), events, merges and erasures, equal the oracle's answer to their queries after each round."""
    with Engine(SCHEMA, shards=shards) as engine:
        engine.clock = lambda: NOW
        for name, text in SAVED.items():
            engine.create_segment(name, text)
        for seed in range(8 if shards == 1 else 4):
            oracle = IdentityStore(CONTRACT_SCHEMA)
            prefix = f"s{seed}-"
            run(engine, oracle, [(kind, _prefixed(arg, prefix)) for kind, arg in random_ops(500 + seed)],
                columnar=seed % 2 == 1)
            for name, text in SAVED.items():
                for ref, referenced in SAVED.items():  # the oracle reads a reference as its query
                    text = text.replace(f"SEGMENT('{ref}')", f"({referenced})")
                expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), NOW))
                everything = engine.ids(f"SEGMENT('{name}')", now=NOW)
                assert [i for i in everything if i.startswith(prefix)] == expected, f"seed {seed}: {name}: {text}"
                # no departed or erased row kept: its forgotten id would show as an empty or zeroed one
                assert all(i and "\x00" not in i for i in everything), name
                assert engine.count(f"SEGMENT('{name}')", now=NOW) == len(everything) == engine.get_segment(name)["count"]


def _prefixed(arg: Any, prefix: str) -> Any:
    """Ids of one round prefixed, so rounds on one engine stay apart."""
    if isinstance(arg, tuple):
        return (prefix + arg[0], prefix + arg[1])
    if arg and isinstance(arg[0], str):
        return [prefix + i for i in arg]
    if arg and isinstance(arg[0], tuple):
        return [(prefix + a, prefix + b) for a, b in arg]
    return [{**record, "id": prefix + record["id"]} for record in arg]


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_random_merges_replay_from_the_log_and_snapshots(tmp_path: Path, shards: int) -> None:
    """The same interleavings with a data_dir: reopening (log only, then snapshot + log) answers the same."""
    ops = random_ops(100 + shards, steps=60)
    oracle = IdentityStore(CONTRACT_SCHEMA)
    half = len(ops) // 2
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        run(engine, oracle, ops[:half])
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        assert_matches(engine, oracle)
        engine.snapshot()
        run(engine, oracle, ops[half:])
        assert_matches(engine, oracle)
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        assert_matches(engine, oracle)
        engine.merge("fresh", "u1")  # the rebuilt alias index routes later merges and writes
        oracle.merge("fresh", "u1")
        engine.track_events([{"id": "fresh", "event": "purchase", "ts": NOW - 1}])
        oracle.track([{"id": "fresh", "event": "purchase", "ts": NOW - 1}])
        assert_matches(engine, oracle)


@pytest.fixture(params=[1, 2])
def engine(request: pytest.FixtureRequest) -> Any:
    with Engine(SCHEMA, shards=request.param) as eng:
        yield eng


def test_merge_rules(engine: Engine) -> None:
    """Attributes: the target's non-null values win (an empty tags list is a value); consents: a withdrawal wins."""
    engine.upsert_profiles([
        {"id": "src", "age": 20, "country": "FR", "interests": ["a"],
         "consent": {"email": True, "sms": True, "push": False}},
        {"id": "dst", "age": 40, "interests": [], "consent": {"email": False, "sms": True}},
    ])
    engine.track_events([{"id": "src", "event": "purchase", "ts": NOW - 2, "amount": 5.0},
                         {"id": "dst", "event": "purchase", "ts": NOW - 1}])
    assert engine.merge("src", "dst") == 1
    assert engine.profile("dst") == {"id": "dst", "age": 40, "country": "FR", "interests": [],
                                     "consent": {"email": False, "sms": True, "push": False, "ads": False}}
    assert engine.profile("src")["id"] == "dst"
    assert engine.ids("ALL", now=NOW) == ["dst"]
    assert engine.ids("DID(purchase, COUNT = 2) AND DID(purchase WHERE amount = 5)", now=NOW) == ["dst"]
    assert engine.ids("CONSENTED(sms) AND NOT CONSENTED(email) AND NOT CONSENTED(push)", now=NOW) == ["dst"]


def test_retried_and_degenerate_merges_change_nothing(engine: Engine) -> None:
    engine.upsert_profiles([{"id": "a"}, {"id": "b"}])
    assert engine.merge("a", "b") == 1
    assert engine.merge("a", "b") == 0  # retried: both resolve to b
    assert engine.merge("b", "a") == 0
    assert engine.merge("zz", "zz") == 0  # both unknown and equal
    assert engine.ids("ALL", now=NOW) == ["b"]


def test_unknown_source_becomes_an_alias_and_unknown_target_is_created(engine: Engine) -> None:
    assert engine.merge("ghost", "new") == 1
    assert engine.ids("ALL", now=NOW) == ["new"]
    assert engine.profile("new") == {"id": "new", "consent": {"email": False, "sms": False, "push": False,
                                                              "ads": False}}
    engine.upsert_profiles([{"id": "ghost", "age": 7}])  # lands on the canonical profile
    engine.track_events([{"id": "ghost", "event": "page_view", "ts": NOW - 1}])
    assert engine.ids("age = 7 AND DID(page_view)", now=NOW) == ["new"]


def test_chains_inside_one_batch(engine: Engine) -> None:
    """merge_many applies pairs in order: a -> b -> c moves a's and b's data to c; aliases resolve transitively."""
    engine.upsert_profiles([{"id": "a", "age": 1}, {"id": "b", "country": "FR"}, {"id": "c"}])
    engine.track_events([{"id": "a", "event": "page_view", "ts": NOW - 3}, {"id": "b", "event": "page_view",
                                                                             "ts": NOW - 2}])
    assert engine.merge_many([("a", "b"), ("b", "c"), ("a", "c")]) == 2
    assert engine.ids("ALL", now=NOW) == ["c"]
    assert engine.ids("age = 1 AND country = 'FR' AND DID(page_view, COUNT = 2)", now=NOW) == ["c"]
    assert engine.merge("c", "d") == 1
    engine.upsert_profiles([{"id": "a", "vip": True}])
    assert engine.ids("vip = TRUE AND age = 1", now=NOW) == ["d"]


def test_a_saved_segment_sees_the_source_leave_and_the_target_enter(engine: Engine) -> None:
    engine.upsert_profiles([{"id": "src", "age": 50}, {"id": "dst"}])
    engine.create_segment("old", "age > 40")
    stream = engine.watch(["old"])
    engine.merge("src", "dst")
    assert engine.ids("SEGMENT('old')", now=NOW) == ["dst"]
    assert engine.sizes.current() == {"old": 1}  # the member counts the shards keep
    assert engine.membership("src") == ["old"]
    changes = stream.get(timeout=1)
    assert sorted((c.kind, c.segment, c.id) for c in changes) == [("entered", "old", "dst"), ("exited", "old", "src")]


def test_erasure_through_an_alias_forgets_every_id(engine: Engine) -> None:
    engine.upsert_profiles([{"id": "a", "age": 50, "consent": {"email": True}}, {"id": "b"}, {"id": "keep"}])
    engine.track_events([{"id": "a", "event": "purchase", "ts": NOW - 1, "amount": 3.0}])
    engine.merge("a", "b")
    engine.create_segment("old", "age > 40")
    stream = engine.watch(["old"])
    assert engine.delete_profiles(["a", "a", "nobody"]) == 1  # through the alias; unknown ids ignored
    assert engine.ids("ALL", now=NOW) == ["keep"]
    assert engine.ids("SEGMENT('old')", now=NOW) == [] and engine.count("DID(purchase)", now=NOW) == 0
    assert engine.sizes.current() == {"old": 0}
    assert [(c.kind, c.segment, c.id) for c in stream.get(timeout=1)] == [("exited", "old", "b")]
    assert engine.export_profile("a") is None and engine.export_profile("b") is None
    engine.upsert_profiles([{"id": "a"}])  # a later write naming an erased id creates a new profile
    assert engine.ids("ALL", now=NOW) == ["a", "keep"]
    assert engine.export_profile("a") == {"id": "a", "aliases": [], "attributes": {}, "consent": {}, "events": []}
    assert engine.delete_profiles([]) == 0


def test_export_format(engine: Engine) -> None:
    engine.upsert_profiles([{"id": "p", "interests": ["z", "a"], "signup_at": "2026-01-01T00:00:00Z", "age": None,
                             "vip": False, "consent": {"sms": False}}])
    engine.track_events([{"id": "p", "event": "purchase", "ts": 20, "amount": 9.5, "category": None},
                         {"id": "q", "event": "page_view", "ts": 10, "category": "shoes"},
                         {"id": "p", "event": "cart_abandoned", "ts": 20}])
    engine.merge_many([("q", "p"), ("r", "p")])
    assert engine.export_profile("q") == {
        "id": "p", "aliases": ["q", "r"],
        "attributes": {"interests": ["a", "z"], "signup_at": 1767225600000, "vip": False},
        "consent": {"sms": False},
        "events": [{"event": "page_view", "ts": 10, "category": "shoes"}, {"event": "cart_abandoned", "ts": 20},
                   {"event": "purchase", "ts": 20, "amount": 9.5}]}
    assert engine.export_profile("unknown") is None


def test_an_erasure_survives_a_restart(tmp_path: Path) -> None:
    for shards in (1, 2):
        path = tmp_path / str(shards)
        with Engine(SCHEMA, shards=shards, data_dir=str(path)) as engine:
            engine.upsert_profiles([{"id": "a", "age": 1}, {"id": "b", "age": 2}])
            engine.merge("x", "a")
            assert engine.delete_profiles(["x"]) == 1
        with Engine(SCHEMA, shards=shards, data_dir=str(path)) as engine:
            assert engine.ids("ALL", now=NOW) == ["b"]
            assert engine.export_profile("x") is None
            engine.snapshot()
        with Engine(SCHEMA, shards=shards, data_dir=str(path)) as engine:
            assert engine.ids("ALL", now=NOW) == ["b"] and engine.export_profile("x") is None


def test_a_logged_merge_whose_payload_carries_its_events_still_applies() -> None:
    """Merge records whose payloads hold the events in lists (the planner sends them as an events step
    now) replay as before: the events land on the target, the source becomes its alias."""
    from engine.commands import Merge

    with Engine(SCHEMA, shards=1, backend="local") as eng:
        eng.upsert_profiles([{"id": "a", "age": 40}, {"id": "b"}])
        eng.track_events([{"id": "a", "event": "purchase", "ts": NOW - DAY, "amount": 5.0}])
        payload = {"attrs": {"age": 40}, "consents": {}, "aliases": ["a"],
                   "events": {"purchase": {"ts": [NOW - DAY], "props": {"amount": [5.0], "category": [None]}}}}
        eng.write(Merge([("out", "a"), ("in", "b", payload)], NOW))
        assert eng.ids("ALL", now=NOW) == ["b"]
        assert eng.export_profile("a") == {"id": "b", "aliases": ["a"], "attributes": {"age": 40}, "consent": {},
                                           "events": [{"event": "purchase", "ts": NOW - DAY, "amount": 5.0}]}
