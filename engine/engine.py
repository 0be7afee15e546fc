"""The embedded engine: the coordinator of the contract's Python API.

The coordinator holds no profile data. It validates records and routes them to the shard
that owns each id, parses, binds and plans each query once (plans cached by query text),
sends the plan to every shard and merges the answers (counts summed, sorted ids merged).
"""
from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable

from .batch_check import check_event_batch
from .columns import EventBatch, ProfileBatch
from .concurrency import PublishLock
from .commands import (Command, CreateSegment, DeleteSegment, Erase, Expire, LoadEvents, LoadProfiles, Merge, Track, UpdateSchema,
                       Upsert, applied_count, merged_segment_info, route)
from .errors import BadRequest, DataDirMismatch, DataError, SegmentExists
from .explain import merge_trees
from .identity import Identity
from .plan import Step, plan
from .query import bind, parse, to_text
from .schema import Schema, check_id
from .schema_change import diff
from .segment_time import segment_refs
from .segment_catalog import SegmentCatalog, SegmentDef
from .shard.group import ShardGroup
from .shard.partition import shard_of
from .timeparse import check_clock
from .watch import DEFAULT_CAPACITY, ChangeHub, Subscription

if TYPE_CHECKING:
    from .persist import DataDir


def wall_clock_ms() -> int:
    """The current UTC time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def query_clock(now: int | None) -> int:
    """The clock of a query: the wall clock for None, else ``now`` (BadRequest past +-2**62 ms)."""
    if now is None:
        return wall_clock_ms()
    try:
        return check_clock(now)
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from None


class PlanCache:
    """LRU cache of compiled plans, and the saved segments each reads, keyed by query text."""

    def __init__(self, schema: Schema, capacity: int = 4096):
        self.schema = schema
        self.capacity = capacity
        self.entries: OrderedDict[str, tuple[Step, frozenset[str]]] = OrderedDict()
        self.lock = threading.Lock()

    def entry(self, text: str) -> tuple[Step, frozenset[str]]:
        """(plan, saved segments it reads) of ``text``, parsed, bound and planned once."""
        with self.lock:
            hit = self.entries.get(text)
            if hit is not None:
                self.entries.move_to_end(text)
                return hit
        step = plan(bind(parse(text), self.schema))
        hit = (step, segment_refs(step))
        with self.lock:
            self.entries[text] = hit
            if len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        return hit

    def get(self, text: str) -> Step:
        """The plan of ``text``."""
        return self.entry(text)[0]


def make_shards(schema: Schema, shards: int, backend: str, address: str | None,
                data_dir: str | None = None) -> ShardGroup:
    """Start ``shards`` shards on ``backend`` ("local", "process" or "ray"; "auto": local for 1, else process)."""
    if backend == "local" or (backend == "auto" and shards == 1):
        from .shard.local import LocalShard

        return ShardGroup([LocalShard(schema, i) for i in range(shards)])
    if backend in ("process", "auto"):
        from .shard.process import start_process_shards

        return start_process_shards(schema, shards, data_dir)
    if backend == "ray":
        from .shard.ray_backend import start_ray_shards

        return start_ray_shards(schema, shards, address, data_dir)
    raise ValueError(f"unknown backend {backend!r} (expected 'local', 'process' or 'ray')")


class Engine:
    """A segmentation engine over ``shards`` shards (the Python API of README.md, "Using it")."""

    def __init__(self, schema: Schema, shards: int = 1, data_dir: str | None = None, backend: str = "auto",
                 address: str | None = None, durability: dict[str, Any] | None = None):
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.schema = schema
        self.n_shards = shards
        self.data_dir = data_dir
        self.plans = PlanCache(schema)
        self.shards = make_shards(schema, shards, backend, address, data_dir)
        self.publish = PublishLock()  # reads share it, the application of a write holds it alone
        self.closed = False
        # saved segments: definitions here, members in the shards (see engine.segments)
        self.clock = wall_clock_ms  # the clock saved segments follow; tests may replace it
        self.refresh_ms = 1000  # reads refresh time-relative segments when they are more than this behind
        self.auto_refresh = True  # False: only refresh_segments() does (a server refreshes from its own timer)
        self.catalog = SegmentCatalog()
        self.changes = ChangeHub()
        self._refreshed_at = 0
        self._capturing = False
        self._write_lock = threading.Lock()  # in memory: writes are numbered and applied one at a time
        self._last_seq = 0
        self.identity = Identity(self)  # aliases: routing index and merge planning (see engine.identity)
        # with a data_dir: recover from it, then log every write before applying it (engine.persist);
        # ``durability``: options of engine.persist.DataDir (snapshot_every_s, snapshot_log_bytes, map_size)
        self.durable: DataDir | None = None
        if data_dir is not None:
            from .persist import DataDir

            try:
                self.durable = DataDir(self, data_dir, **(durability or {}))
                self.identity.rebuild()
                if self.durable.schema_unlogged:  # opened with a schema that adds names: log the change
                    self.write(UpdateSchema(self.schema.to_dict()))
            except BaseException:
                if self.durable is not None:
                    self.durable.close()
                self.shards.close()
                raise

    # -- writes: every change is one command on one path (see engine.commands) --------------
    def upsert_profiles(self, records: Iterable[dict]) -> int:
        """Validate then apply profile upserts, all or none (DataError names the record index)."""
        updates = [self.schema.validate_profile(record, i) for i, record in enumerate(records)]
        return self.write(Upsert(updates, self._write_clock()))

    def track_events(self, records: Iterable[dict]) -> int:
        """Validate then apply events, all or none (DataError names the record index)."""
        events = [self.schema.validate_event(record, i) for i, record in enumerate(records)]
        return self.write(Track(events, self._write_clock()))

    def load_profiles(self, batch: ProfileBatch) -> int:
        """Bulk-load a columnar profile batch (same effect as upserting its records)."""
        for name in batch.columns:
            if name not in self.schema.attributes:
                raise DataError("unknown attribute", None, name)
        return self.write(LoadProfiles(batch, self._write_clock()))

    def load_events(self, batch: EventBatch) -> int:
        """Bulk-load a columnar batch of events of one type."""
        if batch.event not in self.schema.events:
            raise DataError(f"unknown event type {batch.event!r}", None, "event")
        return self.write(LoadEvents(batch, self._write_clock()))

    def load_checked_events(self, batch: EventBatch) -> int:
        """``load_events`` for a batch from an untrusted producer: every column checked first (DataError)."""
        check_event_batch(self.schema, batch)
        return self.load_events(batch)

    def write(self, command: Command) -> Any:
        """Apply write ``command``: checked, aliases resolved, then (with a data_dir) logged durably, then
        applied in order."""
        self._check(command)
        with self.identity.lock:
            command = self.identity.resolve_command(command)
            if self.durable is None:
                with self._write_lock:
                    self._last_seq += 1
                    return self.apply(command, self._last_seq)
            ticket = self.identity.last_ticket = self.durable.submit(command)
        return ticket.wait()

    # -- identity (contract section 6; see engine.identity) ---------------------------------
    def merge(self, from_id: str, into_id: str) -> int:
        """Make ``from_id`` an alias of ``into_id``, moving its data; returns 1 if anything changed, else 0."""
        return self.merge_many([(from_id, into_id)])

    def merge_many(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Merges applied in order, all or none (one logged write); returns how many changed anything."""
        pairs = list(pairs)
        with self.identity.lock:
            if self.identity.last_ticket is not None:
                try:
                    self.identity.last_ticket.wait()  # every earlier write applied before the sources are read
                except Exception:
                    pass  # that write's caller has its error
            command = self.identity.plan_merges(pairs, self._write_clock())
            if command is None:
                return 0
            self.write(command)
        return sum(1 for step in command.steps if step[0] == "in")

    def delete_profiles(self, ids: Iterable[str]) -> int:
        """Erase the canonical profiles ``ids`` name and all their aliases (durable on return); returns how
        many canonical profiles were erased (unknown ids are ignored)."""
        ids = [check_id(profile_id, i) for i, profile_id in enumerate(ids)]
        with self.identity.lock:
            canonical = sorted(set(self.identity.resolve(ids)))
            if not canonical:
                return 0
            return self.write(Erase(canonical, self._write_clock()))

    def expire(self, now: int | None = None) -> int:
        """Delete the events past their type's retention at clock ``now`` (default: the engine clock), a
        logged write; returns how many were deleted."""
        if not any(e.retention_ms is not None for e in self.schema.events.values()):
            return 0
        return self.write(Expire(self.clock() if now is None else int(now)))

    def export_profile(self, profile_id: str) -> dict[str, Any] | None:
        """Everything held about the profile ``profile_id`` names (contract section 6), None if unknown."""
        check_id(profile_id, None)
        self._tick()
        return self._on_owner("export_profile", self.identity.resolve([profile_id])[0])

    def apply(self, command: Command, seq: int) -> Any:
        """Apply ``command`` as write number ``seq`` to the shards, then to the coordinator's catalog.

        The one write path: called in write order by ``write`` in memory and by the durable
        log's applier once the command is logged. Returns the number of records applied, a
        created segment's info, or None.
        """
        definition = self._check(command)
        calls = route(command, self.n_shards, self.compile)
        tagged = [None if call is None else (seq, *call) for call in calls]
        with self.publish.writing():
            results = self.durable.send(tagged) if self.durable is not None else \
                self.shards.call_each("apply_logged", tagged)
            result: Any = None
            if isinstance(command, CreateSegment):
                self.catalog.put(definition)
                result = merged_segment_info(results)
            elif isinstance(command, DeleteSegment):
                self.catalog.remove(command.name)
            elif isinstance(command, UpdateSchema):
                self.adopt_schema(Schema.from_dict(command.spec))
            elif isinstance(command, Merge):
                self.identity.applied(command)
                result = applied_count(results)
            elif isinstance(command, Erase):
                result = self.identity.erased(results)
                if self.durable is not None:
                    self.durable.note_erasure(seq)
            else:
                result = applied_count(results)
            self._publish()
        return result

    def _check(self, command: Command) -> SegmentDef | None:
        """The catalog's checks of a segment command (raises); the definition a CreateSegment puts."""
        if isinstance(command, CreateSegment):
            step = self.compile(command.query)
            if command.name in self.catalog and not command.replace:
                raise SegmentExists(f"segment {command.name!r} already exists")
            return self.catalog.prepare(command.name, command.query, step, command.now)
        if isinstance(command, DeleteSegment):
            self.catalog.check_removable(command.name)
        if isinstance(command, UpdateSchema):
            diff(self.schema, Schema.from_dict(command.spec))
        return None

    def update_schema(self, schema: Schema | dict[str, Any]) -> dict[str, Any]:
        """Extend the schema (a logged write): add attributes, event types, event properties, consent
        purposes, or set event retention. Removing or retyping anything raises SchemaChangeRefused.

        Returns ``{"schema": the resulting schema's JSON form, "changes": [one line per change]}``.
        """
        try:
            new = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        except ValueError as error:
            raise DataError(f"bad schema: {error}", None, "schema") from None
        change = diff(self.schema, new)
        if change:
            self.write(UpdateSchema(new.to_dict()))
        return {"schema": self.schema.to_dict(), "changes": change.describe()}

    def adopt_schema(self, schema: Schema) -> None:
        """Take ``schema`` (which extends the current one) for validation and query planning."""
        self.schema = schema
        self.plans = PlanCache(schema)
        self.shards.adopt_schema(schema.to_dict())

    def restore_catalog(self, infos: list[dict[str, Any]]) -> None:
        """Put the saved segments of a recovered shard (every shard holds the same definitions) in the catalog."""
        for info in infos:
            definition = self.catalog.prepare(info["name"], info["query"], self.compile(info["query"]),
                                              info["updated_ms"])
            self.catalog.put(dataclasses.replace(definition, created_ms=info["created_ms"]))

    # -- queries ----------------------------------------------------------------------------
    def compile(self, query: str) -> Step:
        """The plan of ``query`` (QueryError if malformed)."""
        return self.plans.get(query)

    def count(self, query: str, now: int | None = None) -> int:
        """Number of live profiles in the segment ``query`` at clock ``now`` (epoch ms; None = wall clock)."""
        step, refs = self.plans.entry(query)
        self._read_segments(refs)
        at = query_clock(now)
        with self.publish.reading():
            return sum(self.shards.call_all("count", step, at))

    def ids(self, query: str, now: int | None = None) -> list[str]:
        """Canonical ids of the segment ``query``, sorted ascending."""
        step, refs = self.plans.entry(query)
        self._read_segments(refs)
        at = query_clock(now)
        with self.publish.reading():
            parts = self.shards.call_all("ids", step, at)
        if len(parts) == 1:
            return parts[0]
        merged = list(itertools.chain.from_iterable(parts))
        merged.sort()  # Timsort merges the sorted runs in C (2.5x faster than heapq.merge)
        return merged

    def stats(self) -> dict[str, Any]:
        """Per-shard sizes."""
        with self.publish.reading():
            shards = self.shards.call_all("stats")
        return {"shards": shards, "profiles": sum(s["profiles"] for s in shards),
                "events": sum(s["events"] for s in shards)}

    def explain(self, query: str, now: int | None = None) -> dict[str, Any]:
        """The plan of ``query`` as a tree with, per step, rows selected and time taken (summed over shards)."""
        step, refs = self.plans.entry(query)
        self._read_segments(refs)
        at = query_clock(now)
        started = time.perf_counter()
        with self.publish.reading():
            tree = merge_trees(self.shards.call_all("explain", step, at))
        return {"query": to_text(bind(parse(query), self.schema)), "now_ms": at, "count": tree.pop("count"),
                "ms": (time.perf_counter() - started) * 1000, "plan": tree}

    def profile(self, profile_id: str) -> dict[str, Any]:
        """The current record of one profile (ProfileNotFound if unknown)."""
        return self._on_owner("profile", self.identity.resolve([check_id(profile_id, None)])[0])

    # -- saved segments (definitions here, members in the shards: see engine.segments) -------
    def create_segment(self, name: str, query: str, replace: bool = False) -> dict[str, Any]:
        """Save ``query`` as segment ``name``, materialised and kept current; returns its info.

        SegmentExists if ``name`` is taken (unless ``replace``), SegmentNotFound if the query reads
        an unknown segment, QueryError for a bad query or a reference cycle.
        """
        return self.write(CreateSegment(name, query, self._write_clock(), bool(replace)))

    def get_segment(self, name: str) -> dict[str, Any]:
        """Definition and member count of saved segment ``name``."""
        self.catalog.get(name)
        self._tick()
        with self.publish.reading():
            return merged_segment_info(self.shards.call_all("segment_info", name))

    def list_segments(self) -> list[dict[str, Any]]:
        """``get_segment`` of every saved segment, in dependency order."""
        self._tick()
        with self.publish.reading():
            per_shard = self.shards.call_all("segment_infos")
        return [merged_segment_info(list(infos)) for infos in zip(*per_shard)]

    def delete_segment(self, name: str) -> None:
        """Delete saved segment ``name`` (SegmentInUse if another saved segment reads it)."""
        self.write(DeleteSegment(name))

    def segment_definitions(self) -> list[tuple[str, str]]:
        """(name, query) of every saved segment in dependency order (re-create them in this order)."""
        return self.catalog.definitions()

    def membership(self, profile_id: str, segments: Iterable[str] | None = None) -> list[str]:
        """The saved segments ``profile_id`` is in (sorted), among ``segments`` if given."""
        names = list(segments) if segments else None
        if names:
            self.catalog.check_refs(frozenset(names))
        self._tick()
        if isinstance(profile_id, str):
            profile_id = self.identity.resolve([profile_id])[0]
        return self._on_owner("membership", profile_id, names)

    def refresh_segments(self, now: int | None = None) -> None:
        """Bring time-relative saved segments to ``now`` (default: the engine clock)."""
        at = self.clock() if now is None else int(now)
        with self.publish.writing():
            if len(self.catalog):
                self.shards.call_all("refresh_segments", at)
            self._refreshed_at = at
            self._publish()

    def watch(self, segments: Iterable[str] | None = None, capacity: int = DEFAULT_CAPACITY) -> Subscription:
        """Subscribe to membership changes of saved segments (all, or ``segments``); see engine.watch."""
        names = frozenset(segments or ())
        self.catalog.check_refs(names)
        with self.publish.writing():
            subscription = self.changes.subscribe(names, capacity)
            if not self._capturing:
                self.shards.call_all("capture_changes", True)
                self._capturing = True
        return subscription

    def _write_clock(self) -> int:
        now = self.clock()
        self._refreshed_at = now
        return now

    def refresh_due(self) -> bool:
        """True if time-relative segments are more than ``refresh_ms`` behind the clock."""
        return self.catalog.clocked and self.clock() - self._refreshed_at > self.refresh_ms

    def _tick(self) -> None:
        """Refresh time-relative segments if they are more than ``refresh_ms`` behind (and auto_refresh)."""
        if self.auto_refresh and self.refresh_due() and not self.publish.holds_read():
            self.refresh_segments()

    def reads_segments(self, query: str) -> bool:
        """True if ``query`` reads saved segments (``SEGMENT(...)``); QueryError if malformed."""
        return bool(self.plans.entry(query)[1])

    def _read_segments(self, refs: frozenset[str]) -> None:
        """Before a query that reads the saved segments ``refs``: check they exist and are current."""
        if refs:
            self.catalog.check_refs(refs)
            self._tick()

    def _on_owner(self, method: str, profile_id: str, *args: Any) -> Any:
        owner = shard_of(profile_id, self.n_shards) if isinstance(profile_id, str) else 0
        calls: list[tuple | None] = [None] * self.n_shards
        calls[owner] = (profile_id, *args)
        with self.publish.reading():
            return self.shards.call_each(method, calls)[owner]

    def _publish(self) -> None:
        """Hand the shards' recorded membership changes to the watchers (in shard order)."""
        if not self._capturing:
            return
        if not self.changes:
            self.shards.call_all("capture_changes", False)
            self._capturing = False
            return
        for taken in self.shards.call_all("take_changes"):
            if taken["lost"]:
                self.changes.overflow_all()
            elif taken["changes"]:
                self.changes.publish(taken["changes"], taken["at"])

    # -- durability (engines with a data_dir; see engine.persist) ----------------------------
    def snapshot(self) -> dict[str, Any]:
        """Snapshot every shard now and truncate the log before it; returns a summary (id, bytes, seconds)."""
        if self.durable is None:
            raise DataDirMismatch("this engine has no data_dir, so it has nothing to snapshot")
        return self.durable.snapshot()

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the shards (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.durable is not None:
            self.durable.close()
        self.changes.close_all()
        self.shards.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
