"""The destinations of an engine: the coordinator's registry of webhooks fed by segment changes.

``Destinations`` owns every destination's outbox (``outbox.Outbox``) and delivery thread
(``delivery.Deliverer``) and, with a data directory, the store of their definitions and
positions (``store.DestinationStore``). The engine calls it on the one write path:

- ``check`` before a destination command is logged, ``apply`` when it is applied (both commands
  are applied by the coordinator alone; the shards ignore them);
- ``offer`` with each write's membership changes (the same changes the watch stream carries);
- ``erase`` after an erasure: the erased ids' pending changes are dropped everywhere;
- ``recover`` when a data directory opens: definitions replayed from the log after the store's
  position, then every outbox rebuilt from the receiver's view and the segment's members.
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Callable, Iterable, Protocol

from ..commands import AddDestination, Command, RemoveDestination
from ..concurrency import PublishLock
from ..errors import BadRequest, DestinationExists, DestinationNotFound, SegmentInUse
from ..segment_catalog import SegmentCatalog
from .delivery import Deliverer, check_url
from .outbox import DeliveryOptions, DestinationDef, Outbox
from .store import DestinationStore, NullStore

log = logging.getLogger("segengine.destinations")

ENTERED_EXITED = frozenset({"entered", "exited"})


class SegmentSource(Protocol):
    """What destinations need of the engine."""

    publish: PublishLock
    catalog: SegmentCatalog

    def clock(self) -> int:
        """The engine clock (epoch ms)."""

    def segment_members(self, name: str) -> list[str]:
        """The current members of saved segment ``name`` (the caller holds the write lock)."""

    def capture_changes(self) -> None:
        """Have the shards record membership changes (the caller holds the write lock)."""


def check_destination_name(name: object) -> str:
    """``name`` if it can name a destination (BadRequest otherwise)."""
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 128 or "\0" in name:
        raise BadRequest("a destination name must be a non-empty string of at most 128 UTF-8 bytes, without NUL")
    return name


class Destinations:
    """Every destination of one engine (see the module docstring)."""

    def __init__(self, source: SegmentSource):
        self.source = weakref.proxy(source)  # no reference cycle: a dropped engine frees its shards at once
        self.outboxes: dict[str, Outbox] = {}
        self.deliverers: dict[str, Deliverer] = {}
        self.store: NullStore = NullStore()
        self.started = False

    def __bool__(self) -> bool:
        return bool(self.outboxes)

    def __contains__(self, name: str) -> bool:
        return name in self.outboxes

    # -- commands ---------------------------------------------------------------------------
    def check(self, command: Command) -> None:
        """Raise if ``command`` cannot be applied now."""
        if isinstance(command, AddDestination):
            check_destination_name(command.name)
            if command.name in self.outboxes:
                raise DestinationExists(f"destination {command.name!r} already exists")
            self.source.catalog.get(command.segment)
            check_url(command.url)
            if not isinstance(command.secret, str) or not command.secret:
                raise BadRequest("a destination needs a non-empty secret")
            DeliveryOptions.from_dict(command.options)
        elif isinstance(command, RemoveDestination):
            self.get(command.name)

    def check_segment_removable(self, segment: str) -> None:
        """SegmentInUse if a destination follows ``segment``."""
        users = sorted(box.name for box in self.outboxes.values() if box.definition.segment == segment)
        if users:
            raise SegmentInUse(f"segment {segment!r} has destinations {', '.join(repr(u) for u in users)}; "
                               f"remove them first")

    def get(self, name: str) -> Outbox:
        """The outbox of destination ``name`` (DestinationNotFound if unknown)."""
        try:
            return self.outboxes[name]
        except KeyError:
            raise DestinationNotFound(f"unknown destination {name!r}") from None

    def apply(self, command: Command, seq: int) -> dict[str, Any] | None:
        """Apply a destination command (the caller holds the engine's write lock); an added one's info."""
        self.check(command)
        if isinstance(command, AddDestination):
            definition = _definition(command)
            self.store.put(definition.to_dict(), seq)
            outbox = Outbox(definition, self.store)
            self.source.capture_changes()
            outbox.reconcile(self.source.segment_members(definition.segment), self.source.clock())
            self.outboxes[definition.name] = outbox
            if self.started:
                self._start(outbox)
            return outbox.stats()
        if isinstance(command, RemoveDestination):
            outbox = self.outboxes.pop(command.name)
            deliverer = self.deliverers.pop(command.name, None)
            if deliverer is not None:
                deliverer.close(wait_s=0)  # it stops after its request in progress
            self.store.remove(command.name, seq)
            return None
        raise TypeError(f"not a destination command: {type(command).__name__}")

    # -- changes ----------------------------------------------------------------------------
    def offer(self, groups: list[list], at: int) -> None:
        """Queue a write's membership changes ``[[kind, segment, [ids]], ...]`` for the destinations."""
        if not self.outboxes:
            return
        by_segment: dict[str, list[Outbox]] = {}
        for outbox in self.outboxes.values():
            by_segment.setdefault(outbox.definition.segment, []).append(outbox)
        for kind, segment, ids in groups:
            if kind in ENTERED_EXITED and ids:
                for outbox in by_segment.get(segment, ()):
                    outbox.offer_many(kind, ids, at)

    def lose(self) -> None:
        """Upstream changes were lost: every outbox is rebuilt from its segment's members."""
        for outbox in self.outboxes.values():
            outbox.lose()

    def erase(self, ids: Iterable[str]) -> None:
        """Erased profiles ``ids``: drop their pending changes from every outbox (see ``Outbox.erase``)."""
        erased = set(ids)
        if erased:
            at = self.source.clock()
            for outbox in self.outboxes.values():
                outbox.erase(erased, at)

    def resync(self, outbox: Outbox) -> None:
        """Rebuild ``outbox`` from its segment's members (called by its delivery thread, nothing in flight)."""
        with self.source.publish.writing():
            if self.outboxes.get(outbox.name) is not outbox:
                return
            outbox.reconcile(self.source.segment_members(outbox.definition.segment), self.source.clock())
            outbox.counters.resyncs += 1

    # -- durability -------------------------------------------------------------------------
    def recover(self, data_dir: str, logged: Callable[[int], list[tuple[int, Command]]]) -> None:
        """Open the store under ``data_dir``, replay the destination commands the log holds after its
        position (``logged(after)``: (seq, command) pairs), and rebuild every outbox (the shards are
        recovered; the caller holds no lock and nothing writes yet)."""
        store = DestinationStore(os.path.join(data_dir, "destinations"))
        self.store = store
        known = store.names()
        for seq, command in logged(store.applied_seq):
            if isinstance(command, AddDestination) and command.name not in known:
                store.put(_definition(command).to_dict(), seq)
                known.add(command.name)
            elif isinstance(command, RemoveDestination) and command.name in known:
                store.remove(command.name, seq)
                known.discard(command.name)
        with self.source.publish.writing():
            for stored in store.load():
                definition = DestinationDef.from_dict(stored.definition)
                if definition.segment not in self.source.catalog:  # its adding failed when it was applied
                    log.warning("destination %s follows segment %s, which does not exist; forgetting it",
                                definition.name, definition.segment)
                    store.remove(definition.name, store.applied_seq)
                    continue
                outbox = Outbox(definition, store, stored)
                self.source.capture_changes()
                outbox.reconcile(self.source.segment_members(definition.segment), self.source.clock())
                self.outboxes[definition.name] = outbox

    def compact(self) -> dict[str, int] | None:
        """Rewrite the store without its free pages (after an erasure)."""
        return self.store.compact()

    # -- delivery threads -------------------------------------------------------------------
    def start(self) -> None:
        """Start delivering (every destination added later starts at once)."""
        self.started = True
        for outbox in self.outboxes.values():
            if outbox.name not in self.deliverers:
                self._start(outbox)

    def _start(self, outbox: Outbox) -> None:
        deliverer = Deliverer(outbox, self.resync)
        self.deliverers[outbox.name] = deliverer
        deliverer.start()

    def close(self) -> None:
        """Stop every delivery thread and close the store."""
        self.started = False
        deliverers, self.deliverers = list(self.deliverers.values()), {}
        for deliverer in deliverers:
            deliverer.stop.set()
        for deliverer in deliverers:
            deliverer.close()
        self.store.close()
        self.store = NullStore()

    # -- reading ----------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every destination's definition and delivery state, by name (never a secret)."""
        return [self.outboxes[name].stats() for name in sorted(self.outboxes)]


def _definition(command: AddDestination) -> DestinationDef:
    return DestinationDef(command.name, command.segment, command.url, command.secret,
                          DeliveryOptions.from_dict(command.options), command.now)

