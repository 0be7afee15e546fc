"""The embedded engine: the coordinator of the contract's Python API.

The coordinator holds no profile data. It validates records and routes them to the shard that owns
each id, plans each query once (cached by query text), sends the plan to every shard and merges the
answers (counts summed, sorted ids merged).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Sequence

from .analytics import check_breakdown, merge_breakdown, merge_overlap
from .batch_check import check_event_batch
from .columns import EventBatch, ProfileBatch
from .concurrency import PublishLock
from .priority import background_calls
from .collector import collector_paused
from .commands import (COORDINATOR_KINDS, AddDestination, Command, CreateSegment, DeleteSegment, Erase, Expire, LoadEvents,
                       LoadProfiles, Merge, RemoveDestination, Track, UpdateSchema, Upsert, applied_count,
                       merged_segment_info, route)
from .destinations import Destinations
from .errors import DataDirMismatch, DataError, QueryError, SegmentExists, ShardError
from .export_formats import write_members
from .explain import merge_trees
from .identity import Identity
from .member_export import CHUNK_ROWS, MemberChunk, check_attributes, read_chunks
from .observed import WriteCounters
from .plan_cache import PlanCache
from .plan import Step
from .plan.steps import Pred
from .query import bind, parse, to_text
from .query.ast import SegmentRef
from .schema import Schema, check_id
from .schema_change import diff
from .segment_sizes import SegmentSizes
from .segment_catalog import SegmentCatalog, SegmentDef
from .shard.group import make_shards
from .shard.partition import shard_of
from .shard.prepared import BY_REFERENCE, PREPARED_METHODS, view_safe
from .store.bitmaps import rows_of
from .timeparse import query_clock, wall_clock_ms
from .watch import DEFAULT_CAPACITY, ChangeHub, Subscription

if TYPE_CHECKING:
    from .persist import DataDir


log = logging.getLogger("segengine.engine")


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
        self.destinations = Destinations(self)  # webhooks fed by the same changes (see engine.destinations)
        self._refreshed_at = 0
        self._capturing = False
        self._write_lock = threading.Lock()  # in memory: writes are numbered and applied one at a time
        self._last_seq = 0
        self.writes = WriteCounters()  # applied batches and records by command kind (for metrics)
        self.identity = Identity(self)  # aliases: routing index and merge planning (see engine.identity)
        # every saved segment's size over time (engine.segment_sizes); durable in data_dir/history
        self.sizes = SegmentSizes(self, durable=data_dir is not None)
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
                self.sizes.open(data_dir)
            except BaseException:
                self.sizes.close()
                self.destinations.close()
                if self.durable is not None:
                    self.durable.close()
                self.shards.close()
                raise
        self.destinations.start()

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
        """Apply write ``command``: checked, aliases resolved, logged durably (with a data_dir), applied in order."""
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
        with self.identity.lock, collector_paused():  # its payloads are freed when it ends (engine/collector.py)
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
        return self._on_owner("export_profile", profile_id)

    def apply(self, command: Command, seq: int) -> Any:
        """Apply ``command`` as write number ``seq`` to the shards, then to the coordinator's catalog: the one
        write path, called in write order by ``write`` in memory and by the durable log's applier once the
        command is logged. Returns the number of records applied, a created segment's info, or None."""
        definition = self._check(command)
        calls = route(command, self.n_shards, self.compile)
        tagged = [None if call is None else (seq, *call) for call in calls]
        if any(call is not None and call[0] in PREPARED_METHODS for call in calls):
            tagged = self._prepare(tagged)
        view = view_safe(calls)  # membership is read beside it, store reads beside its sync step (engine.concurrency)
        with self.publish.writing(view_safe=view):
            results = self.shards.send_write(calls, view, self.publish, lambda: self.durable.send(tagged)
                                             if self.durable else self.shards.call_each("apply_logged", tagged))
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
            elif command.kind in COORDINATOR_KINDS:
                result = self.destinations.apply(command, seq)
            else:
                result = applied_count(results)
            self._publish()
            self.sizes.after_write(command, definition)
            if isinstance(command, Erase):
                self.destinations.erase(command.ids)  # after the exits the erasure caused were queued
        self.writes.add(command.kind, result if isinstance(result, int) else 0)
        return result

    def _prepare(self, calls: list[tuple | None]) -> list[tuple | None]:
        """Let the shards work out a write while reads go on (engine/shard/prepared.py); the commit calls
        (without the arguments for a shard holding a ``BY_REFERENCE`` plan; whole after a failure)."""
        try:
            with background_calls():  # readers go on meanwhile: short calls go first
                prepared = self.shards.call_each("prepare_logged", calls)
        except ShardError:
            log.warning("a shard could not prepare a write; it applies it whole")
            return calls
        return [(call[0], call[1], None) if call is not None and ok is True and call[1] in BY_REFERENCE else call
                for call, ok in zip(calls, prepared)]

    def _check(self, command: Command) -> SegmentDef | None:
        """The catalog's checks of a segment command (raises); the definition a CreateSegment puts."""
        if isinstance(command, CreateSegment):
            step = self.compile(command.query)
            if command.name in self.catalog and not command.replace:
                raise SegmentExists(f"segment {command.name!r} already exists")
            return self.catalog.prepare(command.name, command.query, step, command.now)
        if isinstance(command, DeleteSegment):
            self.catalog.check_removable(command.name)
            self.destinations.check_segment_removable(command.name)
        if isinstance(command, (AddDestination, RemoveDestination)):
            self.destinations.check(command)
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
        with self.publish.reading(store=not refs):
            return sum(self.shards.call_all("count", step, at))

    def ids(self, query: str, now: int | None = None) -> list[str]:
        """Canonical ids of the segment ``query``, sorted ascending."""
        step, refs = self.plans.entry(query)
        self._read_segments(refs)
        at = query_clock(now)
        with self.publish.reading(store=not refs):
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
                "events": sum(s["events"] for s in shards), "destinations": self.destinations.list()}

    def explain(self, query: str, now: int | None = None) -> dict[str, Any]:
        """The plan of ``query`` as a tree with, per step, rows selected and time taken (summed over shards)."""
        step, refs = self.plans.entry(query)
        self._read_segments(refs)
        at = query_clock(now)
        started = time.perf_counter()
        with self.publish.reading(store=not refs):
            tree = merge_trees(self.shards.call_all("explain", step, at))
        return {"query": to_text(bind(parse(query), self.schema)), "now_ms": at, "count": tree.pop("count"),
                "ms": (time.perf_counter() - started) * 1000, "plan": tree}

    # -- analytics (see engine.analytics and docs/analytics.md) -------------------------------
    def breakdown(self, query: str, by: str, now: int | None = None,
                  bins: Iterable[int | float] | None = None) -> dict[Any, int]:
        """The members of ``query`` counted by the value of attribute ``by``: value (category, bool),
        each tag (tags), or bin ``(lo, hi)`` of consecutive ``bins`` edges (int, float, timestamp); null
        members under None; keys with count 0 left out. One clock and one state for the whole call."""
        edges = check_breakdown(self.schema, by, bins)
        step, refs = self.plans.entry(query)
        self._read_segments(refs)
        at = query_clock(now)
        with self.publish.reading():
            parts = self.shards.call_all("breakdown", step, at, by, edges)
        return merge_breakdown(parts, edges)

    def overlap(self, queries: Iterable[str], now: int | None = None) -> list[list[int]]:
        """``m[i][j]``: the profiles in both ``queries[i]`` and ``queries[j]``, at one clock and one state."""
        steps, refs = self.plans.entry_list(list(queries), "queries")
        self._read_segments(refs)
        at = query_clock(now)
        if not steps:
            return []
        with self.publish.reading():
            parts = self.shards.call_all("overlap", steps, at)
        return merge_overlap(parts, len(steps))

    def why(self, profile_id: str, query: str, now: int | None = None, events: bool = True) -> dict[str, Any]:
        """Why profile ``profile_id`` (an alias names its canonical profile) is or is not in ``query``:
        ``{"id", "now_ms", "tree"}``, the tree's nodes ``{"text", "kind", "value", "facts", "children"}``
        (see engine.exec.why; ``events``: also the deciding events of DID and SEQUENCE). ProfileNotFound
        for an unknown id."""
        check_id(profile_id, None)
        _, refs, node = self.plans.compiled(query)
        self._read_segments(refs)
        at = query_clock(now)
        canonical = self.identity.resolve([profile_id])[0]
        tree = self._on_owner("why", canonical, node, at, bool(events))
        return {"id": canonical, "now_ms": at, "tree": tree}

    def lookalike(self, seed: str | Sequence[str], within: str = "ALL", size: int | None = None,
                  threshold: float | None = None, now: int | None = None) -> dict[str, Any]:
        """The profiles of ``within`` outside ``seed`` (a query or a list of ids) ranked by resemblance to it.

        Returns the ``size`` best (and/or those scoring at least ``threshold``, scores in [0, 1]) with
        the features that drove each score, and the model's top features (see engine.lookalike).
        """
        from . import lookalike

        lookalike.check_request(seed, size, threshold)
        within_step, refs = self.plans.entry(within)
        seed_plan, seed_refs = lookalike.seed_plan(seed, self.plans.entry, self.n_shards, self.identity.resolve)
        self._read_segments(refs | seed_refs)
        at = query_clock(now)
        with self.publish.reading():
            return lookalike.run(self.shards, self.schema, self.compile, seed_plan, within_step, size, threshold, at)

    def profile(self, profile_id: str) -> dict[str, Any]:
        """The current record of one profile (ProfileNotFound if unknown)."""
        return self._on_owner("profile", check_id(profile_id, None))

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
        return self._on_owner("membership", profile_id, names, view=True)

    def refresh_segments(self, now: int | None = None) -> None:
        """Bring time-relative saved segments to ``now`` (default: the engine clock): a view write whose
        commit changes nothing, all of it a sync step (engine.concurrency)."""
        at = self.clock() if now is None else int(now)
        with self.publish.writing(view_safe=True):
            if len(self.catalog):
                self.shards.send_write([()] * self.n_shards, True, self.publish,
                                       lambda: self.shards.call_all("refresh_segments", at))
                self.sizes.observe(at)
            self._refreshed_at = at
            self._publish()

    def segment_history(self, name: str, since: int | None = None, until: int | None = None) -> list[tuple[int, int]]:
        """Saved segment ``name``'s sizes over time: ``(time ms, size)`` points with ``since <= time <= until``
        (see engine.segment_history; SegmentNotFound if unknown)."""
        self.catalog.get(name)
        self._tick()
        return self.sizes.points(name, None if since is None else int(since), None if until is None else int(until))

    # -- member export (engine.member_export, engine.export_formats) ---------------------------
    def member_chunks(self, attributes: Iterable[str], segment: str | None = None, query: str | None = None,
                      now: int | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[MemberChunk]:
        """The members of saved segment ``segment`` or of ``query`` (exactly one; ``now`` is the query's clock)
        with ``attributes``, as chunks of at most ``chunk_rows`` rows per shard (see engine.member_export)."""
        if (segment is None) == (query is None):
            raise QueryError("export the members of a saved segment or of a query (exactly one of them)")
        attributes = check_attributes(self.schema, list(attributes))
        if segment is not None:
            self.catalog.get(segment)
            self._tick()
            step: Step = Pred(SegmentRef(segment))
        else:
            step, refs = self.plans.entry(query)  # type: ignore[arg-type]
            self._read_segments(refs)
        at = query_clock(now)
        with self.publish.reading():
            members = [rows_of(rows) for rows in self.shards.call_all("rows", step, at)]
        return read_chunks(self.shards, self.publish, members, attributes, chunk_rows)

    def export_members(self, out: str | BinaryIO, attributes: Iterable[str], format: str = "csv",
                       segment: str | None = None, query: str | None = None, now: int | None = None,
                       chunk_rows: int = CHUNK_ROWS) -> int:
        """Write the members of saved segment ``segment`` or of ``query`` with ``attributes`` to ``out`` (a path or
        a binary file) as ``format`` ("csv", "jsonl" or "parquet"), streamed chunk by chunk; returns the rows written."""
        attributes = check_attributes(self.schema, list(attributes))
        chunks = self.member_chunks(attributes, segment, query, now, chunk_rows)
        kinds = [(name, self.schema.attributes[name].type) for name in attributes]
        return write_members(chunks, kinds, format, out)

    def watch(self, segments: Iterable[str] | None = None, capacity: int = DEFAULT_CAPACITY) -> Subscription:
        """Subscribe to membership changes of saved segments (all, or ``segments``); see engine.watch."""
        names = frozenset(segments or ())
        self.catalog.check_refs(names)
        with self.publish.writing():
            subscription = self.changes.subscribe(names, capacity)
            self.capture_changes()
        return subscription

    # -- destinations (webhooks of saved segments; see engine.destinations) ------------------
    def add_destination(self, segment: str, url: str, secret: str, name: str | None = None,
                        **options: float) -> dict[str, Any]:
        """Deliver the entries and exits of saved segment ``segment`` to webhook ``url``, signed with
        ``secret`` (a logged write). ``name`` defaults to ``segment``; ``options``: batch_size,
        timeout_s, retry_base_s, retry_max_s, max_pending. The receiver first gets every current
        member as entered. Returns the destination's info (never the secret)."""
        command = AddDestination(segment if name is None else name, segment, url, secret, dict(options),
                                 self._write_clock())
        return self.write(command)

    def remove_destination(self, name: str) -> None:
        """Stop delivering to destination ``name`` and forget it (DestinationNotFound if unknown)."""
        self.write(RemoveDestination(name))

    def list_destinations(self) -> list[dict[str, Any]]:
        """Every destination: segment, url, options, delivery state, counters and lag (never the secret)."""
        return self.destinations.list()

    def segment_members(self, name: str) -> list[str]:
        """The current members of saved segment ``name``, sorted (for a caller that holds the write lock)."""
        step = self.compile("SEGMENT('" + name.replace("'", "''") + "')")
        parts = self.shards.call_all("ids", step, self.clock())
        return sorted(itertools.chain.from_iterable(parts)) if len(parts) > 1 else parts[0]

    def capture_changes(self) -> None:
        """Have the shards record membership changes (for a caller that holds the write lock)."""
        if not self._capturing:
            self.shards.call_all("capture_changes", True)
            self._capturing = True

    def restore_destinations(self, data_dir: str, logged: Any) -> None:
        """Open the destinations of a recovered data directory (see Destinations.recover)."""
        self.destinations.recover(data_dir, logged)

    def compact_destinations(self) -> dict[str, int] | None:
        """Rewrite the destinations' store without its free pages (after an erasure)."""
        return self.destinations.compact()

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

    def _on_owner(self, method: str, profile_id: str, *args: Any, view: bool = False) -> Any:
        """``method(canonical id, *args)`` on the shard of the profile ``profile_id`` names, as a point read
        (``view``: a view read, ``PublishLock.point_read``); the alias is resolved in the read."""
        def read() -> Any:
            canonical = self.identity.resolve([profile_id])[0] if isinstance(profile_id, str) else profile_id
            owner = shard_of(canonical, self.n_shards) if isinstance(canonical, str) else 0
            calls: list[tuple | None] = [None] * self.n_shards
            calls[owner] = (canonical, *args)
            return self.shards.call_each(method, calls)[owner]

        return self.publish.point_read(read, view)

    def _publish(self) -> None:
        """Hand the shards' recorded membership changes to the watchers (in shard order)."""
        if not self._capturing:
            return
        if not self.changes and not self.destinations:
            self.shards.call_all("capture_changes", False)
            self._capturing = False
            return
        for taken in self.shards.call_all("take_changes"):
            if taken["lost"]:
                self.changes.overflow_all()
                self.destinations.lose()
            elif taken["changes"]:
                if self.changes:
                    self.changes.publish(taken["changes"], taken["at"])
                self.destinations.offer(taken["changes"], taken["at"])

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
            self.durable.close()  # queued writes are applied first, erasures included
        self.sizes.close()
        self.destinations.close()
        self.changes.close_all()
        self.shards.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
