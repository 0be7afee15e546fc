"""The naive oracle (tests/oracle.py) with identity: merges and aliases, erasure, export, event ids
(contract section 6).

Written straight from the contract, sharing nothing with the engine: aliases are a dict alias ->
canonical id, a merge moves events and fills attributes and consents record by record, and an
event's ``event_id`` is kept among its properties: an event is ignored when its canonical
profile's list of events holds one with the same id (so an id is held exactly while its event is).

>>> from engine.schema import CONTRACT_SCHEMA
>>> store = IdentityStore(CONTRACT_SCHEMA)
>>> store.upsert([{"id": "a", "age": 3, "consent": {"email": True}}, {"id": "b", "consent": {"email": False}}])
>>> store.merge("a", "b"); store.merge("x", "a")
>>> sorted(store.attrs), store.attrs["b"], store.consents["b"], store.resolve("x")
(['b'], {'age': 3}, {'email': False}, 'b')
>>> store.track([{"id": "a", "event": "page_view", "ts": 5, "event_id": "e"},
...              {"id": "b", "event": "page_view", "ts": 6, "event_id": "e"}])
1
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

try:
    from oracle import Event, NaiveStore
except ImportError:  # tests/ imported as a package
    from tests.oracle import Event, NaiveStore


class IdentityStore(NaiveStore):
    """NaiveStore plus aliases, merges, erasure and export."""

    def __init__(self, schema: Mapping[str, Any]):
        super().__init__(schema)
        self.aliases: dict[str, str] = {}  # alias -> canonical id (kept direct: chains are flattened)

    def resolve(self, profile_id: str) -> str:
        """The canonical id ``profile_id`` names."""
        return self.aliases.get(profile_id, profile_id)

    def upsert(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Upserts, each applied to the canonical profile its id names."""
        super().upsert([{**r, "id": self.resolve(r["id"])} for r in records])

    def track(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Events, each added to the canonical profile its id names unless that profile holds an event
        with its ``event_id``; returns how many were added."""
        applied = 0
        for record in records:
            canonical = self.resolve(record["id"])
            event_id = record.get("event_id")
            if event_id is not None and any(e.props.get("event_id") == event_id for e in self.events.get(canonical, ())):
                continue
            super().track([{**{k: v for k, v in record.items() if k != "event_id"}, "id": canonical}])
            if event_id is not None:
                self.events[canonical][-1].props["event_id"] = event_id
            applied += 1
        return applied

    def merge(self, from_id: str, into_id: str) -> None:
        """``from_id`` becomes an alias of ``into_id`` (section 6's rules)."""
        source, target = self.resolve(from_id), self.resolve(into_id)
        if source == target:
            return
        self._ensure(target)
        if source in self.attrs:
            attrs = self.attrs.pop(source)
            for name, value in attrs.items():
                self.attrs[target].setdefault(name, value)
            consents = self.consents.pop(source)
            mine = self.consents[target]
            for purpose, granted in consents.items():
                mine[purpose] = granted if purpose not in mine else (mine[purpose] and granted)
            for event in self.events.pop(source):
                self.events[target].append(Event(target, event.event, event.ts, event.props))
        for alias, canonical in list(self.aliases.items()):
            if canonical == source:
                self.aliases[alias] = target
        self.aliases[source] = target

    def merge_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Merges in order."""
        for source, target in pairs:
            self.merge(source, target)

    def aliases_of(self, canonical: str) -> list[str]:
        """The aliases of a canonical profile, sorted."""
        return sorted(alias for alias, target in self.aliases.items() if target == canonical)

    def delete(self, ids: Iterable[str]) -> int:
        """Erase the canonical profiles ``ids`` name and their aliases; how many canonical profiles."""
        doomed = {self.resolve(i) for i in ids} & self.attrs.keys()
        for canonical in doomed:
            del self.attrs[canonical], self.consents[canonical], self.events[canonical]
        self.aliases = {a: c for a, c in self.aliases.items() if c not in doomed}
        return len(doomed)

    def export(self, profile_id: str) -> dict[str, Any] | None:
        """The contract's export record of the profile ``profile_id`` names (None if unknown)."""
        canonical = self.resolve(profile_id)
        if canonical not in self.attrs:
            return None
        attributes = {name: sorted(value) if isinstance(value, frozenset) else value
                      for name, value in self.attrs[canonical].items()}
        events = sorted(({"event": e.event, "ts": e.ts, **e.props} for e in self.events[canonical]),
                        key=lambda e: (e["ts"], e["event"]))
        return {"id": canonical, "aliases": self.aliases_of(canonical), "attributes": attributes,
                "consent": dict(self.consents[canonical]), "events": events}
