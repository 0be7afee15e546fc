"""Identity resolution at the coordinator: aliases on every write path, and planning merges.

Every write names canonical ids by the time it is logged: ``resolve_command`` replaces each id
that is an alias by its canonical id (the ``AliasIndex`` says which shard holds the alias, that
shard answers with the canonical id), so a logged command routes by its ids' hashes alone and a
shard replays its share without knowing any alias.

A merge is logged with the data it moves (``engine.commands.Merge``): ``plan_merges`` resolves
each pair in order (earlier pairs of the batch included), reads the source profiles' data from
their shards (one call per shard for the whole batch), and produces the steps each shard applies:
``("out", source, its events per type)`` on the source's shard and ``("in", target, payload)`` on the target's, with
merges inside the batch folded into the payloads, and, last, one ``("events", anchor, batches)``
per shard that receives events: every moved event in one columnar batch per event type, named by
the profile it ends on (the end of its source's chain in the batch). ``lock`` is held from the resolution of a write to its submission to the log, and
by a merge from its planning until it is applied, so no write resolved against an older alias
state is logged after a merge.
"""
from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from .alias_index import AliasIndex
from .columns import CategoryColumn, Column, EventBatch, ProfileBatch, ValueColumn
from .commands import Command, LoadEvents, LoadProfiles, Merge, Track, Upsert
from .errors import DataError
from .priority import background_calls
from .schema import check_id
from .shard.identity_ops import merge_consent
from .shard.partition import shards_of
from .store.idmap import pack_ids, packed_hashes

if TYPE_CHECKING:
    from .engine import Engine

Payload = dict[str, Any]


def id_hashes(ids: list[str]) -> np.ndarray:
    """The blake2b-64 hash of each id (uint64)."""
    if not ids:
        return np.zeros(0, dtype=np.uint64)
    return packed_hashes(*pack_ids(ids))


def empty_payload(profile_id: str) -> Payload:
    """The payload of a profile with no data (an unknown source, or a target created by the merge)."""
    return {"attrs": {}, "consents": {}, "events": {}, "aliases": [profile_id]}


def combine(target: Payload, source: Payload) -> Payload:
    """``source`` merged into ``target`` by the contract's rules (as the target's shard applies them)."""
    consents = {}
    for purpose in {**target["consents"], **source["consents"]}:
        consents[purpose] = merge_consent(target["consents"].get(purpose), source["consents"].get(purpose))
    events = {name: {"ts": list(e["ts"]), "props": {p: list(v) for p, v in e["props"].items()},
                     **({"event_ids": list(e["event_ids"])} if "event_ids" in e else {})}
              for name, e in target["events"].items()}
    for name, extra in source["events"].items():
        entry = events.setdefault(name, {"ts": [], "props": {}})
        before, added = len(entry["ts"]), len(extra["ts"])
        for prop in {*entry["props"], *extra["props"]}:
            values = entry["props"].setdefault(prop, [None] * before)
            values.extend(extra["props"].get(prop, [None] * added))
        if "event_ids" in entry or "event_ids" in extra:  # every event moves, repeated event ids included
            entry.setdefault("event_ids", [None] * before).extend(extra.get("event_ids", [None] * added))
        entry["ts"].extend(extra["ts"])
    return {"attrs": {**source["attrs"], **target["attrs"]}, "consents": consents, "events": events,
            "aliases": [*target["aliases"], *source["aliases"]]}


def concat_columns(columns: list[Column]) -> Column:
    """One column of the values of ``columns`` (all of one kind; category labels unified)."""
    if len(columns) == 1:
        return columns[0]
    first = columns[0]
    if isinstance(first, CategoryColumn):
        labels = list(dict.fromkeys(label for column in columns for label in column.labels))  # type: ignore[union-attr]
        index = {label: code for code, label in enumerate(labels)}
        parts = []
        for column in columns:
            assert isinstance(column, CategoryColumn)
            mapping = np.array([index[label] for label in column.labels] + [-1], dtype=np.int32)
            codes = np.asarray(column.codes)
            parts.append(mapping[np.where(codes < 0, len(column.labels), codes)])
        return CategoryColumn(np.concatenate(parts), labels)
    assert all(isinstance(column, ValueColumn) for column in columns), "moved events have no tags"
    return ValueColumn(np.concatenate([column.values for column in columns]),  # type: ignore[union-attr]
                       np.concatenate([column.valid for column in columns]))  # type: ignore[union-attr]


def concat_batches(batches: list[EventBatch]) -> EventBatch:
    """One batch of the events of ``batches`` (one event type, the same properties in each)."""
    if len(batches) == 1:
        return batches[0]
    event_ids = None
    if any(batch.event_ids is not None for batch in batches):
        event_ids = [i for batch in batches for i in (batch.event_ids or [None] * len(batch))]
    return EventBatch(batches[0].event, [i for batch in batches for i in batch.ids],
                      np.concatenate([np.asarray(batch.ts, dtype=np.int64) for batch in batches]),
                      {prop: concat_columns([batch.props[prop] for batch in batches]) for prop in batches[0].props},
                      event_ids)


class Identity:
    """The coordinator's alias routing and merge planning for one engine."""

    def __init__(self, engine: Engine):
        self._engine = weakref.ref(engine)  # no reference cycle: a dropped engine frees its shards at once
        self.index = AliasIndex()
        self.lock = threading.RLock()
        self.last_ticket: Any = None  # the last write submitted to the durable log

    @property
    def engine(self) -> Engine:
        """The engine this serves."""
        engine = self._engine()
        assert engine is not None, "the engine is gone"
        return engine

    # -- resolution -------------------------------------------------------------------------
    def resolve(self, ids: list[str]) -> list[str]:
        """The canonical id of each id (an id that is no alias is its own)."""
        if not len(self.index) or not ids:
            return list(ids)
        owners = self.index.lookup(id_hashes(ids))
        hits = np.flatnonzero(owners >= 0)
        if len(hits) == 0:
            return list(ids)
        n = self.engine.n_shards
        asked: list[list[int]] = [[] for _ in range(n)]
        for position in hits.tolist():
            asked[int(owners[position])].append(position)
        calls = [([ids[p] for p in positions],) if positions else None for positions in asked]
        answers = self.engine.shards.call_each("canonical_ids", calls)
        out = list(ids)
        for positions, answer in zip(asked, answers):
            for position, canonical in zip(positions, answer or ()):
                if canonical is not None:
                    out[position] = canonical
        return out

    def resolve_command(self, command: Command) -> Command:
        """``command`` with every alias it names replaced by its canonical id."""
        if not len(self.index):
            return command
        if isinstance(command, Upsert):
            ids = self.resolve([u.id for u in command.updates])
            return Upsert([u if u.id == i else u._replace(id=i) for u, i in zip(command.updates, ids)], command.now)
        if isinstance(command, Track):
            ids = self.resolve([e.id for e in command.events])
            return Track([e if e.id == i else e._replace(id=i) for e, i in zip(command.events, ids)], command.now)
        if isinstance(command, LoadProfiles):
            batch = command.batch
            return LoadProfiles(ProfileBatch(self.resolve(list(batch.ids)), batch.columns, batch.consents), command.now)
        if isinstance(command, LoadEvents):
            batch = command.batch
            return LoadEvents(EventBatch(batch.event, self.resolve(list(batch.ids)), batch.ts, batch.props,
                                         batch.event_ids), command.now)
        return command

    # -- merges -----------------------------------------------------------------------------
    def plan_merges(self, pairs: Iterable[tuple[str, str]], now: int) -> Merge | None:
        """The merge command of ``pairs`` (applied in order), None if none of them changes anything."""
        pairs = list(pairs)
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise DataError("a merge is a pair (from_id, into_id)", i, "merge")
            check_id(pair[0], i)
            check_id(pair[1], i)
        named = list(dict.fromkeys(p for pair in pairs for p in pair))
        canonical = dict(zip(named, self.resolve(named)))
        overlay: dict[str, str] = {}

        def resolve(profile_id: str) -> str:
            current = canonical[profile_id]
            while current in overlay:
                current = overlay[current]
            return current

        resolved: list[tuple[str, str] | None] = []
        for source, target in pairs:
            rf, ri = resolve(source), resolve(target)
            if rf == ri:
                resolved.append(None)
                continue
            overlay[rf] = ri
            resolved.append((rf, ri))
        sources = list(dict.fromkeys(pair[0] for pair in resolved if pair is not None))
        if not sources:
            return None
        found, batches, counts = self._sources(sources)
        sim = {profile_id: payload for profile_id, payload in zip(sources, found) if payload is not None}
        wanted = set(sources)
        steps: list[tuple] = []
        for pair in resolved:
            if pair is None:
                continue
            rf, ri = pair
            moved = sim.pop(rf, None)
            if moved is None:
                moved = empty_payload(rf)
            else:
                steps.append(["out", rf, counts.get(rf, {})])  # a target created in this batch holds none
            steps.append(["in", ri, moved])
            if ri in wanted:
                sim[ri] = combine(sim.get(ri) or empty_payload(ri), moved)

        def final(profile_id: str) -> str:
            while profile_id in overlay:
                profile_id = overlay[profile_id]
            return profile_id

        steps.extend(self._event_steps(batches, {source: final(source) for source in sources}))
        return Merge(steps, now)

    def _sources(self, ids: list[str]) -> tuple[list[Payload | None], dict[str, list[EventBatch]],
                                                dict[str, dict[str, int]]]:
        """The payload (without events) of each canonical id from its shard (None: not a live profile),
        their events (per event type, a batch from each shard that holds some, named by source), and
        the number of events per type of each live one."""
        n = self.engine.n_shards
        asked: list[list[int]] = [[] for _ in range(n)]
        for position, owner in enumerate(shards_of(ids, n).tolist()):
            asked[owner].append(position)
        calls = [([ids[p] for p in positions],) if positions else None for positions in asked]
        # a heavy read (a writer waits for it without holding other reads back), served below the
        # priority of short calls: it can take long (a shard builds its event locator when first asked)
        with self.engine.publish.reading(heavy=True), background_calls():
            answers = self.engine.shards.call_each("identity_payloads", calls)
        out: list[Payload | None] = [None] * len(ids)
        batches: dict[str, list[EventBatch]] = {}
        counts: dict[str, dict[str, int]] = {}
        for positions, answer in zip(asked, answers):
            if not answer:
                continue
            for position, payload, numbers in zip(positions, answer["payloads"], answer["counts"]):
                out[position] = payload
                if numbers is not None:
                    counts[ids[position]] = numbers
            for name, batch in answer["events"].items():
                batches.setdefault(name, []).append(batch)
        return out, batches, counts

    def _event_steps(self, batches: dict[str, list[EventBatch]], final: dict[str, str]) -> list[tuple]:
        """The ``("events", anchor, {event type: batch})`` step of each shard that receives moved events:
        each source's events renamed to ``final[source]`` (where they end) and sent to its shard."""
        n = self.engine.n_shards
        shard_by_source = dict(zip(final, shards_of(list(final.values()), n).tolist()))
        per_shard: list[dict[str, list[EventBatch]]] = [{} for _ in range(n)]
        for name, parts in batches.items():
            for batch in parts:
                owners = np.fromiter((shard_by_source[i] for i in batch.ids), dtype=np.int64, count=len(batch))
                for shard_no in np.unique(owners).tolist():
                    picks = np.flatnonzero(owners == shard_no)
                    part = batch if len(picks) == len(batch) else batch.take(picks)
                    per_shard[shard_no].setdefault(name, []).append(
                        EventBatch(name, [final[i] for i in part.ids], part.ts, part.props, part.event_ids))
        steps: list[tuple] = []
        for received in per_shard:
            if received:
                merged = {name: concat_batches(parts) for name, parts in received.items()}
                steps.append(["events", next(iter(merged.values())).ids[0], merged])
        return steps

    def applied(self, command: Merge) -> None:
        """Route the aliases a merge created (called when it is applied)."""
        arriving = [step for step in command.steps if step[0] == "in"]
        aliases = [alias for step in arriving for alias in step[2]["aliases"]]
        if aliases:  # in step order: an alias moved twice in one command ends on its last shard
            counts = [len(step[2]["aliases"]) for step in arriving]
            owners = np.repeat(shards_of([step[1] for step in arriving], self.engine.n_shards), counts)
            self.index.put(id_hashes(aliases), owners.astype(np.uint8))

    def erased(self, results: list[Any]) -> int:
        """Forget the routes of erased aliases (called when an erase is applied); the number erased."""
        erased = 0
        for result in results:
            if result:
                erased += int(result[0])
                self.index.remove(np.asarray(result[1], dtype=np.uint64))
        return erased

    def rebuild(self) -> None:
        """Rebuild the routing index from the aliases the shards hold (after recovery)."""
        self.index = AliasIndex()
        for shard_no, hashes in enumerate(self.engine.shards.call_all("alias_hashes")):
            hashes = np.asarray(hashes, dtype=np.uint64)
            self.index.put(hashes, np.full(len(hashes), shard_no, dtype=np.uint8))
