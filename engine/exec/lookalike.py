"""Lookalikes on one shard: the feature vocabulary, the sampled feature matrix, and scoring.

The coordinator (``engine.lookalike``) names the features as queries; a shard evaluates each
through its executor into a bitmap. Training reads only the sampled rows' memberships (a bit
matrix); scoring adds each feature's weight to a float32 score per row over the rows of its
bitmap (or, for a feature holding most rows, to every row and back off its complement).

>>> scores = np.zeros(6, dtype=np.float32)
>>> add_weight(scores, np.array([1, 4], dtype=np.uint32), np.float32(0.5))
>>> scores.tolist()
[0.0, 0.5, 0.0, 0.0, 0.5, 0.0]
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
from pyroaring import BitMap

from ..plan.steps import Step
from ..store.bitmaps import rows_of, to_bitmap
from ..store.indexes import CategoryIndex, TagsIndex
from ..store.numeric import NumericIndex

if TYPE_CHECKING:
    from ..shard.local import LocalShard

#: Values of each numeric attribute sampled per shard for the coordinator's bin edges.
VALUE_SAMPLE = 20_000
#: Features credited per returned profile (the largest positive contributions).
REASONS = 3

Seed = Step | list  # a query's plan, or the canonical ids of this shard


@numba.njit(cache=True, nogil=True)
def add_weight(scores, rows, weight):
    """``scores[rows] += weight`` for distinct ``rows`` (one pass, no temporary)."""
    for i in range(len(rows)):
        scores[rows[i]] += weight


def vocabulary(shard: LocalShard) -> dict[str, Any]:
    """What features this shard's data offers: value counts per category and tag label, and for each
    int and float attribute the values of its ``VALUE_SAMPLE`` rows with the smallest id hashes
    (with those hashes: the coordinator keeps the smallest of all shards, the same sample at any
    shard count)."""
    labels: dict[str, dict[str, int]] = {}
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    idmap = shard.profiles.idmap
    hashes = None  # every row's id hash, computed only if the rows of low hashes fall short
    for name, index in shard.profiles.indexes.items():
        if isinstance(index, (CategoryIndex, TagsIndex)):
            labels[name] = {label: len(bitmap) for label, bitmap in zip(index.labels, index.bitmaps) if bitmap}
        elif isinstance(index, NumericIndex) and index.kind in ("int", "float"):
            rows = rows_of(index.notnull)
            if len(rows) <= VALUE_SAMPLE:
                values[name] = (index.column.data[rows].astype(np.float64), idmap.hashes_of(rows))
                continue
            low_rows, low_hashes = idmap.low_hash_rows(VALUE_SAMPLE)
            picked = rows_of(to_bitmap(low_rows, assume_sorted=True) & index.notnull)
            if len(picked) > VALUE_SAMPLE:
                rows, row_hashes = picked, low_hashes[np.searchsorted(low_rows, picked)]
            else:
                hashes = idmap.row_hashes() if hashes is None else hashes
                row_hashes = hashes[rows]
            smallest = np.argpartition(row_hashes, VALUE_SAMPLE)[:VALUE_SAMPLE]
            rows = rows[smallest]
            values[name] = (index.column.data[rows].astype(np.float64), row_hashes[smallest])
    return {"labels": labels, "values": values}


def seed_rows(shard: LocalShard, seed: Seed, now: int) -> tuple[BitMap, list[str]]:
    """The live rows of the seed on this shard, and the seed ids that name no live profile here."""
    if not isinstance(seed, list):
        return shard.executor.evaluate(seed, now), []
    if not seed:
        return BitMap(), []
    rows = shard.profiles.idmap.lookup(seed)
    known = rows >= 0
    found = to_bitmap(rows[known]) & shard.profiles.live
    unknown = [seed[i] for i in np.flatnonzero(~known).tolist()]
    if len(found) < int(known.sum()):  # rows of erased or merged-away profiles
        dead = set(rows[known].tolist()) - set(found)
        unknown += [seed[i] for i in np.flatnonzero(known).tolist() if int(rows[i]) in dead]
    return found, unknown


def counts(shard: LocalShard, seed: Seed, within: Step, now: int) -> dict[str, Any]:
    """Seed size, unknown seed ids, candidates (``within`` minus the seed) and the vocabulary."""
    rows, unknown = seed_rows(shard, seed, now)
    within_rows = shard.executor.evaluate(within, now)
    return {"seed": len(rows), "unknown": unknown, "within": len(within_rows),
            "candidates": within_rows.difference_cardinality(rows), "vocabulary": vocabulary(shard)}


class FeatureCache:
    """The feature bitmaps of the lookalike calls in progress on a shard, by call token, from the
    sample round to the score round (the engine's read lock keeps the data unchanged in between).
    At most ``capacity`` calls are kept; a missing entry is computed again."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self.entries: dict[int, list[BitMap]] = {}
        self.lock = threading.Lock()

    def put(self, token: int, bitmaps: list[BitMap]) -> None:
        """Keep ``bitmaps`` for call ``token`` (dropping the oldest call past ``capacity``)."""
        with self.lock:
            self.entries[token] = bitmaps
            while len(self.entries) > self.capacity:
                del self.entries[next(iter(self.entries))]

    def take(self, token: int) -> list[BitMap] | None:
        """The bitmaps kept for call ``token`` (forgotten here), or None."""
        with self.lock:
            return self.entries.pop(token, None)


def feature_bitmaps(shard: LocalShard, features: list[Step], now: int) -> list[BitMap]:
    """Each feature's rows (stored bitmaps among them: never mutated)."""
    call = shard.executor.at(now)
    return [call.visit(step, None) for step in features]


def membership_bits(rows: np.ndarray, bitmaps: list[BitMap]) -> np.ndarray:
    """The (rows x features) membership matrix of sorted ``rows``, bit-packed along features (uint8)."""
    matrix = np.zeros((len(rows), len(bitmaps)), dtype=np.uint8)
    if len(rows):
        picked = to_bitmap(rows, assume_sorted=True)
        for j, bitmap in enumerate(bitmaps):
            matrix[np.searchsorted(rows, rows_of(bitmap & picked)), j] = 1
    return np.packbits(matrix, axis=1)


def sample(shard: LocalShard, seed: Seed, within: Step, features: list[Step], positives: Step,
           negatives: Step, now: int, token: int) -> dict[str, Any]:
    """The training rows of this shard: the sampled seed rows and the sampled candidates, each as
    id hashes and a packed membership matrix; and each feature's row count."""
    rows, _ = seed_rows(shard, seed, now)
    call = shard.executor.at(now)
    candidates = call.visit(within, None) - rows
    bitmaps = feature_bitmaps(shard, features, now)
    shard.lookalike_features.put(token, bitmaps)
    idmap = shard.profiles.idmap
    out: dict[str, Any] = {"feature_rows": np.array([len(b) for b in bitmaps], dtype=np.int64),
                           "live": len(shard.profiles.live)}
    for key, picked in (("positives", rows & call.visit(positives, None)),
                        ("negatives", candidates & call.visit(negatives, None))):
        chosen = rows_of(picked)
        out[key] = membership_bits(chosen, bitmaps)
        out[key + "_hashes"] = idmap.hashes_of(chosen)
    return out


def score(shard: LocalShard, seed: Seed, within: Step, features: list[Step], model: dict[str, Any],
          now: int, token: int) -> dict[str, Any]:
    """The candidates whose score (a logit) is at least ``model["min_logit"]``, at most
    ``model["size"]`` of the highest (ties to the smaller id): ids, scores and each one's top features.

    ``model``: ``weights`` (one per feature then per pair), ``pairs`` (k x 2 feature indexes),
    ``intercept``, ``dense`` (features holding most rows: scored through their complement),
    ``credit`` (the feature numbers with a positive weight, most credited first).
    """
    rows, _ = seed_rows(shard, seed, now)
    call = shard.executor.at(now)
    candidates = call.visit(within, None) - rows
    base = shard.lookalike_features.take(token)
    bitmaps = _weighted_bitmaps(base if base is not None else feature_bitmaps(shard, features, now), model)
    scores = np.zeros(len(shard.profiles.idmap), dtype=np.float32)
    live = shard.profiles.live
    for bitmap, weight, dense, _ in bitmaps:
        if dense:
            scores += weight
            add_weight(scores, rows_of(live - bitmap), -weight)
        else:
            add_weight(scores, rows_of(bitmap), weight)
    chosen = rows_of(candidates)
    logits = scores[chosen].astype(np.float64) + float(model["intercept"])
    if model["min_logit"] is not None:
        keep = logits >= model["min_logit"]
        chosen, logits = chosen[keep], logits[keep]
    chosen, logits, ids = _top(shard, chosen, logits, model["size"])
    return {"ids": ids, "scores": logits, "reasons": _reasons(chosen, bitmaps, model["credit"])}


def _weighted_bitmaps(base: list[BitMap], model: dict[str, Any]) -> list[tuple[BitMap, np.float32, bool, int]]:
    """(rows, weight, dense, feature number) of every feature and pair with a non-zero weight."""
    weights = np.asarray(model["weights"], dtype=np.float32)
    dense = np.asarray(model["dense"], dtype=bool)
    out = []
    for j, bitmap in enumerate(base):
        if weights[j] != 0:
            out.append((bitmap, weights[j], bool(dense[j]), j))
    for k, (a, b) in enumerate(np.asarray(model["pairs"], dtype=np.int64).reshape(-1, 2).tolist()):
        j = len(base) + k
        if weights[j] != 0:
            out.append((base[a] & base[b], weights[j], bool(dense[j]), j))
    return out


def _top(shard: LocalShard, rows: np.ndarray, logits: np.ndarray,
         size: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The ``size`` highest-scoring rows (ties at the cut go to the smaller ids), ordered by score
    then id; with their ids."""
    idmap = shard.profiles.idmap
    if size is not None and len(rows) > size:
        cut = np.partition(logits, len(logits) - size)[len(logits) - size]
        above = logits > cut
        tied = np.flatnonzero(logits == cut)
        wanted = size - int(above.sum())
        tied_ids = idmap.ids_of(rows[tied])
        keep_tied = tied[np.argsort(np.array(tied_ids), kind="stable")[:wanted]]
        keep = np.sort(np.concatenate([np.flatnonzero(above), keep_tied]))
        rows, logits = rows[keep], logits[keep]
    ids = idmap.ids_of(rows)
    order = np.lexsort((np.array(ids), -logits)) if len(ids) else np.zeros(0, dtype=np.int64)
    return rows[order], logits[order], [ids[i] for i in order.tolist()]


def _reasons(rows: np.ndarray, bitmaps: list[tuple[BitMap, np.float32, bool, int]], credit: list[int]) -> np.ndarray:
    """Per row of ``rows`` (any order), the first ``REASONS`` features of ``credit`` it is in (-1
    where it is in fewer)."""
    out = np.full((len(rows), REASONS), -1, dtype=np.int32)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    picked = to_bitmap(sorted_rows, assume_sorted=True)
    filled = np.zeros(len(rows), dtype=np.int64)
    by_number = {number: bitmap for bitmap, _, _, number in bitmaps}
    for number in credit:
        bitmap = by_number[number]
        hits = order[np.searchsorted(sorted_rows, rows_of(bitmap & picked))]
        hits = hits[filled[hits] < REASONS]
        out[hits, filled[hits]] = number
        filled[hits] += 1
        if filled.min() == REASONS:
            break
    return out
