"""A shard's data as a format-4 snapshot part (``state_io``) and back.

The part holds the shard's schema (its JSON dict), the last log record it applied and the state
of its stores, each written by the store's own ``to_state`` and read by its ``from_state``: the
profile store (id map, live rows, attribute indexes, consents), the event store (per type: runs,
day bitmaps, ``ever``, latest times, labels, float scales), the event ids (``event_ids``: the
entries a run's ``eids`` column numbers; a part without it holds none), the aliases and the saved segments (definitions as
query text, re-planned on load; members per segment and per row; slots; clock).

Not stored, rebuilt empty and refilled on demand: the executors' caches (SAMPLE bitmaps, IS NULL
bitmaps, DID unions), kept unions of value bitmaps, cached bins and kept ranges of numeric
indexes, the 5-minute slot bitmaps of event types, the sorted columns of time-relative
segments, and recorded membership changes.

What a capture copies and what it references: the event store guarantees that a run's arrays
are never changed once the run is written (``engine/store/events.py``: an append adds a new run,
a merge builds a new run from two, widening a category code dtype replaces the array in the
run's ``props``, never writes into it), so its ``to_state`` declares them immutable and the
capture references them (about 40% of a shard's bytes); every other array (columns, the id map,
membership bits... which writes change in place) is copied into a ``CaptureArena`` whose memory
is reused from one snapshot to the next, and bitmaps are serialised during the capture.
``tests/test_persist_snapshots.py`` checks the guarantee.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ..errors import DataCorruption, SchemaChangeRefused
from ..plan.steps import Step
from ..schema import Schema
from ..schema_change import diff
from ..store.aliases import AliasStore
from ..store.event_rows import compact
from ..store.events import EventStore
from ..store.profiles import ProfileStore
from .arena import CaptureArena
from .state_io import Capture, StateReader, StateWriter

if TYPE_CHECKING:
    from ..shard.local import LocalShard

__all__ = ["Capture", "capture", "restore", "event_run_arrays", "query_compiler"]


def event_run_arrays(shard: LocalShard) -> Iterator[np.ndarray]:
    """The arrays of every event run of ``shard`` (never changed in place: see the module docstring)."""
    for store in shard.events.types.values():
        for runs in store.epochs.values():
            for run in runs:
                yield run.ts
                yield run.rows
                yield from run.props.values()
                yield from run.valid.values()
                if run.eids is not None:
                    yield run.eids


def capture(shard: LocalShard, arena: CaptureArena | None = None, copy: bool = True,
            budget: int | None = None) -> Capture:
    """The frames of ``shard``'s state, independent of later writes to the shard (events deleted by
    marking are first removed from the runs: ``engine.store.event_rows.compact``).

    Arrays that writes may change are copied (into ``arena`` when given, else fresh memory);
    event-run arrays, which never change, are referenced. ``copy=False`` references everything
    (the frames then follow later writes: only for a shard that is not written meanwhile); so do
    the arrays past a copy ``budget`` of bytes (the capture is then ``in_place``).
    """
    compact(shard.events, force=True)  # no event deleted by marking reaches a snapshot
    writer = StateWriter(arena, copy, budget)
    state = {"profiles": shard.profiles.to_state(writer), "events": shard.events.to_state(writer),
             "segments": shard.saved.to_state(writer), "aliases": shard.aliases.to_state(writer),
             "event_ids": shard.events.event_ids.to_state(writer)}
    return writer.capture(shard.schema.to_dict(), shard.persistence.applied_seq, state)


def query_compiler(schema: Schema) -> Callable[[str], Step]:
    """Query text -> plan under ``schema`` (for saved-segment definitions)."""
    from ..plan import plan
    from ..query import bind, parse

    return lambda text: plan(bind(parse(text), schema))


def restore(shard: LocalShard, frames: list[Any], where: str = "a snapshot") -> Schema:
    """Replace ``shard``'s data by the part in ``frames`` (one writable buffer per frame, e.g. fresh
    arrays: the restored arrays are views of them); returns the schema the part was written with.
    The shard's schema must be that one or extend it (names added since start null).

    A malformed part raises DataCorruption naming ``where`` (the shard is then left empty).
    """
    reader = StateReader(frames, where)
    try:
        schema = Schema.from_dict(reader.schema)
        try:
            diff(schema, shard.schema)
        except SchemaChangeRefused as refused:
            raise ValueError(f"the shard's schema does not extend the one it was written with ({refused}): "
                             f"{reader.schema}") from None
        state = reader.state
        profiles = ProfileStore.from_state(reader, state["profiles"], schema)
        events = EventStore.from_state(reader, state["events"], schema.events, len(profiles.idmap),
                                       state.get("event_ids"))  # parts written before event ids were kept hold none
        profiles.adopt(shard.schema)  # names added since the part was written start null
        events.adopt(shard.schema.events)
        aliases = AliasStore.from_state(reader, state["aliases"], len(profiles.idmap)) if "aliases" in state \
            else AliasStore()  # parts written before aliases were kept hold none
        applied_seq = int(reader.applied_seq)
        shard.adopt(profiles, events, aliases)
        shard.saved.load_state(reader, state["segments"], query_compiler(shard.schema))
    except DataCorruption:
        shard.adopt(ProfileStore(shard.schema), EventStore(shard.schema.events))
        raise
    except Exception as exc:
        shard.adopt(ProfileStore(shard.schema), EventStore(shard.schema.events))
        raise DataCorruption(f"{where}: its state is malformed ({type(exc).__name__}: {exc}); refusing to serve") \
            from None
    shard.persistence.applied_seq = applied_seq
    return schema
