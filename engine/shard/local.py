"""One shard in the current process: profile store, event store, executor, saved segments.

This is the unit every backend runs (in-process, in a worker process, or as a Ray actor); its
methods take and return plain data (lists, dicts, ints, bytes) so they cross a process
boundary as msgpack.
"""
from __future__ import annotations

import logging
import weakref
from contextlib import nullcontext
from typing import Any

import numpy as np
from pyroaring import BitMap

from ..columns import EventBatch, ProfileBatch, column_from_values
from ..concurrency import in_view_call
from ..errors import ProfileNotFound
from ..exec.breakdown import breakdown_counts, overlap_counts
from ..exec import lookalike
from ..exec.did import DidEvaluator
from ..exec.executor import Executor
from ..exec.why import explain_row
from ..explain import TracingExecutor
from ..plan.steps import Step
from ..query.ast import Node
from ..persist.shard_persistence import ShardPersistence
from ..schema import EventRecord, ProfileUpdate, Schema
from ..schema_change import diff
from ..segments import SavedSegments
from ..store.bitmaps import to_bitmap
from ..store.aliases import AliasStore
from ..store.events import EventStore
from ..store.member_columns import member_columns
from ..store.memory import release_after_bulk, tune_allocator
from ..store.profiles import ProfileStore
from . import identity_ops
from .prepared import PREPARED_METHODS, PreparedEvents, commit_load_events, plan_load_events
from .prepared_merge import PreparedMerge, commit_merge, plan_merge

log = logging.getLogger(__name__)


class _SegmentRowsOf:
    """``shard.segment_rows`` for the executor, holding the shard weakly: no reference cycle, so a
    dropped shard frees its memory at once rather than at the next full garbage collection."""

    __slots__ = ("shard",)

    def __init__(self, shard: "LocalShard"):
        self.shard = weakref.ref(shard)

    def __call__(self, name: str) -> BitMap:
        return self.shard().segment_rows(name)

    def __reduce__(self):  # the legacy snapshot formats (engine.persist.legacy) pickle the shard
        return _SegmentRowsOf, (self.shard(),)


class LocalShard:
    """The data and query execution of one shard."""

    def __init__(self, schema: Schema, shard_id: int = 0):
        tune_allocator()
        self.schema = schema
        self.shard_id = shard_id
        self.persistence = ShardPersistence()  # log position, recovery, snapshot store (see engine.persist)
        self.prepared: PreparedEvents | PreparedMerge | None = None  # the next write, worked out by prepare_logged
        self.adopt(ProfileStore(schema), EventStore(schema.events))

    def adopt(self, profiles: ProfileStore, events: EventStore, aliases: AliasStore | None = None) -> None:
        """Serve ``profiles``, ``events`` and ``aliases`` (new executors, no saved segments; change capture kept)."""
        capture = "saved" in vars(self) and self.saved.capture
        self.prepared = None
        self.profiles = profiles
        self.events = events
        self.aliases = aliases if aliases is not None else AliasStore()
        self.did = DidEvaluator(events)
        self.executor = Executor(profiles, self.did, _SegmentRowsOf(self))
        self.saved = SavedSegments(profiles, events, self.executor)
        self.saved.set_capture(capture)
        self.segments: dict[str, BitMap] = self.saved.bitmaps  # name -> members (owned by self.saved)
        self.lookalike_features = lookalike.FeatureCache()  # a lookalike call's feature bitmaps, between its rounds

    # -- writes -----------------------------------------------------------------------------
    def upsert(self, updates: list[ProfileUpdate], now: int | None = None) -> int:
        """Apply validated profile upserts; returns how many were applied.

        ``now`` (epoch ms; None = wall clock) is the clock saved segments are brought to.
        """
        if updates:
            known = len(self.profiles.idmap)
            rows = self.profiles.apply_updates(updates)
            self.saved.sync(rows, now, {name for u in updates for name in u.attrs}, (), _created(rows, known),
                            {purpose for u in updates for purpose in u.consents})
        return len(updates)

    def track(self, events: list[EventRecord], now: int | None = None) -> int:
        """Append validated events (creating unknown profiles); returns how many were applied (an event
        whose profile holds its event id already, or an earlier event of the batch holds it, is not)."""
        if not events:
            return 0
        known = len(self.profiles.idmap)
        rows = self.profiles.ensure_rows([e.id for e in events], repeats=True)
        keep, eids = self.events.event_ids.admit(rows, [e.event_id for e in events])
        with_ids = bool((eids >= 0).any())
        by_type: dict[str, list[int]] = {}
        for position, event in enumerate(events):
            if keep[position]:
                by_type.setdefault(event.event, []).append(position)
        for name, positions in by_type.items():
            definition = self.schema.events[name]
            columns = {
                prop: column_from_values(kind, [events[p].props.get(prop) for p in positions])
                for prop, kind in definition.properties.items()
                if any(prop in events[p].props for p in positions)
            }
            ts = np.fromiter((events[p].ts for p in positions), dtype=np.int64, count=len(positions))
            self.events.types[name].append(rows[positions], ts, columns, eids[positions] if with_ids else None)
        self.saved.sync(rows, now, (), by_type, _created(rows, known))
        return int(keep.sum())

    def load_profiles(self, batch: ProfileBatch, now: int | None = None) -> int:
        """Apply a columnar profile batch."""
        known = len(self.profiles.idmap)
        rows = self.profiles.load_batch(batch)
        self.saved.sync(rows, now, batch.columns, (), _created(rows, known), batch.consents)
        release_after_bulk(len(batch))
        return len(batch)

    def load_events(self, batch: EventBatch, now: int | None = None, plan: PreparedEvents | None = None) -> int:
        """Append a columnar event batch (``plan``: the write as ``prepare_logged`` worked it out)."""
        return commit_load_events(self, plan if plan is not None else plan_load_events(self, batch, now))

    def update_schema(self, spec: dict[str, Any]) -> None:
        """Take a schema that extends this shard's (see engine.schema_change): new names start null."""
        schema = Schema.from_dict(spec)
        diff(self.schema, schema)  # SchemaChangeRefused if it removes or retypes anything
        self.schema = schema
        self.profiles.adopt(schema)
        self.events.adopt(schema.events)

    def merge(self, steps: list[tuple], now: int, plan: PreparedMerge | None = None) -> int:
        """Apply this shard's steps of a merge command in order (see engine.shard.identity_ops; ``plan``:
        the steps as ``prepare_logged`` worked them out, engine.shard.prepared_merge)."""
        if plan is not None:
            return commit_merge(self, plan)
        if in_view_call():
            self.saved.close_view()  # the whole path forgets ids as it goes: membership waits for the publish
        return identity_ops.apply_steps(self, steps, now)

    def erase(self, ids: list[str], now: int) -> list[Any]:
        """Erase canonical profiles ``ids`` and their aliases; returns [how many, the aliases' hashes]."""
        return identity_ops.erase(self, ids, now)

    def expire(self, now: int) -> int:
        """Delete the events past their type's retention at clock ``now``; returns how many."""
        from ..retention import expire_events

        deleted, rows = expire_events(self.events, now)
        if deleted:
            self.saved.sync(rows, now, (), None)
        return deleted

    # -- identity reads (see engine.identity) -------------------------------------------------
    def export_profile(self, profile_id: str) -> dict[str, Any] | None:
        """The contract's export of canonical profile ``profile_id`` (None if not a live profile here)."""
        return identity_ops.export(self, profile_id)

    def identity_payloads(self, ids: list[str]) -> dict[str, Any]:
        """What the merge sources ``ids`` hold here: payloads and events (see identity_ops.payloads)."""
        return identity_ops.payloads(self, ids)

    def canonical_ids(self, ids: list[str]) -> list[str | None]:
        """The canonical id of each alias held here (None where an id is not one of this shard's aliases)."""
        return identity_ops.canonical_ids(self, ids)

    def alias_hashes(self) -> np.ndarray:
        """The blake2b-64 hash of every alias this shard holds (uint64)."""
        return self.aliases.hashes()

    # -- reads ------------------------------------------------------------------------------
    def count(self, step: Step, now: int) -> int:
        """Number of profiles selected by ``step``."""
        return self.executor.count(step, now)

    def rows(self, step: Step, now: int) -> BitMap:
        """Rows selected by ``step``."""
        return self.executor.evaluate(step, now)

    def ids(self, step: Step, now: int) -> list[str]:
        """Canonical ids selected by ``step``, sorted ascending."""
        rows = self.rows(step, now)
        return sorted(self.profiles.idmap.ids_of(np.frombuffer(rows.to_array(), dtype=np.uint32)))

    def segment_rows(self, name: str) -> BitMap:
        """Current members of saved segment ``name``."""
        return self.saved.rows(name)

    def profile(self, profile_id: str) -> dict[str, Any]:
        """The current record of ``profile_id`` (ProfileNotFound if unknown)."""
        row = self.profiles.idmap.lookup_one(profile_id)
        if row < 0 or row not in self.profiles.live:
            raise ProfileNotFound(f"unknown profile {profile_id!r}")
        return self.profiles.profile(row)

    def explain(self, step: Step, now: int) -> dict[str, Any]:
        """The explain tree of ``step`` on this shard (rows and times per plan step)."""
        tracer = TracingExecutor(self.profiles, self.did, self.segment_rows)
        tracer.samples = self.executor.samples
        return tracer.trace(step, now)

    # -- analytics (see engine.exec.breakdown and engine.exec.why) ----------------------------
    def breakdown(self, step: Step, now: int, by: str, bins: list[int | float] | None) -> list[list[Any]]:
        """``[key, count]`` of the rows ``step`` selects per value (or bin position) of attribute ``by``."""
        return breakdown_counts(self.profiles, self.executor.evaluate(step, now), by, bins)

    def overlap(self, steps: list[Step], now: int) -> list[list[int]]:
        """The pairwise intersection sizes of the answers of ``steps`` (each distinct step evaluated once)."""
        answers: dict[Step, BitMap] = {}
        for step in steps:
            if step not in answers:
                answers[step] = self.executor.evaluate(step, now)
        return overlap_counts([answers[step] for step in steps])

    def why(self, profile_id: str, node: Node, now: int, with_events: bool) -> dict[str, Any]:
        """The explanation tree of the bound query ``node`` for canonical profile ``profile_id``
        (ProfileNotFound if it is not live here)."""
        row = self.profiles.idmap.lookup_one(profile_id)
        if row < 0 or row not in self.profiles.live:
            raise ProfileNotFound(f"unknown profile {profile_id!r}")
        return explain_row(self, row, node, now, with_events)

    # -- lookalikes (see engine.lookalike and engine.exec.lookalike) -------------------------
    def lookalike_counts(self, seed: Step | list, within: Step, now: int) -> dict[str, Any]:
        """Seed size, unknown seed ids, candidates and this shard's feature vocabulary."""
        return lookalike.counts(self, seed, within, now)

    def lookalike_sample(self, seed: Step | list, within: Step, features: list[Step], positives: Step,
                         negatives: Step, now: int, token: int) -> dict[str, Any]:
        """The training rows of this shard (sampled seed and candidates) as packed feature bits; the
        feature bitmaps are kept for the ``lookalike_score`` call with the same ``token``."""
        return lookalike.sample(self, seed, within, features, positives, negatives, now, token)

    def lookalike_score(self, seed: Step | list, within: Step, features: list[Step], model: dict[str, Any],
                        now: int, token: int) -> dict[str, Any]:
        """This shard's best candidates under ``model``: ids, scores and top features."""
        return lookalike.score(self, seed, within, features, model, now, token)

    # -- saved segments (see engine.segments) -----------------------------------------------
    def create_segment(self, name: str, text: str, step: Step, now: int, replace: bool) -> dict[str, Any]:
        """Create (or replace) saved segment ``name``; returns its info with this shard's count."""
        return self.saved.create(name, text, step, now, replace)

    def delete_segment(self, name: str) -> None:
        """Delete saved segment ``name``."""
        self.saved.delete(name)

    def segment_info(self, name: str) -> dict[str, Any]:
        """Definition and this shard's member count of ``name``."""
        return self.saved.info(name)

    def segment_infos(self) -> list[dict[str, Any]]:
        """``segment_info`` of every saved segment, in dependency order."""
        return [self.saved.info(name) for name in self.saved.catalog.order]

    def membership(self, profile_id: str, names: list[str] | None) -> list[str]:
        """Saved segments (sorted) that ``profile_id`` is in, among ``names`` if given."""
        return self.saved.membership(profile_id, names)

    def segment_sizes(self) -> dict[str, int]:
        """This shard's member count of every saved segment."""
        return self.saved.sizes()

    def member_columns(self, rows: np.ndarray, attributes: list[str]) -> dict[str, Any]:
        """Ids and ``attributes`` of the live rows among sorted ``rows`` (see engine.store.member_columns)."""
        return member_columns(self.profiles, rows, attributes)

    def sync_view(self) -> None:
        """The sync step of the view write just applied: re-evaluate the saved segments on the rows it
        touched, membership still seeing them as they were (engine.concurrency)."""
        self.saved.sync_later()

    def publish_view(self) -> None:
        """Switch membership to the state after the view write just applied (engine.concurrency)."""
        self.saved.publish()

    def refresh_segments(self, now: int) -> None:
        """Bring time-relative saved segments to clock ``now`` (in a view call, in the sync step that follows)."""
        with self.saved.deferring(creates_rows=False) if in_view_call() else nullcontext():
            self.saved.sync(None, now)

    def capture_changes(self, on: bool) -> None:
        """Start or stop recording segment membership changes."""
        self.saved.set_capture(on)

    def take_changes(self) -> dict[str, Any]:
        """Membership changes recorded since the last call (see SavedSegments.take_changes)."""
        return self.saved.take_changes()

    # -- durability (see engine.persist: shards recover and snapshot themselves) ---------------
    def prepare_logged(self, seq: int, method: str, args: tuple) -> bool:
        """Work out the write ``method(*args)`` of log record ``seq`` without changing what readers see
        (engine/shard/prepared.py); ``apply_logged(seq, ...)`` then commits it. False if there is
        nothing to prepare (the commit then does the whole write)."""
        self.prepared = None
        if method not in PREPARED_METHODS or seq <= self.persistence.applied_seq:
            return False
        try:
            if method == "merge":
                self.prepared = plan_merge(self, *args, seq=seq)
            else:
                self.prepared = plan_load_events(self, *args, seq=seq)
        except Exception:  # the commit works the write out again and raises its error where it belongs
            log.exception("preparing write %d failed; it is applied without a prepare phase", seq)
        return self.prepared is not None

    def apply_logged(self, seq: int, method: str, args: tuple | None) -> Any:
        """Apply the write ``method(*args)`` of log record ``seq``, unless this shard already has it
        (``args`` None: the arguments this shard prepared the write with, see ``Engine._prepare``)."""
        from ..persist.recovery import apply_logged

        plan, self.prepared = self.prepared, None
        if args is None:  # the commit of a write this shard prepared, sent without its arguments (Engine._prepare)
            if seq <= self.persistence.applied_seq:
                return None  # applied already (a respawned worker replayed it from the log)
            if not isinstance(plan, PreparedMerge) or not plan.valid_for(self, seq):
                raise RuntimeError(f"write {seq} was sent by reference, but its prepared plan is gone")
            args = plan.args
        if plan is not None and method in PREPARED_METHODS and plan.valid_for(self, seq):
            args = (*args, plan)
        return apply_logged(self, seq, method, args)

    def recover(self, data_dir: str) -> dict[str, Any]:
        """Load this shard from ``data_dir``: its newest snapshot part, then its share of the log after it."""
        from ..persist.recovery import recover_shard

        return recover_shard(self, data_dir)

    def snapshot_capture(self, data_dir: str, snapshot_id: int, fresh: bool = False) -> dict[str, int]:
        """Copy this shard's data now; write it as snapshot ``snapshot_id`` in the background (``fresh``:
        into a new store, which replaces the shard's once the snapshot is committed: after an erasure)."""
        from ..persist import recovery, snapshot

        return snapshot.start(self, recovery.shard_path(data_dir, self.shard_id), snapshot_id, fresh)

    def snapshot_status(self, snapshot_id: int) -> dict[str, int] | None:
        """This shard's part of snapshot ``snapshot_id`` once durable; None while it is being written."""
        from ..persist import snapshot

        return snapshot.status(self, snapshot_id)

    def snapshot_prune(self, data_dir: str, keep: list[int]) -> int:
        """Delete this shard's snapshot chunks except those of the snapshots ``keep``."""
        from ..persist import recovery, snapshot

        return snapshot.prune(self, recovery.shard_path(data_dir, self.shard_id), keep)

    def snapshot_close(self, data_dir: str) -> None:
        """Finish a running snapshot write and close this shard's snapshot store."""
        from ..persist import snapshot

        snapshot.finish(self)

    def stats(self) -> dict[str, Any]:
        """Sizes of this shard's data."""
        return {
            "shard": self.shard_id,
            "profiles": len(self.profiles),
            "events": len(self.events),
            "events_by_type": {name: len(t) for name, t in self.events.types.items()},
            "segments": len(self.saved.catalog),
            "segment_bytes": self.saved.nbytes,
            "aliases": len(self.aliases),
            "levels_building": sum(t.level_builds.building() for t in self.events.types.values()),
        }


def _created(rows: np.ndarray, known: int) -> BitMap:
    """The rows of ``rows`` at or past ``known`` (profiles a write created)."""
    return to_bitmap(np.unique(rows[rows >= known]))
