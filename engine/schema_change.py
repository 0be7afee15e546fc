"""Schema evolution: what a new schema adds to the current one, or why it cannot replace it.

A live engine's schema may grow: new attributes, event types, event properties and consent
purposes, and new or changed event retention. Removing or retyping anything is refused
(stored values would lose their meaning), as is reordering nothing: consent purposes keep their
order and new ones are appended.

>>> from engine.schema import Schema
>>> old = Schema.from_dict({"attributes": {"age": {"type": "int"}}, "events": {}, "consents": ["email"]})
>>> new = Schema.from_dict({"attributes": {"age": {"type": "int"}, "plan": {"type": "category"}},
...                         "events": {"login": {"properties": {}}}, "consents": ["email", "sms"]})
>>> diff(old, new).describe()
['attribute plan (category)', 'event login', 'consent sms']
>>> diff(new, old)
Traceback (most recent call last):
...
engine.errors.SchemaChangeRefused: schema change refused: attribute 'plan' is removed (a schema may only grow)
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SchemaChangeRefused
from .schema import AttrDef, EventDef, Schema, format_duration


def refused(reason: str) -> SchemaChangeRefused:
    """The error for a change that is not an extension, saying why."""
    return SchemaChangeRefused(f"schema change refused: {reason} (a schema may only grow)")


@dataclass(frozen=True)
class SchemaChange:
    """What a new schema adds to the current one."""

    attributes: tuple[AttrDef, ...] = ()
    events: tuple[EventDef, ...] = ()
    properties: tuple[tuple[str, str, str], ...] = ()  # (event, property, type)
    consents: tuple[str, ...] = ()
    retention: tuple[tuple[str, int | None], ...] = ()  # (event, new retention in ms or None), existing events

    def __bool__(self) -> bool:
        return bool(self.attributes or self.events or self.properties or self.consents or self.retention)

    def describe(self) -> list[str]:
        """One line per addition or change, for people."""
        lines = [f"attribute {a.name} ({a.type})" for a in self.attributes]
        lines += [f"event {e.name}" for e in self.events]
        lines += [f"property {event}.{prop} ({kind})" for event, prop, kind in self.properties]
        lines += [f"consent {purpose}" for purpose in self.consents]
        lines += [f"retention of {event}: {'none' if ms is None else format_duration(ms)}"
                  for event, ms in self.retention]
        return lines


def diff(current: Schema, new: Schema) -> SchemaChange:
    """What ``new`` adds to ``current``; SchemaChangeRefused if it removes or retypes anything."""
    for name, attribute in current.attributes.items():
        if name not in new.attributes:
            raise refused(f"attribute {name!r} is removed")
        if new.attributes[name].type != attribute.type:
            raise refused(f"attribute {name!r} changes type from {attribute.type} to "
                                      f"{new.attributes[name].type}")
    properties: list[tuple[str, str, str]] = []
    retention: list[tuple[str, int | None]] = []
    for name, event in current.events.items():
        if name not in new.events:
            raise refused(f"event {name!r} is removed")
        changed = new.events[name]
        for prop, kind in event.properties.items():
            if prop not in changed.properties:
                raise refused(f"property {prop!r} of event {name!r} is removed")
            if changed.properties[prop] != kind:
                raise refused(f"property {prop!r} of event {name!r} changes type from {kind} to "
                                          f"{changed.properties[prop]}")
        properties += [(name, prop, kind) for prop, kind in changed.properties.items() if prop not in event.properties]
        if changed.retention_ms != event.retention_ms:
            retention.append((name, changed.retention_ms))
    if new.consents[: len(current.consents)] != current.consents:
        missing = [purpose for purpose in current.consents if purpose not in new.consents]
        raise refused(f"consent purpose {missing[0]!r} is removed" if missing
                                  else "consent purposes are reordered (new ones go at the end)")
    return SchemaChange(
        attributes=tuple(a for name, a in new.attributes.items() if name not in current.attributes),
        events=tuple(e for name, e in new.events.items() if name not in current.events),
        properties=tuple(properties),
        consents=new.consents[len(current.consents):],
        retention=tuple(retention))
