"""The profile part of one shard: id map, live bitmap, attribute indexes and consent bitmaps."""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
from pyroaring import BitMap

from ..columns import ProfileBatch, column_from_values, column_value, null_column
from ..schema import ProfileUpdate, Schema
from .bitmaps import to_bitmap
from .idmap import IdMap, dedupe_keys, object_addresses
from .indexes import BoolIndex, CategoryIndex, TagsIndex
from .numeric import NumericIndex

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter

AttributeIndex = CategoryIndex | BoolIndex | TagsIndex | NumericIndex

#: Ids looked up per id map call while a write is planned (a thread switch may happen between calls).
LOOKUP_CHUNK = 2048


@dataclass(frozen=True)
class RowPlan:
    """The rows a batch of ids will have, worked out without changing the store (``ProfileStore.plan_rows``).

    ``rows``: per id, its row; an unknown id has the row it will get (``known`` + its rank among
    ``new_ids``). ``new_ids``: the distinct unknown ids in order of first sight. ``known``: the
    row count the plan assumes.
    """

    rows: np.ndarray
    new_ids: list[str]
    known: int

    def created(self) -> BitMap:
        """The rows the plan creates."""
        return BitMap(range(self.known, self.known + len(self.new_ids)))


def _distinct(ids: Sequence[str]) -> tuple[Sequence[str], np.ndarray | None]:
    """(each distinct id once, in order of first sight; each id's position among them), or (ids, None)
    when the ids hardly repeat. Repeats that are one string object are found without hashing."""
    addresses = object_addresses(ids) if isinstance(ids, list) else None
    if addresses is not None:
        first, inverse = dedupe_keys(addresses)
        picks = first.tolist()
        distinct = [ids[picks[0]]] if len(picks) == 1 else list(itemgetter(*picks)(ids))
    else:
        seen: dict[str, int] = {}
        inverse = np.fromiter((seen.setdefault(i, len(seen)) for i in ids), dtype=np.int64, count=len(ids))
        distinct = list(seen)
    return (distinct, inverse) if len(distinct) * 4 < len(ids) * 3 else (ids, None)


def index_from_state(reader: StateReader, state: dict[str, Any], kind: str, rows: int) -> AttributeIndex:
    """The index of an attribute of schema type ``kind`` over ``rows`` rows from its part of a snapshot."""
    if kind == "category":
        return CategoryIndex.from_state(reader, state, rows)
    if kind == "bool":
        return BoolIndex.from_state(reader, state, rows)
    if kind == "tags":
        return TagsIndex.from_state(reader, state, rows)
    return NumericIndex.from_state(reader, state, kind, rows)


def make_index(kind: str) -> AttributeIndex:
    """A fresh index for an attribute of schema type ``kind``."""
    if kind == "category":
        return CategoryIndex()
    if kind == "bool":
        return BoolIndex()
    if kind == "tags":
        return TagsIndex()
    return NumericIndex(kind)


class ProfileStore:
    """Profiles of one shard: rows are dense ints in order of first sight."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.idmap = IdMap()
        self.live = BitMap()
        self.indexes: dict[str, AttributeIndex] = {a.name: make_index(a.type) for a in schema.attributes.values()}
        self.consents: dict[str, BitMap] = {purpose: BitMap() for purpose in schema.consents}
        self.consents_set: dict[str, BitMap] = {purpose: BitMap() for purpose in schema.consents}  # ever set
        self.writes = 0  # bumped by every write: readers key caches of derived bitmaps on it

    def adopt(self, schema: Schema) -> None:
        """Take a schema that adds attributes or consent purposes: every profile has them null or unset."""
        self.schema = schema
        for attribute in schema.attributes.values():
            if attribute.name not in self.indexes:
                index = make_index(attribute.type)
                index.grow(len(self.idmap))
                self.indexes[attribute.name] = index
        for purpose in schema.consents:
            self.consents.setdefault(purpose, BitMap())
            self.consents_set.setdefault(purpose, BitMap())

    def __setstate__(self, state: dict) -> None:
        """Restore a pickled store (legacy snapshots); stores pickled before ``consents_set`` get the granted ones."""
        self.__dict__.update(state)
        if "consents_set" not in state:
            self.consents_set = {purpose: BitMap(bitmap) for purpose, bitmap in self.consents.items()}

    def _wrote(self) -> None:
        self.writes = getattr(self, "writes", 0) + 1

    def __len__(self) -> int:
        return len(self.live)

    def _grow(self, size: int) -> None:
        for index in self.indexes.values():
            index.grow(size)

    def ensure_rows(self, ids: list[str], repeats: bool = False) -> np.ndarray:
        """Rows of ``ids``, creating attribute-less live profiles for unknown ones.

        ``repeats``: the ids likely repeat (event batches), so each distinct id is hashed once.
        Found or inserted in one pass over the id map (the rows ``plan_rows`` then ``take_rows`` give,
        without looking the ids up twice or collecting the new ones in Python).
        """
        rows, before = self.idmap.lookup_or_insert(ids, repeats)
        if len(self.idmap) > before:
            self._created(before)
        return rows

    def plan_rows(self, ids: Sequence[str], repeats: bool = False) -> RowPlan:
        """The rows ``ids`` have or will get (read only: the write's prepare phase; see ``take_rows``).

        ``repeats``: the ids likely repeat (event batches), so each distinct id is looked up once.
        """
        known = len(self.idmap)
        distinct, inverse = _distinct(ids) if repeats and len(ids) > 4096 else (ids, None)
        found = np.concatenate([self.idmap.lookup(distinct[start:start + LOOKUP_CHUNK])
                                for start in range(0, len(distinct), LOOKUP_CHUNK)] or [np.empty(0, np.int64)])
        missing = np.flatnonzero(found < 0)
        new_ids: dict[str, int] = {}
        for position, profile_id in zip(missing.tolist(), [distinct[i] for i in missing.tolist()]):
            found[position] = known + new_ids.setdefault(profile_id, len(new_ids))
        return RowPlan(found if inverse is None else found[inverse], list(new_ids), known)

    def take_rows(self, plan: RowPlan) -> np.ndarray:
        """The rows of a plan made against this store's present state, creating its new profiles."""
        if plan.new_ids:
            rows, before = self.idmap.lookup_or_insert(plan.new_ids)
            if before != plan.known or len(self.idmap) != before + len(plan.new_ids):
                raise RuntimeError("a row plan was applied to a store that changed after it was made")
            self._created(before)
        return plan.rows

    def _created(self, before: int) -> None:
        """Make the rows the id map added past ``before`` live, every attribute null."""
        self._wrote()
        self._grow(len(self.idmap))
        self.live.add_range(before, len(self.idmap))

    def apply_updates(self, updates: Iterable[ProfileUpdate]) -> np.ndarray:
        """Apply validated upserts in order (later ones win per field); returns the touched rows."""
        updates = list(updates)
        self._wrote()
        rows = self.ensure_rows([u.id for u in updates])
        per_attr: dict[str, dict[int, Any]] = {}
        per_consent: dict[str, dict[int, bool]] = {}
        for row, update in zip(rows.tolist(), updates):
            for name, value in update.attrs.items():
                per_attr.setdefault(name, {})[row] = value
            for purpose, granted in update.consents.items():
                per_consent.setdefault(purpose, {})[row] = granted
        for name, values in per_attr.items():
            index = self.indexes[name]
            target = np.fromiter(values.keys(), dtype=np.int64, count=len(values))
            index.assign(target, column_from_values(self.schema.attributes[name].type, list(values.values())))
        for purpose, flags in per_consent.items():
            self._set_consent(purpose, np.fromiter(flags.keys(), dtype=np.int64, count=len(flags)),
                              np.fromiter(flags.values(), dtype=bool, count=len(flags)))
        return np.unique(rows)

    def _set_consent(self, purpose: str, rows: np.ndarray, granted: np.ndarray) -> None:
        bitmap = self.consents[purpose]
        self.consents_set[purpose].update(to_bitmap(rows))
        if granted.any():
            bitmap.update(to_bitmap(rows[granted]))
        if not granted.all():
            bitmap.difference_update(to_bitmap(rows[~granted]))

    def load_batch(self, batch: ProfileBatch) -> np.ndarray:
        """Apply a columnar batch (same effect as upserting its records); returns the touched rows."""
        self._wrote()
        rows = self.ensure_rows(batch.ids)
        if len(rows) and int(np.bincount(rows - rows.min()).max()) > 1:
            return self.apply_updates(self._batch_updates(batch))
        for name, column in batch.columns.items():
            self.indexes[name].assign(rows, column)
        for purpose, flags in batch.consents.items():
            self._set_consent(purpose, rows, np.asarray(flags, dtype=bool))
        return np.sort(rows)

    @staticmethod
    def _batch_updates(batch: ProfileBatch) -> list[ProfileUpdate]:
        return [
            ProfileUpdate(
                profile_id,
                {name: column_value(col, i) for name, col in batch.columns.items()},
                {purpose: bool(flags[i]) for purpose, flags in batch.consents.items()},
            )
            for i, profile_id in enumerate(batch.ids)
        ]

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The profiles' part of a snapshot: id map, live rows, attribute indexes by name, consents by purpose."""
        return {"idmap": self.idmap.to_state(writer), "live": writer.bitmap(self.live), "writes": self.writes,
                "indexes": {name: index.to_state(writer) for name, index in self.indexes.items()},
                "consents": {purpose: writer.bitmap(bitmap) for purpose, bitmap in self.consents.items()},
                "consents_set": {purpose: writer.bitmap(bitmap) for purpose, bitmap in self.consents_set.items()}}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], schema: Schema) -> "ProfileStore":
        """The profiles of ``schema`` from their part of a snapshot (every attribute and purpose must be there)."""
        store = cls.__new__(cls)
        store.schema = schema
        store.idmap = IdMap.from_state(reader, state["idmap"])
        rows = len(store.idmap)
        store.live = reader.bitmap(state["live"], rows)
        store.writes = int(state["writes"])
        indexes, consents = state["indexes"], state["consents"]
        if set(indexes) != set(schema.attributes) or set(consents) != set(schema.consents):
            raise ValueError("the stored attributes or consent purposes are not the schema's")
        store.indexes = {a.name: index_from_state(reader, indexes[a.name], a.type, rows)
                         for a in schema.attributes.values()}
        store.consents = {purpose: reader.bitmap(consents[purpose], rows) for purpose in schema.consents}
        consents_set = state.get("consents_set")  # parts written before it was kept: the granted ones
        if consents_set is not None and set(consents_set) != set(schema.consents):
            raise ValueError("the stored consent purposes are not the schema's")
        store.consents_set = {purpose: reader.bitmap(consents_set[purpose], rows) if consents_set is not None
                              else BitMap(store.consents[purpose]) for purpose in schema.consents}
        return store

    def remove_rows(self, rows: np.ndarray, forget: bool = True) -> None:
        """Take ``rows`` out of the universe: attributes nulled, consents unset, ids forgotten (unless not ``forget``)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return
        self._wrote()
        gone = to_bitmap(rows)
        for name, index in self.indexes.items():
            index.assign(rows, null_column(self.schema.attributes[name].type, len(rows)))
        for purpose in self.consents:
            self.consents[purpose].difference_update(gone)
            self.consents_set[purpose].difference_update(gone)
        self.live.difference_update(gone)
        if forget:
            self.idmap.forget(rows)

    def attributes_of(self, row: int) -> dict[str, Any]:
        """The non-null attribute values of ``row`` (tags as sorted lists)."""
        values = {}
        for name, index in self.indexes.items():
            value = index.value(row)
            if value is not None:
                values[name] = value
        return values

    def attributes_of_rows(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """``attributes_of`` each of ``rows`` (distinct), one gather per attribute."""
        out: list[dict[str, Any]] = [{} for _ in range(len(rows))]
        for name, index in self.indexes.items():
            for record, value in zip(out, index.values_of(rows)):
                if value is not None:
                    record[name] = value
        return out

    def consents_of_rows(self, rows: np.ndarray) -> list[dict[str, bool]]:
        """``consents_of`` each of ``rows`` (distinct), two intersections per purpose."""
        out: list[dict[str, bool]] = [{} for _ in range(len(rows))]
        if not len(rows):
            return out
        position = {row: i for i, row in enumerate(rows.tolist())}
        asked = to_bitmap(rows)
        for purpose, ever in self.consents_set.items():
            named = ever & asked
            if named:
                granted = self.consents[purpose] & named
                for row in named:
                    out[position[row]][purpose] = row in granted
        return out

    def consents_of(self, row: int) -> dict[str, bool]:
        """The consent purposes ``row`` has set, with their values."""
        return {purpose: row in self.consents[purpose] for purpose, bitmap in self.consents_set.items() if row in bitmap}

    def profile(self, row: int) -> dict[str, Any]:
        """The current record of ``row``: id, non-null attributes and consents."""
        record: dict[str, Any] = {"id": self.idmap.id_of(row)}
        for name, index in self.indexes.items():
            value = index.value(row)
            if value is not None:
                record[name] = value
        record["consent"] = {purpose: row in bitmap for purpose, bitmap in self.consents.items()}
        return record
