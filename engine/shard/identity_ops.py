"""A shard's part of identity resolution: what a profile holds (for a merge or an export), and
applying the steps of a logged merge.

A merge payload is plain data (it is logged, and crosses process boundaries)::

    {"attrs": {name: value}, "consents": {purpose: bool}, "aliases": [ids],
     "events": {event type: {"ts": [epoch ms], "props": {name: [values, None = null]},
                             "event_ids": [event id or None] (only when one of them has one)}}}

``aliases`` holds the merged-away id itself and every alias it had. A step is ``("out", id,
counts)`` (the canonical profile ``id`` of this shard leaves: its row and aliases are dropped, its
events deleted by marking (``engine.store.event_rows.bury_rows``); ``counts``: its number of events
per type, which the planner read with them; logs written without it have ``("out", id)``),
``("in", id, payload)`` (``payload`` merged into ``id``, created if unknown) or, last among a
shard's steps, ``("events", anchor, {event type: EventBatch})``: the moved events in columns, each
named by the canonical profile that receives it (``anchor`` is one of them: it routes the step).
The planner sends events that way (their payloads' ``events`` are empty); payloads that carry
their events in lists are applied as such (logs written so).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..columns import Column, EventBatch, column_from_values
from ..retention import floor
from ..store.bitmaps import rows_of, to_bitmap
from ..store.event_rows import Unindexing, bury_rows, compact, drop_rows, event_batches, events_of

if TYPE_CHECKING:
    from .local import LocalShard


def live_row(shard: LocalShard, profile_id: str) -> int:
    """The row of canonical profile ``profile_id`` on ``shard``, -1 if it is not a live profile there."""
    row = shard.profiles.idmap.lookup_one(profile_id)
    return row if row >= 0 and row in shard.profiles.live else -1


def live_rows(shard: LocalShard, ids: list[str]) -> np.ndarray:
    """The row of each canonical id (int64), -1 where it is not a live profile here."""
    rows = shard.profiles.idmap.lookup(list(ids)) if ids else np.zeros(0, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    known = np.flatnonzero(rows >= 0)
    if len(known):
        alive = np.isin(rows[known], rows_of(shard.profiles.live & to_bitmap(rows[known])))
        rows[known[~alive]] = -1
    return rows


def payloads(shard: LocalShard, ids: list[str]) -> dict[str, Any]:
    """What the merge sources ``ids`` (canonical ids) hold here: ``{"payloads": [payload without events,
    None where an id is not a live profile here], "events": {event type: EventBatch}, "counts": [{event
    type: number of events} or None]}``, the events of every source in one batch per type, each named
    by its source's id."""
    rows = live_rows(shard, ids)
    found = np.flatnonzero(rows >= 0)
    out: list[dict[str, Any] | None] = [None] * len(ids)
    profiles, aliases = shard.profiles, shard.aliases
    attrs, consents = profiles.attributes_of_rows(rows[found]), profiles.consents_of_rows(rows[found])
    heads = aliases.head.view()
    with_aliases = set(row for row in rows[found][rows[found] < len(heads)].tolist() if heads[row] >= 0)
    for position, row, values, purposes in zip(found.tolist(), rows[found].tolist(), attrs, consents):
        profile_id = ids[position]
        out[position] = {"attrs": values, "consents": purposes, "events": {},
                         "aliases": [profile_id, *aliases.aliases_of(row)] if row in with_aliases else [profile_id]}
    events, per_type = event_batches(shard.events, rows[found], [ids[p] for p in found.tolist()], len(profiles.idmap))
    counts: list[dict[str, int] | None] = [None] * len(ids)
    for position in found.tolist():
        counts[position] = {}
    for name, numbers in per_type.items():
        for position, n in zip(found[numbers > 0].tolist(), numbers[numbers > 0].tolist()):
            counts[position][name] = n  # type: ignore[index]
    return {"payloads": out, "events": events, "counts": counts}


def canonical_ids(shard: LocalShard, ids: list[str]) -> list[str | None]:
    """The canonical id of each alias held here (None where ``id`` is not one of this shard's aliases)."""
    rows = shard.aliases.rows_of(ids)
    return [None if row < 0 else shard.profiles.idmap.id_of(row) for row in rows.tolist()]


def merge_consent(into: bool | None, source: bool | None) -> bool | None:
    """A merged consent purpose: withdrawn if either is withdrawn, else granted if either is, else unset."""
    if into is None:
        return source
    if source is None:
        return into
    return into and source


def apply_steps(shard: LocalShard, steps: list[tuple], now: int) -> int:
    """Apply merge steps in order; returns how many there were.

    Departures are gathered and applied together (one pass over the event runs), before any later
    step that names a departing profile; attribute fills are gathered per attribute and written
    before any departure (one index write per attribute); moved events in columns are appended
    last (one append per event type); saved segments are synced once, for the departed and the
    receiving rows together, and the departed ids forgotten after it (``settle``).
    """
    leaving: dict[str, dict[str, int] | None] = {}
    fills: dict[str, dict[int, Any]] = {}
    received: dict[int, None] = {}
    arriving: list[tuple] = []
    moved: list[dict[str, EventBatch]] = []
    known = len(shard.profiles.idmap)
    for step in steps:
        if step[0] == "out":
            leaving[step[1]] = step[2] if len(step) > 2 else None
            continue
        if step[0] == "events":
            moved.append(step[2])
            continue
        if step[1] in leaving:  # a departure named again: complete it (id forgotten) before going on
            received.update(dict.fromkeys(_receive(shard, arriving, fills)))
            arriving.clear()
            _fill(shard, fills)
            settle(shard, _leave(shard, leaving, now), [], known, now)
            leaving.clear()
        arriving.append(step)
    received.update(dict.fromkeys(_receive(shard, arriving, fills)))
    _fill(shard, fills)
    gone = _leave(shard, leaving, now)
    for batches in moved:
        received.update(dict.fromkeys(_append_batches(shard, batches)))
    settle(shard, gone, list(received), known, now)
    compact(shard.events)
    return len(steps)


@dataclass(frozen=True)
class Received:
    """What a merge changed on the rows that received data: the attributes it filled, the event types
    it moved in, the consent purposes it set (``SavedSegments.sync``)."""

    attributes: frozenset[str]
    events: frozenset[str]
    consents: frozenset[str]


def settle(shard: LocalShard, gone: np.ndarray, received: list[int], known: int, now: int,
           changes: Received | None = None) -> None:
    """After a merge's changes: sync the saved segments once (the departed rows ``gone`` exit them;
    the rows that received data are evaluated again where a segment reads what ``changes`` says
    they received, None: anything, and everywhere for the rows from ``known`` on, which the merge
    created), then forget the departed ids (their exits are recorded under them first; in a view
    write, at its publish: ``SavedSegments.forget``)."""
    rows = np.fromiter(received, dtype=np.int64, count=len(received))
    if len(rows) or len(gone):
        created = to_bitmap(rows[rows >= known])
        if changes is None:
            shard.saved.sync(rows, now, None, None, created, departed=gone)
        else:
            shard.saved.sync(rows, now, changes.attributes, changes.events, created, changes.consents, departed=gone)
    if len(gone):
        shard.saved.forget(gone)


def _append_batches(shard: LocalShard, batches: dict[str, EventBatch]) -> list[int]:
    """Append moved events (one batch per event type, each event named by its live canonical profile
    here); their event ids are held by their new rows. Returns the rows that received events."""
    received: list[int] = []
    for name, batch in batches.items():
        if not len(batch):
            continue
        targets = dict.fromkeys(batch.ids)  # few targets, many events: look each up once
        found = dict(zip(targets, shard.profiles.idmap.lookup(list(targets)).tolist()))
        rows = np.array(list(map(found.__getitem__, batch.ids)), dtype=np.int64)
        assert bool((rows >= 0).all()), "moved events name a profile this shard does not hold"
        owners = rows.astype(np.int32)
        eids = None if batch.event_ids is None else shard.events.event_ids.acquire(owners, batch.event_ids)
        shard.events.types[name].append(owners, batch.ts, batch.props, eids)
        received.extend(found.values())
    return received


def fill_columns(shard: LocalShard, fills: dict[str, dict[int, Any]]) -> dict[str, tuple[np.ndarray, Column]]:
    """The gathered attribute fills (row -> value per attribute) as (rows, column) per attribute, for the
    rows whose attribute is null (a target's own value is kept)."""
    profiles = shard.profiles
    columns: dict[str, tuple[np.ndarray, Column]] = {}
    for name, values in fills.items():
        index = profiles.indexes.get(name)
        if index is None or not values:
            continue
        rows = np.fromiter(values, dtype=np.int64, count=len(values))
        empty = ~np.isin(rows, rows_of(index.notnull & to_bitmap(rows)))
        kept = [value for value, take in zip(values.values(), empty.tolist()) if take]
        if kept:
            columns[name] = (rows[empty], column_from_values(profiles.schema.attributes[name].type, kept))
    return columns


def _fill(shard: LocalShard, fills: dict[str, dict[int, Any]]) -> None:
    """Write the gathered attribute fills, then forget them."""
    for name, (rows, column) in fill_columns(shard, fills).items():
        shard.profiles.indexes[name].assign(rows, column)
    fills.clear()


def _leave(shard: LocalShard, leaving: dict[str, dict[str, int] | None], now: int) -> np.ndarray:
    """Remove the departing profiles ``leaving`` (id -> its events per type, None: unknown), all but the
    saved-segment sync and forgetting their ids (``settle``); returns their rows."""
    rows, counts = departures(shard, leaving)
    if len(rows):
        remove_profiles(shard, rows, now, counts, settled=False)
    return rows


def departures(shard: LocalShard,
               leaving: dict[str, dict[str, int] | None]) -> tuple[np.ndarray, dict[str, int] | None]:
    """The rows of the departing profiles ``leaving`` that are live here (distinct, sorted) and their
    events per type (None: not known, counted when they are removed)."""
    ids = list(leaving)
    rows = live_rows(shard, ids)
    here = np.flatnonzero(rows >= 0)
    counts: dict[str, int] | None = {}
    for position in here.tolist():
        per_type = leaving[ids[position]]
        if per_type is None or counts is None:
            counts = None
            continue
        for name, n in per_type.items():
            counts[name] = counts.get(name, 0) + n
    return np.unique(rows[here]), counts


def remove_profiles(shard: LocalShard, rows: np.ndarray, now: int, counts: dict[str, int] | None = None,
                    erase: bool = False, settled: bool = True,
                    unindexing: dict[str, Unindexing] | None = None) -> np.ndarray:
    """Take canonical ``rows`` out of the shard: aliases, events (deleted by marking, ``counts`` of them
    per type, None: counted here; ``erase``: removed from the runs), attributes, consents, saved-segment
    memberships (exits recorded under their ids), then their ids (not ``settled``: the caller syncs the
    segments and forgets the ids, see ``settle``; ``unindexing``: the bitmaps holding them, worked out
    ahead, see ``event_rows.plan_unindex``). Returns the dropped aliases' hashes."""
    heads = shard.aliases.head.view()
    with_aliases = rows[rows < len(heads)]
    with_aliases = with_aliases[heads[with_aliases] >= 0]  # most rows have no alias: skip them at once
    hashes = [shard.aliases.drop_hashes(row) for row in with_aliases.tolist()]
    if erase:
        drop_rows(shard.events, rows, len(shard.profiles.idmap))
    else:
        bury_rows(shard.events, rows, counts, unindexing)
    shard.profiles.remove_rows(rows, forget=False)
    if settled:
        settle(shard, rows, [], len(shard.profiles.idmap), now)
    return np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)


def erase(shard: LocalShard, ids: list[str], now: int) -> list[Any]:
    """Erase the canonical profiles ``ids`` held here; returns [how many, the hashes of their aliases]."""
    rows = np.unique(np.array([r for r in (live_row(shard, i) for i in ids) if r >= 0], dtype=np.int64))
    if len(rows) == 0:
        return [0, np.zeros(0, dtype=np.uint64)]
    return [len(rows), remove_profiles(shard, rows, now, erase=True)]


def export(shard: LocalShard, profile_id: str) -> dict[str, Any] | None:
    """The contract's export of canonical profile ``profile_id`` (None if it is not a live profile here)."""
    row = live_row(shard, profile_id)
    if row < 0:
        return None
    events = []
    per_type = events_of(shard.events, np.array([row], dtype=np.int64), len(shard.profiles.idmap))[0]
    now = time.time_ns() // 1_000_000
    for name, entry in per_type.items():
        earliest = floor(shard.events.types[name].definition, now)
        event_ids = entry.get("event_ids")
        for i, ts in enumerate(entry["ts"]):
            if ts < earliest:
                continue
            record = {"event": name, "ts": ts}
            if event_ids is not None and event_ids[i] is not None:
                record["event_id"] = event_ids[i]
            record.update((prop, values[i]) for prop, values in entry["props"].items() if values[i] is not None)
            events.append(record)
    events.sort(key=lambda e: (e["ts"], e["event"]))
    return {"id": profile_id, "aliases": sorted(shard.aliases.aliases_of(row)),
            "attributes": shard.profiles.attributes_of(row), "consent": shard.profiles.consents_of(row),
            "events": events}


def _receive(shard: LocalShard, steps: list[tuple], fills: dict[str, dict[int, Any]]) -> list[int]:
    """Merge each ``("in", id, payload)`` step's payload into ``id`` (created if unknown), in order, the
    attribute fills into ``fills``; returns the target rows. The steps are applied together: one id-map
    call, one consent write per purpose, one append per event type, one alias insert."""
    if not steps:
        return []
    profiles = shard.profiles
    rows = profiles.ensure_rows([step[1] for step in steps]).tolist()
    profiles._wrote()
    consents: dict[int, dict[str, bool]] = {}  # row -> every purpose set so far, merged
    asked = np.unique(np.array([row for row, step in zip(rows, steps) if step[2]["consents"]], dtype=np.int64))
    if len(asked):
        consents = dict(zip(asked.tolist(), profiles.consents_of_rows(asked)))
    named: dict[str, dict[int, None]] = {}  # purpose -> rows whose payloads named it
    events: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    aliases: list[str] = []
    alias_rows: list[int] = []
    for row, (_, profile_id, payload) in zip(rows, steps):
        for name, value in payload["attrs"].items():  # the first value a row receives; _fill keeps the target's
            pending = fills.get(name)
            if pending is None:
                pending = fills[name] = {}
            pending.setdefault(row, value)
        if payload["consents"]:
            current = consents[row]
            for purpose, granted in payload["consents"].items():
                if purpose in profiles.consents:
                    current[purpose] = merge_consent(current.get(purpose), bool(granted))
                    named.setdefault(purpose, {})[row] = None
        for name, entry in payload["events"].items():
            events.setdefault(name, []).append((row, entry))
        moved = [alias for alias in payload["aliases"] if alias != profile_id]
        aliases.extend(moved)
        alias_rows.extend([row] * len(moved))
    for purpose, touched in named.items():
        target = np.fromiter(touched, dtype=np.int64, count=len(touched))
        profiles._set_consent(purpose, target, np.array([bool(consents[r][purpose]) for r in touched], dtype=bool))
    for name, entries in events.items():
        _append_moved(shard, name, entries)
    shard.aliases.add_many(aliases, alias_rows)
    return rows


def _append_moved(shard: LocalShard, name: str, entries: list[tuple[int, dict[str, Any]]]) -> None:
    """Append the moved events of type ``name`` (per target row, a payload's events of that type) at once;
    their event ids are held by their new rows."""
    store = shard.events.types[name]
    kinds = store.definition.properties
    counts = [len(entry["ts"]) for _, entry in entries]
    owners = np.repeat(np.array([row for row, _ in entries], dtype=np.int32), counts)
    ts = np.fromiter((t for _, entry in entries for t in entry["ts"]), dtype=np.int64, count=len(owners))
    columns = {}
    for prop, kind in kinds.items():
        if any(prop in entry["props"] for _, entry in entries):
            values = [v for (_, entry), n in zip(entries, counts) for v in entry["props"].get(prop, [None] * n)]
            columns[prop] = column_from_values(kind, values)
    eids = None
    if any("event_ids" in entry for _, entry in entries):
        event_ids = [e for (_, entry), n in zip(entries, counts) for e in entry.get("event_ids", [None] * n)]
        eids = shard.events.event_ids.acquire(owners, event_ids)
    store.append(owners, ts, columns, eids)
