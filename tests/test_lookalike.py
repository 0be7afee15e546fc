"""Lookalikes (engine.lookalike): quality on a planted group, scores against the engine's own
answers, the same ranking at every shard count, seed and within handling, and the errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import engine.exec.lookalike as shard_lookalike
import engine.lookalike as lookalike
from engine import DataError, Engine, Schema
from engine.errors import LookalikeError
from loaders.generator import generate
from loaders.planted import PARTS, PATTERN, PlantedGroup

NOW = 1_795_168_800_000  # 2026-11-20T10:00:00Z


@pytest.fixture(scope="module")
def ds():
    return generate(10_000, 80_000, seed=5, now_ms=NOW, plant=PlantedGroup())


@pytest.fixture(scope="module")
def halves(ds):
    """The seed (a random half of the planted group) and the held-out other half."""
    members = np.array(ds.planted)
    order = np.random.default_rng(11).permutation(len(members))
    half = len(members) // 2
    return sorted(members[order[:half]].tolist()), set(members[order[half:]].tolist())


@pytest.fixture(scope="module", params=[1, 2], ids=["shards1", "shards2"])
def eng(request, ds):
    with Engine(Schema.from_dict(ds.schema), shards=request.param) as engine:
        engine.load_profiles(ds.profiles)
        for batch in ds.events:
            engine.load_events(batch)
        yield engine


@pytest.fixture(scope="module")
def everything(eng, halves):
    """Every candidate scored (threshold 0) from the planted seed."""
    return eng.lookalike(halves[0], threshold=0.0, now=NOW)


def test_the_planted_group_is_found_with_auc_above_0_85(ds, halves, everything):
    seed, held_out = halves
    assert len(ds.planted) == 200 and len(seed) == 100
    result = everything
    assert result["seed"] == 100 and result["candidates"] == 10_000 - 100
    assert len(result["profiles"]) == 9_900
    labels = [p["id"] in held_out for p in result["profiles"]]
    auc = roc_auc_score(labels, [p["score"] for p in result["profiles"]])
    assert auc >= 0.85, auc


def test_no_single_pattern_part_captures_the_group(eng, halves, everything):
    """Ranking by one part of the pattern (in it or not), or by the whole pattern, stays below 0.85."""
    ids = [p["id"] for p in everything["profiles"]]
    labels = [profile_id in halves[1] for profile_id in ids]
    for part in PARTS + (PATTERN,):
        hits = set(eng.ids(part, now=NOW))
        assert roc_auc_score(labels, [profile_id in hits for profile_id in ids]) < 0.85, part


def check_scores(eng, everything):
    """Each score is the logistic function of the intercept plus the weights of the features the
    profile is in (by the engine's own answer to each feature's query); its features are the first
    three of those with a positive weight, by decreasing weight."""
    weights = everything["model"]["weights"]
    members = {w["feature"]: set(eng.ids(w["feature"], now=NOW)) for w in weights}
    for profile in everything["profiles"][:25] + everything["profiles"][-25:]:
        logit = everything["model"]["intercept"] + sum(w["weight"] for w in weights if profile["id"] in members[w["feature"]])
        assert profile["score"] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-5, abs=1e-7)
        positive = sorted((w for w in weights if w["weight"] > 0 and profile["id"] in members[w["feature"]]),
                          key=lambda w: (-w["weight"], w["feature"]))
        assert profile["features"] == [w["feature"] for w in positive[:3]]


def test_scores_are_the_weights_of_the_features_each_profile_is_in(eng, halves, everything):
    assert everything["trained_on"]["pairs"] == 0
    check_scores(eng, everything)


def test_pairwise_features_are_scored_as_the_and_of_their_parts(eng, halves, monkeypatch):
    monkeypatch.setattr(lookalike, "PAIR_BASE", 4)
    result = eng.lookalike(halves[0], size=200, now=NOW)
    assert result["trained_on"]["pairs"] == 6
    check_scores(eng, result)


def test_top_profiles_are_sorted_exclude_the_seed_and_match_the_full_ranking(eng, halves, everything):
    top = eng.lookalike(halves[0], size=40, now=NOW)
    assert len(top["profiles"]) == 40
    assert not {p["id"] for p in top["profiles"]} & set(halves[0])
    assert [(p["id"], p["score"]) for p in top["profiles"]] == \
        [(p["id"], p["score"]) for p in everything["profiles"][:40]]
    keys = [(-p["score"], p["id"]) for p in everything["profiles"]]
    assert keys == sorted(keys)


def test_the_same_ranking_at_every_shard_count(ds, halves, monkeypatch):
    for module in (lookalike, shard_lookalike):  # numeric bin edges from a sample of 500 values
        monkeypatch.setattr(module, "VALUE_SAMPLE", 500)
    results = []
    for shards in (1, 3):
        with Engine(Schema.from_dict(ds.schema), shards=shards, backend="local") as engine:
            engine.load_profiles(ds.profiles)
            for batch in ds.events:
                engine.load_events(batch)
            results.append(engine.lookalike(halves[0], size=30, now=NOW))
            assert set(results[-1].pop("ms")) == {"sample", "train", "score"}  # milliseconds per round
    assert results[0] == results[1]


def test_threshold_keeps_the_scores_at_or_above_it(eng, halves, everything):
    result = eng.lookalike(halves[0], threshold=0.9, now=NOW)
    expected = [p for p in everything["profiles"] if p["score"] >= 0.9 - 1e-12]
    assert [p["id"] for p in result["profiles"]] == [p["id"] for p in expected]
    both = eng.lookalike(halves[0], threshold=0.9, size=5, now=NOW)
    assert both["profiles"] == result["profiles"][:5]


def test_a_query_seed_and_within(eng):
    result = eng.lookalike("country = 'FR' AND vip = TRUE", within="age >= 30", size=50, now=NOW)
    assert result["seed"] == eng.count("country = 'FR' AND vip = TRUE", now=NOW)
    allowed = set(eng.ids("age >= 30 AND NOT (country = 'FR' AND vip = TRUE)", now=NOW))
    assert result["candidates"] == len(allowed)
    assert {p["id"] for p in result["profiles"]} <= allowed and len(result["profiles"]) == 50
    assert [t["feature"] for t in result["top_features"][:2]] == ["vip = TRUE", "country = 'FR'"] or \
        {"vip = TRUE", "country = 'FR'"} & {t["feature"] for t in result["top_features"][:3]}


def test_a_saved_segment_as_the_seed(eng):
    eng.create_segment("fr_vips", "country = 'FR' AND vip = TRUE")
    assert eng.lookalike("SEGMENT('fr_vips')", size=20, now=NOW)["profiles"] == \
        eng.lookalike("country = 'FR' AND vip = TRUE", size=20, now=NOW)["profiles"]


def test_seed_ids_resolve_aliases():
    schema = Schema.from_dict(generate(0, 0, now_ms=NOW).schema)
    with Engine(schema, shards=2, backend="local") as small:
        small.upsert_profiles([{"id": f"p{i:02d}", "country": "FR" if i % 2 else "DE", "vip": i < 10}
                               for i in range(60)])
        small.merge("old-account", "p01")
        result = small.lookalike(["old-account", "p03", "p03", "p05", "nobody"], size=60, now=NOW)
        assert (result["seed"], result["unknown_seed_ids"], result["candidates"]) == (3, ["nobody"], 57)
        assert {p["id"] for p in result["profiles"]} == {f"p{i:02d}" for i in range(60)} - {"p01", "p03", "p05"}
        assert result["profiles"][0]["features"][:1] == ["vip = TRUE"]


def test_unknown_seed_ids_are_reported(eng, halves):
    result = eng.lookalike(halves[0][:50] + ["nobody", "ghost"], size=5, now=NOW)
    assert result["seed"] == 50
    assert result["unknown_seed_ids"] == ["ghost", "nobody"]


@pytest.mark.parametrize("seed,kwargs,message", [
    ("age > 200", {"size": 5}, "the seed has no profiles"),
    (["nobody", "ghost"], {"size": 5}, "none of the 2 seed ids is a live profile"),
    ("ALL", {"size": 5}, "the seed (10000 profiles) covers every profile of within: nothing is left to rank"),
    ("vip = TRUE", {"size": 5, "within": "vip = TRUE"}, "covers every profile of within"),
    ("vip = TRUE", {"size": 5, "within": "age > 200"}, "within selects no profiles: nothing to rank"),
    ("vip = TRUE", {}, "give size (how many profiles) or threshold (the lowest score), or both"),
    ("vip = TRUE", {"size": 0}, "size must be a positive integer, not 0"),
    ("vip = TRUE", {"threshold": 1.5}, "threshold must be a score between 0 and 1, not 1.5"),
    (42, {"size": 1}, "seed must be a query string or a list of ids"),
])
def test_errors_say_what_is_wrong(eng, seed, kwargs, message):
    with pytest.raises(LookalikeError) as error:
        eng.lookalike(seed, now=NOW, **kwargs)
    assert message in str(error.value)


def test_a_bad_seed_id_or_query_names_its_position(eng):
    with pytest.raises(DataError, match="record 1, field 'id': id must be a non-empty string"):
        eng.lookalike(["u00000001", ""], size=3, now=NOW)
    with pytest.raises(ValueError, match="column"):
        eng.lookalike("age >", size=3, now=NOW)


def test_vocabulary_samples_the_values_of_the_rows_with_the_smallest_id_hashes(monkeypatch) -> None:
    data = generate(3_000, 0, seed=5, now_ms=1_800_000_000_000)
    monkeypatch.setattr(shard_lookalike, "VALUE_SAMPLE", 50)  # stands for 20,000: 3,000 rows keep 8x as many
    with Engine(Schema.from_dict(data.schema), shards=1, backend="local") as eng:
        eng.load_profiles(data.profiles)
        shard = eng.shards[0]
        hashes = shard.profiles.idmap.row_hashes()
        for _ in range(2):  # the rows of low hashes are cached between calls
            values = shard_lookalike.vocabulary(shard)["values"]
            for name in ("age", "cart_value"):
                index = shard.profiles.indexes[name]
                rows = np.array(sorted(index.notnull), dtype=np.int64)
                smallest = rows[np.argsort(hashes[rows])[:50]]
                got_values, got_hashes = values[name]
                assert sorted(got_hashes.tolist()) == sorted(hashes[smallest].tolist())
                assert sorted(got_values.tolist()) == sorted(index.column.data[smallest].astype(float).tolist())
