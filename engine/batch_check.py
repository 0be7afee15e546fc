"""Validation of columnar batches from untrusted producers (the gRPC ``LoadEvents`` call).

Record-at-a-time writes are checked by ``Schema.validate_event``; a columnar batch is checked
here, vectorised, with the same rules: ids non-empty strings of at most 256 UTF-8 bytes, known
properties of the event's schema type, finite floats, category codes within their labels, one
entry per event in every column. A ``DataError`` names the first bad event (its index in the
batch) and the field.

>>> import numpy as np
>>> from engine.columns import EventBatch, ValueColumn
>>> from engine.schema import CONTRACT_SCHEMA, Schema
>>> schema = Schema.from_dict(CONTRACT_SCHEMA)
>>> bad = ValueColumn(np.array([10.0, np.inf]), np.array([True, True]))
>>> check_event_batch(schema, EventBatch("purchase", ["u1", "u2"], np.array([1, 2]), {"amount": bad}))
Traceback (most recent call last):
...
engine.errors.DataError: record 1, field 'amount': expected a finite number
"""
from __future__ import annotations

import numpy as np

from .columns import CategoryColumn, EventBatch, ValueColumn
from .errors import DataError
from .schema import MAX_ID_BYTES, Schema, check_event_id

#: The numpy dtype kind each property type is stored as.
VALUE_KINDS = {"int": "i", "timestamp": "i", "float": "f", "bool": "b"}


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_ids(ids: list) -> None:
    """Every id a non-empty string of at most MAX_ID_BYTES UTF-8 bytes."""
    for i, value in enumerate(ids):
        if type(value) is not str or not value or (len(value) > MAX_ID_BYTES // 4
                                                   and len(value.encode("utf-8")) > MAX_ID_BYTES):
            raise DataError(f"id must be a non-empty string of at most {MAX_ID_BYTES} UTF-8 bytes", i, "id")


def check_event_batch(schema: Schema, batch: EventBatch) -> None:
    """Raise DataError unless ``batch`` is a valid batch of events of one known type."""
    definition = schema.events.get(batch.event)
    if definition is None:
        raise DataError(f"unknown event type {batch.event!r}", None, "event")
    n = len(batch.ids)
    if not isinstance(batch.ts, np.ndarray) or batch.ts.dtype.kind != "i" or batch.ts.shape != (n,):
        raise DataError(f"expected {n} integer epoch-ms timestamps", None, "ts")
    if not all(type(value) is str and value for value in batch.ids) or max(map(len, batch.ids), default=0) > MAX_ID_BYTES // 4:
        check_ids(batch.ids)
    if batch.event_ids is not None:
        if not isinstance(batch.event_ids, list) or len(batch.event_ids) != n:
            raise DataError(f"expected {n} event ids (None for an event without one)", None, "event_ids")
        for i, value in enumerate(batch.event_ids):
            if value is not None:
                check_event_id(value, i)
    for name, column in batch.props.items():
        kind = definition.properties.get(name)
        if kind is None:
            raise DataError(f"unknown property of event {batch.event!r}", None, name)
        if kind == "category":
            _check_categories(column, n, name)
        else:
            _check_values(column, n, name, kind)


def _check_categories(column: object, n: int, name: str) -> None:
    if not isinstance(column, CategoryColumn):
        raise DataError("expected category values (labels and codes)", None, name)
    codes = np.asarray(column.codes)
    if codes.shape != (n,) or codes.dtype.kind != "i":
        raise DataError(f"expected {n} integer category codes", None, name)
    if not all(type(label) is str for label in column.labels):
        raise DataError("category labels must be strings", None, name)
    bad = (codes < -1) | (codes >= len(column.labels))
    if bad.any():
        raise DataError(f"category code out of range (there are {len(column.labels)} labels; -1 = null)",
                        _first(bad), name)


def _check_values(column: object, n: int, name: str, kind: str) -> None:
    if not isinstance(column, ValueColumn):
        raise DataError(f"expected {kind} values", None, name)
    values, valid = np.asarray(column.values), np.asarray(column.valid)
    if values.shape != (n,) or values.dtype.kind != VALUE_KINDS[kind]:
        raise DataError(f"expected {n} {kind} values", None, name)
    if valid.shape != (n,) or valid.dtype != np.bool_:
        raise DataError(f"expected {n} validity flags", None, name)
    if kind == "float":
        bad = valid & ~np.isfinite(values)
        if bad.any():
            raise DataError("expected a finite number", _first(bad), name)
