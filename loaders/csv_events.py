"""Load events from CSV: a header row with ``id``, ``event`` and ``ts``, then one event per row.

An optional ``event_id`` column gives events their event ids (an empty cell: none). The other
columns are event property names (of any event type of the schema); each row fills the
properties of its own event type and leaves the other columns empty. Cells follow the profile CSV
rules (:mod:`loaders.csv_profiles`): an empty cell is absent, ``null`` (any case) is null, numbers
and ``true``/``false`` as text; ``ts`` is ISO 8601 with an offset or ``Z``, or integer epoch
milliseconds.

>>> from engine.schema import Schema
>>> schema = Schema.from_dict({"events": {"purchase": {"properties": {"amount": "float"}},
...                                       "page_view": {"properties": {"category": "category"}}}})
>>> columns = parse_event_header(schema, ["id", "event", "ts", "amount", "category"])
>>> event_record(schema, columns, ["u1", "purchase", "2026-11-20T10:00:00Z", "19.5", ""], "line 2")
{'id': 'u1', 'event': 'purchase', 'ts': '2026-11-20T10:00:00Z', 'amount': 19.5}
>>> event_record(schema, columns, ["u2", "page_view", "1795168800000", "", "shoes"], "line 3")
{'id': 'u2', 'event': 'page_view', 'ts': 1795168800000, 'category': 'shoes'}
>>> event_record(schema, ["id", "event", "ts", "event_id"], ["u1", "purchase", "5", "order-7"], "line 4")
{'id': 'u1', 'event': 'purchase', 'ts': 5, 'event_id': 'order-7'}
"""
from __future__ import annotations

from pathlib import Path

from engine.errors import DataError
from engine.schema import Schema

from .csv_profiles import CELL_PARSERS, _timestamp_cell, load_csv
from .jsonl import LoadReport, RecordEngine, TimestampCheck, engine_schema

REQUIRED = ("id", "event", "ts")
EVENT_ID = "event_id"


def parse_event_header(schema: Schema, header: list[str]) -> list[str]:
    """The column names of an events header; DataError (line 1) for an unknown, repeated or missing one."""
    known = {prop for event in schema.events.values() for prop in event.properties}
    columns: list[str] = []
    for raw in header:
        name = raw.strip()
        if name in columns:
            raise DataError("repeated column", "line 1", name)
        if name not in REQUIRED and name != EVENT_ID and name not in known:
            raise DataError("unknown column (not id, event, ts, event_id or an event property)", "line 1", name)
        columns.append(name)
    for name in REQUIRED:
        if name not in columns:
            raise DataError("missing column", "line 1", name)
    return columns


def event_record(schema: Schema, columns: list[str], cells: list[str], where: str) -> dict:
    """The event record of one row: properties typed by the row's event type."""
    if len(cells) != len(columns):
        raise DataError(f"expected {len(columns)} cells, got {len(cells)}", where)
    row = dict(zip(columns, cells))
    record: dict = {"id": row["id"], "event": row["event"].strip()}
    if row["ts"].strip():
        record["ts"] = _timestamp_cell(row["ts"], where, "ts")
    definition = schema.events.get(record["event"])
    if definition is None:  # the schema check names the unknown event type
        return record
    for name in columns:
        text = row[name]
        if name in REQUIRED or text == "":
            continue
        if name == EVENT_ID:
            record[EVENT_ID] = None if text.strip().lower() == "null" else text
            continue
        kind = definition.properties.get(name)
        if kind is None:
            raise DataError(f"unknown property of event {record['event']!r}", where, name)
        record[name] = None if text.strip().lower() == "null" else CELL_PARSERS[kind](text, where, name)
    return record


def load_events_csv(engine: RecordEngine, path: str | Path, batch_size: int = 10_000, progress: bool = True,
                    strict_timestamps: bool = False) -> LoadReport:
    """Track the events of a CSV file (syntax in the module docstring); suspect times as for JSONL."""
    schema = engine_schema(engine)
    check = TimestampCheck(strict_timestamps)
    report = load_csv(path, lambda header: parse_event_header(schema, header),
                      lambda columns, cells, where: event_record(schema, columns, cells, where),
                      schema.validate_event, engine.track_events, batch_size, progress, check)
    check.warn(report)
    return report
