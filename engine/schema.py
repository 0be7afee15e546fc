"""Schema: attribute, event and consent definitions, and validation of records.

>>> from engine.schema import Schema
>>> s = Schema.from_dict({"attributes": {"age": {"type": "int"}}, "events": {}, "consents": ["email"]})
>>> s.validate_profile({"id": "u1", "age": 31, "consent": {"email": True}})
ProfileUpdate(id='u1', attrs={'age': 31}, consents={'email': True})
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from .errors import DataError
from .timeparse import INT64_MAX, INT64_MIN, parse_ts

ATTRIBUTE_TYPES = ("category", "int", "float", "bool", "tags", "timestamp")
PROPERTY_TYPES = ("category", "int", "float", "bool", "timestamp")
RESERVED_NAMES = frozenset({"id", "event", "ts", "consent", "event_id"})
#: The keys a schema JSON object may have.
SCHEMA_KEYS = ("attributes", "events", "consents")
MAX_ID_BYTES = 256
#: The longest event id (``"event_id"`` of an event record), in UTF-8 bytes.
MAX_EVENT_ID_BYTES = 128


@dataclass(frozen=True)
class AttrDef:
    """One profile attribute: its name and type."""

    name: str
    type: str


@dataclass(frozen=True)
class EventDef:
    """One event type: its name, its typed properties and how long its events are kept (None: for ever)."""

    name: str
    properties: dict[str, str] = field(default_factory=dict)
    retention_ms: int | None = None


#: Units of a retention duration ("400d"), as in the query language.
DURATION_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(text: object, where: str) -> int:
    """Milliseconds of a duration like ``"400d"`` (an integer and one of the units s m h d w)."""
    if isinstance(text, str) and len(text) > 1 and text[:-1].isdigit() and text[-1] in DURATION_UNITS:
        ms = int(text[:-1]) * DURATION_UNITS[text[-1]]
        if ms > 0:
            return ms
    raise ValueError(f"{where}: retention must be a positive duration like \"400d\" (units: s m h d w), not {text!r}")


def format_duration(ms: int) -> str:
    """The shortest duration text of ``ms`` milliseconds (the largest unit that divides it)."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms % DURATION_UNITS[unit] == 0:
            return f"{ms // DURATION_UNITS[unit]}{unit}"
    raise ValueError(f"{ms} ms is not a whole number of seconds")


class ProfileUpdate(NamedTuple):
    """A validated profile upsert: present attributes (None = clear) and named consents."""

    id: str
    attrs: dict[str, Any]
    consents: dict[str, bool]


class EventRecord(NamedTuple):
    """A validated event: profile id, event type, epoch ms, typed properties (None = null) and its event id
    (None: none; an event whose profile holds its event id already is ignored)."""

    id: str
    event: str
    ts: int
    props: dict[str, Any]
    event_id: str | None = None


def _is_name(name: object) -> bool:
    return isinstance(name, str) and name != "" and name not in RESERVED_NAMES


def _section(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``spec[key]`` as a dict (absent or null: empty); ValueError if it is not an object."""
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"schema {key!r} must be an object of name: definition")
    return dict(value)


def _reserved() -> str:
    return "reserved: " + ", ".join(sorted(RESERVED_NAMES))


def check_id(value: object, where: int | str | None) -> str:
    """Validate a canonical external id: a non-empty UTF-8 string of at most 256 bytes."""
    if not isinstance(value, str) or value == "":
        raise DataError("id must be a non-empty string", where, "id")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise DataError(f"id is longer than {MAX_ID_BYTES} UTF-8 bytes", where, "id")
    return value


def check_event_id(value: object, where: int | str | None) -> str:
    """Validate an event id: a non-empty UTF-8 string of at most 128 bytes."""
    if not isinstance(value, str) or value == "":
        raise DataError("event_id must be a non-empty string", where, "event_id")
    if len(value) > MAX_EVENT_ID_BYTES // 4 and len(value.encode("utf-8")) > MAX_EVENT_ID_BYTES:
        raise DataError(f"event_id is longer than {MAX_EVENT_ID_BYTES} UTF-8 bytes", where, "event_id")
    return value


def coerce_value(kind: str, value: Any, where: int | str | None, name: str) -> Any:
    """Check ``value`` against type ``kind`` and return its normalised form (None stays None)."""
    if value is None:
        return None
    if kind == "category":
        if isinstance(value, str):
            return value
        raise DataError(f"expected a string (category), got {type(value).__name__}", where, name)
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            if INT64_MIN <= value <= INT64_MAX:
                return value
            raise DataError("integer out of the 64-bit range", where, name)
        raise DataError(f"expected an integer, got {type(value).__name__}", where, name)
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number):
                return number
            raise DataError("expected a finite number", where, name)
        raise DataError(f"expected a number, got {type(value).__name__}", where, name)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise DataError(f"expected true or false, got {type(value).__name__}", where, name)
    if kind == "tags":
        if isinstance(value, (list, tuple)) and all(isinstance(tag, str) for tag in value):
            return tuple(sorted(set(value)))
        raise DataError("expected a list of strings (tags)", where, name)
    if kind == "timestamp":
        try:
            return parse_ts(value)
        except ValueError as exc:
            raise DataError(str(exc), where, name) from None
    raise DataError(f"unknown type {kind!r}", where, name)


def _event_dict(definition: EventDef) -> dict[str, Any]:
    """The JSON form of one event type."""
    spec: dict[str, Any] = {"properties": dict(definition.properties)}
    if definition.retention_ms is not None:
        spec["retention"] = format_duration(definition.retention_ms)
    return spec


class Schema:
    """The attribute, event and consent definitions of one engine."""

    def __init__(self, attributes: Mapping[str, AttrDef], events: Mapping[str, EventDef], consents: tuple[str, ...]):
        self.attributes: dict[str, AttrDef] = dict(attributes)
        self.events: dict[str, EventDef] = dict(events)
        self.consents: tuple[str, ...] = tuple(consents)
        self._consent_set = frozenset(self.consents)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "Schema":
        """Build a schema from its JSON form (docs/data.md); ValueError on a bad definition."""
        if not isinstance(spec, Mapping):
            raise ValueError("schema must be a JSON object")
        unknown = [key for key in spec if key not in SCHEMA_KEYS]
        if unknown:
            raise ValueError(f"unknown schema key {unknown[0]!r} (allowed: {', '.join(SCHEMA_KEYS)})")
        attributes: dict[str, AttrDef] = {}
        for name, definition in _section(spec, "attributes").items():
            kind = definition.get("type") if isinstance(definition, Mapping) else definition
            if not _is_name(name):
                raise ValueError(f"attribute name {name!r} is empty or reserved ({_reserved()})")
            if kind not in ATTRIBUTE_TYPES:
                raise ValueError(f"attribute {name!r}: unknown type {kind!r} (types: {', '.join(ATTRIBUTE_TYPES)})")
            attributes[name] = AttrDef(name, kind)
        events: dict[str, EventDef] = {}
        for name, definition in _section(spec, "events").items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"event name {name!r} is empty")
            if definition is not None and not isinstance(definition, Mapping):
                raise ValueError(f"event {name!r}: expected an object like {{\"properties\": {{...}}}}")
            props = (definition or {}).get("properties") or {}
            if not isinstance(props, Mapping):
                raise ValueError(f"event {name!r}: properties must be an object of name: type")
            props = dict(props)
            for prop, kind in props.items():
                if not _is_name(prop):
                    raise ValueError(f"event {name!r}: property name {prop!r} is empty or reserved ({_reserved()})")
                if kind not in PROPERTY_TYPES:
                    raise ValueError(f"event {name!r}, property {prop!r}: unknown type {kind!r} "
                                     f"(types: {', '.join(PROPERTY_TYPES)})")
            retention = (definition or {}).get("retention")
            events[name] = EventDef(name, props, None if retention is None
                                    else parse_duration(retention, f"event {name!r}"))
        if not isinstance(spec.get("consents") or (), (list, tuple)):
            raise ValueError("consents must be a list of purpose names")
        consents = tuple(spec.get("consents") or ())
        if len(set(consents)) != len(consents) or not all(isinstance(c, str) and c for c in consents):
            raise ValueError("consents must be distinct non-empty strings")
        return cls(attributes, events, consents)

    @classmethod
    def from_file(cls, path: str | Path) -> "Schema":
        """Load a schema from a JSON file."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this schema."""
        return {
            "attributes": {a.name: {"type": a.type} for a in self.attributes.values()},
            "events": {e.name: _event_dict(e) for e in self.events.values()},
            "consents": list(self.consents),
        }

    def validate_profile(self, record: Any, where: int | str | None = None) -> ProfileUpdate:
        """Validate one profile upsert record; DataError names ``where`` and the field."""
        if type(record) is not dict and not isinstance(record, Mapping):  # the ABC check is slow
            raise DataError("a profile record must be an object", where)
        if "id" not in record:
            raise DataError("missing", where, "id")
        profile_id = check_id(record["id"], where)
        attrs: dict[str, Any] = {}
        consents: dict[str, bool] = {}
        for name, value in record.items():
            if name == "id":
                continue
            if name == "consent":
                consents = self._validate_consents(value, where)
                continue
            definition = self.attributes.get(name)
            if definition is None:
                raise DataError("unknown attribute", where, name)
            attrs[name] = coerce_value(definition.type, value, where, name)
        return ProfileUpdate(profile_id, attrs, consents)

    def _validate_consents(self, value: Any, where: int | str | None) -> dict[str, bool]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise DataError("expected an object of purpose: true/false", where, "consent")
        consents: dict[str, bool] = {}
        for purpose, granted in value.items():
            if purpose not in self._consent_set:
                raise DataError("unknown consent purpose", where, f"consent.{purpose}")
            if not isinstance(granted, bool):
                raise DataError("expected true or false", where, f"consent.{purpose}")
            consents[purpose] = granted
        return consents

    def validate_event(self, record: Any, where: int | str | None = None) -> EventRecord:
        """Validate one event record; DataError names ``where`` and the field."""
        if type(record) is not dict and not isinstance(record, Mapping):  # the ABC check is slow
            raise DataError("an event record must be an object", where)
        if "id" not in record:
            raise DataError("missing", where, "id")
        profile_id = check_id(record["id"], where)
        event_name = record.get("event")
        if not isinstance(event_name, str):
            raise DataError("missing or not a string", where, "event")
        definition = self.events.get(event_name)
        if definition is None:
            raise DataError(f"unknown event type {event_name!r}", where, "event")
        if "ts" not in record or record["ts"] is None:
            raise DataError("missing", where, "ts")
        try:
            ts = parse_ts(record["ts"])
        except ValueError as exc:
            raise DataError(str(exc), where, "ts") from None
        props: dict[str, Any] = {}
        event_id = None
        for name, value in record.items():
            if name in ("id", "event", "ts"):
                continue
            if name == "event_id":  # null: no event id, like an absent one
                event_id = None if value is None else check_event_id(value, where)
                continue
            kind = definition.properties.get(name)
            if kind is None:
                raise DataError(f"unknown property of event {event_name!r}", where, name)
            props[name] = coerce_value(kind, value, where, name)
        return EventRecord(profile_id, event_name, ts, props, event_id)

    def __repr__(self) -> str:
        return f"Schema(attributes={list(self.attributes)}, events={list(self.events)}, consents={list(self.consents)})"


#: The built-in example schema (docs/data.md), used by the demo, the generator and the tests.
CONTRACT_SCHEMA: dict[str, Any] = {
    "attributes": {
        "country": {"type": "category"},
        "age": {"type": "int"},
        "cart_value": {"type": "float"},
        "vip": {"type": "bool"},
        "interests": {"type": "tags"},
        "signup_at": {"type": "timestamp"},
    },
    "events": {
        "page_view": {"properties": {"category": "category"}},
        "cart_abandoned": {"properties": {"cart_value": "float", "category": "category"}},
        "purchase": {"properties": {"amount": "float", "category": "category"}},
    },
    "consents": ["email", "sms", "push", "ads"],
}
