"""Lookalikes: rank the profiles outside a seed by how much they resemble it.

Features are queries the engine already answers from its indexes (category values, tags, bools,
consents, numeric bins, timestamp recency, event recency and frequency), named by their text
(``country = 'FR'``, ``DID(purchase, COUNT >= 2, WITHIN 30d)``). Three rounds over the shards,
at one clock and one state:

1. counts: the seed's size, the candidates (``within`` minus the seed), and each shard's
   vocabulary (labels with counts, numeric samples), from which the coordinator names the features;
2. sample: the membership bits of a uniform sample of the seed (positives) and of the candidates
   (negatives), both drawn with ``SAMPLE`` so they are the same at any shard count;
3. score: each shard adds the trained weights over the feature bitmaps and returns its best
   candidates with the features that contributed most.

The model is scikit-learn's ``LogisticRegression`` (the ``ml`` extra) over the features, and
optionally (``PAIR_BASE``) over the pairwise products (ANDs) of the features most
over-represented in the seed. A group defined by a conjunction of independent conditions is
ranked well by the sum of its parts' log-odds already (a member has more of them), so pairs are
off by default.

>>> numeric_features("age", "int", np.arange(18, 91, dtype=np.float64), bins=4)
['age < 36', 'age BETWEEN 36 AND 53', 'age BETWEEN 54 AND 71', 'age >= 72']
"""
from __future__ import annotations

import gc
import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import LookalikeError, MissingExtra
from .plan.steps import Step
from .query.printer import format_literal, format_name, format_string
from .schema import Schema, check_id
from .shard.group import ShardGroup
from .exec.lookalike import VALUE_SAMPLE
from .shard.partition import shards_of

#: Most frequent labels of each category attribute (and tags of each tags attribute) used as features.
TOP_LABELS = 30
#: Quantile bins per int or float attribute.
NUMERIC_BINS = 8
#: Recency windows of timestamp attributes (``signup_at >= NOW - 30d``).
TIMESTAMP_WINDOWS = ("7d", "30d", "90d", "365d")
#: Event features per event type (``{e}`` is the type's name).
#: (Counts above 2 sort the window's events: 110 ms for page views at 1M profiles, so none are used.)
EVENT_FEATURES = ("DID({e}, WITHIN 7d)", "DID({e}, WITHIN 30d)", "DID({e})",
                  "DID({e}, COUNT >= 2, WITHIN 7d)", "DID({e}, COUNT >= 2, WITHIN 30d)")
#: Training sample: at most this many seed profiles, and this many candidates per seed profile
#: (at least MIN_NEGATIVES, at most MAX_NEGATIVES).
MAX_POSITIVES = 20_000
NEGATIVES_PER_POSITIVE = 2
MIN_NEGATIVES = 20_000
MAX_NEGATIVES = 40_000
#: The SAMPLE seed of the training sample.
SAMPLE_SEED = 7919
#: Features whose pairwise products (ANDs) are added: the most over-represented in the seed. None by
#: default: on the planted group (benchmarks/bench_lookalike.py) 10 or 16 base features (45 or 120
#: pairs) left the AUC unchanged or lower (0.9626 -> 0.9623 -> 0.9610) and doubled the training time.
PAIR_BASE = 0
#: Inverse regularisation strength of the logistic regression.
C = 1.0
#: Global top features reported.
TOP_FEATURES = 10


def numeric_features(name: str, kind: str, values: np.ndarray, bins: int = NUMERIC_BINS) -> list[str]:
    """Features of quantile bins of an int or float attribute from a sample of its ``values``."""
    if len(values) == 0:
        return []
    edges = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    if kind == "int":
        edges = np.unique(np.ceil(edges).astype(np.int64))
    else:
        edges = np.unique([float(f"{edge:.3g}") for edge in edges])
    edges = edges[edges > values.min()]
    name = format_name(name)
    if len(edges) == 0:
        return []
    lit = [format_literal(int(e) if kind == "int" else float(e)) for e in edges]
    features = [f"{name} < {lit[0]}"]
    for i in range(len(edges) - 1):
        if kind == "int":
            features.append(f"{name} BETWEEN {lit[i]} AND {format_literal(int(edges[i + 1]) - 1)}")
        else:
            features.append(f"{name} >= {lit[i]} AND {name} < {lit[i + 1]}")
    features.append(f"{name} >= {lit[-1]}")
    return features


def name_features(schema: Schema, vocabularies: Sequence[dict[str, Any]]) -> list[str]:
    """The feature queries for ``schema`` given every shard's vocabulary (labels, value samples)."""
    features: list[str] = []
    for attribute in schema.attributes.values():
        name, kind = format_name(attribute.name), attribute.type
        if kind in ("category", "tags"):
            totals: dict[str, int] = {}
            for vocabulary in vocabularies:
                for label, count in vocabulary["labels"].get(attribute.name, {}).items():
                    totals[label] = totals.get(label, 0) + count
            top = sorted(totals, key=lambda label: (-totals[label], label))[:TOP_LABELS]
            op = "=" if kind == "category" else "HAS"
            features += [f"{name} {op} {format_string(label)}" for label in sorted(top)]
        elif kind == "bool":
            features += [f"{name} = TRUE", f"{name} = FALSE"]
        elif kind == "timestamp":
            features += [f"{name} >= NOW - {window}" for window in TIMESTAMP_WINDOWS]
        else:
            features += numeric_features(attribute.name, kind, _value_sample(vocabularies, attribute.name))
    features += [f"CONSENTED({format_name(purpose)})" for purpose in schema.consents]
    for event in schema.events:
        features += [template.format(e=format_name(event)) for template in EVENT_FEATURES]
    return features


def _value_sample(vocabularies: Sequence[dict[str, Any]], name: str) -> np.ndarray:
    """The values of attribute ``name`` at the ``VALUE_SAMPLE`` rows with the smallest id hashes of all shards."""
    parts = [v["values"][name] for v in vocabularies if name in v["values"]]
    if not parts:
        return np.empty(0)
    values = np.concatenate([part[0] for part in parts])
    hashes = np.concatenate([part[1] for part in parts])
    if len(values) > VALUE_SAMPLE:
        values = values[np.argpartition(hashes, VALUE_SAMPLE)[:VALUE_SAMPLE]]
    return values


@dataclass
class Model:
    """A trained lookalike model: one weight per feature, then one per pair of features."""

    names: list[str]
    pairs: np.ndarray  # (k, 2) feature indexes
    weights: np.ndarray  # len(names) floats: the features, then the pairs
    intercept: float

    def credit(self) -> list[int]:
        """The numbers of the features with a positive weight, by decreasing weight (ties by name)."""
        positive = [j for j in range(len(self.names)) if self.weights[j] > 0]
        return sorted(positive, key=lambda j: (-self.weights[j], self.names[j]))

    def top(self, n: int | None = None) -> list[dict[str, Any]]:
        """The non-zero weights by decreasing magnitude (ties by name), the first ``n``."""
        order = sorted((j for j in range(len(self.names)) if self.weights[j] != 0),
                       key=lambda j: (-abs(self.weights[j]), self.names[j]))
        return [{"feature": self.names[j], "weight": float(self.weights[j])} for j in order[:n]]


def pick_pairs(positives: np.ndarray, negatives: np.ndarray, base: int | None = None) -> np.ndarray:
    """Pairs of the ``base`` (default ``PAIR_BASE``) features most over-represented among the positives
    (present in at least a tenth of them), as a (k, 2) array of feature indexes."""
    base = PAIR_BASE if base is None else base
    p, q = positives.mean(axis=0), negatives.mean(axis=0)
    lift = np.log((p + 1e-3) / (q + 1e-3))
    eligible = np.flatnonzero((p >= 0.1) & (lift > 0))
    strongest = sorted(eligible[np.argsort(-lift[eligible], kind="stable")][:base].tolist())
    return np.array(list(itertools.combinations(strongest, 2)), dtype=np.int64).reshape(-1, 2)


def train(names: list[str], positives: np.ndarray, negatives: np.ndarray) -> Model:
    """Fit the logistic regression on 0/1 feature rows of the seed sample and the candidate sample."""
    try:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise MissingExtra("lookalikes need scikit-learn: pip install 'segengine[ml]'") from None
    pairs = pick_pairs(positives, negatives)
    x = np.vstack([positives, negatives]).astype(np.float32)
    x = np.hstack([x, x[:, pairs[:, 0]] * x[:, pairs[:, 1]]])
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    fit = LogisticRegression(C=C, class_weight="balanced", max_iter=1000)
    with threadpool_limits(1):  # threaded BLAS on small matrices spins: 5-10x slower on a busy machine
        fit.fit(x, y)
    pair_names = [f"{names[a]} AND {names[b]}" for a, b in pairs.tolist()]
    return Model(names + pair_names, pairs, fit.coef_[0].copy(), float(fit.intercept_[0]))


def _unpack(parts: list[np.ndarray], hashes: list[np.ndarray], features: int) -> np.ndarray:
    """The 0/1 rows of the shards' packed matrices, ordered by id hash (the same at any shard count)."""
    if not parts:
        return np.zeros((0, features), dtype=np.uint8)
    bits = np.unpackbits(np.vstack(parts), axis=1, count=features)
    return bits[np.argsort(np.concatenate(hashes), kind="stable")]


def sample_query(wanted: int, total: int) -> str:
    """A SAMPLE query keeping about ``wanted`` of ``total`` profiles (ALL when that is all of them)."""
    if wanted >= total:
        return "ALL"
    percent = math.ceil(wanted * 10000 / total) / 100
    return f"SAMPLE({percent}, {SAMPLE_SEED})"


def check_request(seed: str | Sequence[str], size: int | None, threshold: float | None) -> None:
    """Refuse a seed that is neither a query nor a list of ids, and a bad ``size`` or ``threshold``."""
    if isinstance(seed, bytes) or not isinstance(seed, (str, list, tuple)):
        raise LookalikeError("seed must be a query string or a list of ids")
    if size is None and threshold is None:
        raise LookalikeError("give size (how many profiles) or threshold (the lowest score), or both")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise LookalikeError(f"size must be a positive integer, not {size!r}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise LookalikeError(f"threshold must be a score between 0 and 1, not {threshold!r}")


def seed_plan(seed: str | Sequence[str], entry: Callable[[str], tuple[Step, frozenset[str]]], shards: int,
              resolve: Callable[[list[str]], list[str]]) -> tuple[Step | list[list[str]], frozenset[str]]:
    """The seed as ``run`` takes it (a query's plan, or canonical ids per shard) and the saved segments
    it reads; ``entry`` compiles a query to (plan, segments read)."""
    if isinstance(seed, str):
        return entry(seed)
    return seed_ids_by_shard(list(seed), shards, resolve), frozenset()


def seed_ids_by_shard(ids: Sequence[str], shards: int, resolve: Callable[[list[str]], list[str]]) -> list[list[str]]:
    """The canonical, distinct ids of the seed per owning shard (DataError names a bad id's position)."""
    checked = [check_id(value, i) for i, value in enumerate(ids)]
    canonical = sorted(set(resolve(checked)))
    owners = shards_of(canonical, shards)
    parts: list[list[str]] = [[] for _ in range(shards)]
    for profile_id, owner in zip(canonical, owners.tolist()):
        parts[owner].append(profile_id)
    return parts


def run(shards: ShardGroup, schema: Schema, compile_query: Callable[[str], Step], seed: Step | list[list[str]],
        within: Step, size: int | None, threshold: float | None, now: int) -> dict[str, Any]:
    """The lookalike of ``seed`` (a plan, or canonical ids per shard) among ``within`` at clock ``now``.

    The caller holds the engine's read lock for the whole call (one state serves all rounds).
    """
    n = len(shards)
    seeds = seed if isinstance(seed, list) else [seed] * n
    clock = [time.perf_counter()]
    counted = shards.call_each("lookalike_counts", [(seeds[i], within, now) for i in range(n)])
    seed_size = sum(c["seed"] for c in counted)
    unknown = sorted(itertools.chain.from_iterable(c["unknown"] for c in counted))
    candidates = sum(c["candidates"] for c in counted)
    if seed_size == 0:
        raise LookalikeError(f"none of the {len(unknown)} seed ids is a live profile" if unknown
                             else "the seed has no profiles")
    if sum(c["within"] for c in counted) == 0:
        raise LookalikeError("within selects no profiles: nothing to rank")
    if candidates == 0:
        raise LookalikeError(f"the seed ({seed_size} profiles) covers every profile of within: nothing is left to rank")
    names = name_features(schema, [c["vocabulary"] for c in counted])
    steps = [compile_query(name) for name in names]
    positives = min(seed_size, MAX_POSITIVES)
    negatives = min(MAX_NEGATIVES, max(MIN_NEGATIVES, NEGATIVES_PER_POSITIVE * positives))
    sampling = (compile_query(sample_query(positives, seed_size)), compile_query(sample_query(negatives, candidates)))
    token = random.getrandbits(63)  # names this call's feature bitmaps kept by the shards between rounds
    sampled = shards.call_each("lookalike_sample", [(seeds[i], within, steps, *sampling, now, token) for i in range(n)])
    clock.append(time.perf_counter())
    x_pos = _unpack([s["positives"] for s in sampled], [s["positives_hashes"] for s in sampled], len(names))
    x_neg = _unpack([s["negatives"] for s in sampled], [s["negatives_hashes"] for s in sampled], len(names))
    model = train(names, x_pos, x_neg)
    clock.append(time.perf_counter())
    live = sum(s["live"] for s in sampled)
    dense = np.r_[sum(s["feature_rows"] for s in sampled) * 2 > live, np.zeros(len(model.pairs), dtype=bool)]
    min_logit = None if not threshold else math.inf if threshold >= 1 else math.log(threshold / (1 - threshold))
    spec = {"weights": model.weights, "pairs": model.pairs, "intercept": model.intercept, "dense": dense,
            "size": size, "min_logit": min_logit, "credit": model.credit()}
    scored = shards.call_each("lookalike_score", [(seeds[i], within, steps, spec, now, token) for i in range(n)])
    profiles = _merge(scored, model.names, size)
    clock.append(time.perf_counter())
    return {
        "profiles": profiles,
        "top_features": model.top(TOP_FEATURES),
        "seed": seed_size,
        "unknown_seed_ids": unknown,
        "candidates": candidates,
        "trained_on": {"positives": len(x_pos), "negatives": len(x_neg), "features": len(names),
                       "pairs": len(model.pairs)},
        "model": {"intercept": model.intercept, "weights": model.top()},
        "ms": {step: round((clock[i + 1] - clock[i]) * 1000, 1) for i, step in enumerate(("sample", "train", "score"))},
    }


def _merge(parts: list[dict[str, Any]], names: list[str], size: int | None) -> list[dict[str, Any]]:
    """The shards' best candidates as one list, by decreasing score then id (the first ``size``)."""
    enabled = gc.isenabled()
    gc.disable()  # a million small lists and dicts would set off many collections of the young generations
    try:
        ids = list(itertools.chain.from_iterable(part["ids"] for part in parts))
        logits = np.concatenate([part["scores"] for part in parts])
        credited = np.vstack([part["reasons"] for part in parts])
        order = np.lexsort((np.array(ids), -logits)) if len(parts) > 1 and ids else np.arange(len(ids))
        if size is not None:
            order = order[:size]
        reasons = list(map(tuple, credited[order].tolist()))
        named = {key: [names[j] for j in key if j >= 0] for key in set(reasons)}
        return [{"id": ids[i], "score": score, "features": list(named[key])}
                for i, score, key in zip(order.tolist(), probability(logits[order]).tolist(), reasons)]
    finally:
        if enabled:
            gc.enable()


def probability(logits: np.ndarray) -> np.ndarray:
    """The logistic function of ``logits`` (without overflow).

    >>> probability(np.array([0.0, 800.0, -800.0])).tolist()
    [0.5, 1.0, 0.0]
    """
    small = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + small), small / (1.0 + small))
