"""Write a generated dataset as files (schema.json, profiles.jsonl, events.jsonl) or as records.

Lines are built a chunk at a time with vectorised string operations (NumPy ``StringDType``): a
JSON fragment per column per row (empty for nulls, which are omitted), then concatenated.

>>> from loaders.generator import generate
>>> ds = generate(profiles=2, events=0, seed=3, now_ms=1_800_000_000_000)
>>> profiles, events = dataset_records(ds)
>>> sorted(next(profiles))[:3], list(events)
(['age', 'cart_value', 'consent'], [])
"""
from __future__ import annotations

import itertools
import json
from json.encoder import encode_basestring
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np
from numpy.dtypes import StringDType

from engine.columns import CategoryColumn, Column, EventBatch, ProfileBatch, TagsColumn, ValueColumn, slice_column
from engine.schema import Schema

from .generator import Dataset

_TEXT = StringDType()
CHUNK_ROWS = 200_000
_ISO_MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z
_ISO_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


def write_dataset(ds: Dataset, out_dir: str | Path, ts_format: str = "iso") -> dict[str, Path]:
    """Write ``schema.json``, ``profiles.jsonl`` and ``events.jsonl`` into ``out_dir``.

    Timestamps are ISO 8601 UTC text with ``Z`` (``ts_format="iso"``) or epoch ms (``"ms"``).
    Returns the written paths by name.
    """
    if ts_format not in ("iso", "ms"):
        raise ValueError("ts_format must be 'iso' or 'ms'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"schema": out / "schema.json", "profiles": out / "profiles.jsonl", "events": out / "events.jsonl"}
    schema = Schema.from_dict(ds.schema)
    paths["schema"].write_text(json.dumps(ds.schema, indent=2) + "\n", encoding="utf-8")
    with open(paths["profiles"], "w", encoding="utf-8") as handle:
        write_profiles(ds.profiles, schema, handle, ts_format)
    with open(paths["events"], "w", encoding="utf-8") as handle:
        for batch in ds.events:
            write_events(batch, schema, handle, ts_format)
    return paths


def write_profiles(batch: ProfileBatch, schema: Schema, handle: TextIO, ts_format: str = "iso") -> None:
    """Append one JSON line per profile of ``batch`` to the text file ``handle``."""
    kinds = {name: attr.type for name, attr in schema.attributes.items()}
    for start in range(0, len(batch), CHUNK_ROWS):
        chunk = batch.slice(start, start + CHUNK_ROWS)
        line = _id_fragments(chunk.ids, "{")
        for name, col in chunk.columns.items():
            line = np.strings.add(line, column_fragments(name, kinds[name], col, ts_format))
        if chunk.consents:
            line = np.strings.add(line, _consent_fragments(chunk.consents))
        _write_lines(handle, line)


def write_events(batch: EventBatch, schema: Schema, handle: TextIO, ts_format: str = "iso") -> None:
    """Append one JSON line per event of ``batch`` to the text file ``handle``."""
    kinds = schema.events[batch.event].properties
    event = "," + _key("event") + encode_basestring(batch.event)
    for start in range(0, len(batch), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(batch))
        line = np.strings.add(_id_fragments(batch.ids[start:stop], "{"), event)
        ts = ValueColumn(batch.ts[start:stop], np.ones(stop - start, dtype=bool))
        line = np.strings.add(line, _timestamp_fragments(_prefix("ts"), ts, ts_format))
        for name, col in batch.props.items():
            line = np.strings.add(line, column_fragments(name, kinds[name], slice_column(col, start, stop), ts_format))
        if batch.event_ids is not None:
            event_ids = batch.event_ids[start:stop]
            text = np.array([encode_basestring(e) if e is not None else "" for e in event_ids], dtype=_TEXT)
            line = np.strings.add(line, _masked(_prefix("event_id"), text, np.array([e is not None for e in event_ids])))
        _write_lines(handle, line)


def column_fragments(name: str, kind: str, col: Column, ts_format: str = "iso") -> np.ndarray:
    """Per row, the text ``,"name":value`` (empty for a null) for a column of schema type ``kind``."""
    prefix = _prefix(name)
    if isinstance(col, CategoryColumn):
        table = np.array([prefix + encode_basestring(label) for label in col.labels] + [""], dtype=_TEXT)
        return table[np.where(col.codes < 0, len(col.labels), col.codes)]
    if isinstance(col, TagsColumn):
        return _tags_fragments(prefix, col)
    if col.values.dtype == np.bool_:
        table = np.array([prefix + "false", prefix + "true", ""], dtype=_TEXT)
        return table[np.where(col.valid, col.values.astype(np.int8), 2)]
    if kind == "timestamp":
        return _timestamp_fragments(prefix, col, ts_format)
    return _masked(prefix, col.values.astype(_TEXT), col.valid)


def _key(name: str) -> str:
    return encode_basestring(name) + ":"


def _prefix(name: str) -> str:
    return "," + _key(name)


def _id_fragments(ids: list[str], opening: str) -> np.ndarray:
    head = opening + _key("id")
    return np.array([head + text for text in map(encode_basestring, ids)], dtype=_TEXT)


def _masked(prefix: str, text: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, np.strings.add(prefix, text), np.array("", dtype=_TEXT))


def _timestamp_fragments(prefix: str, col: ValueColumn, ts_format: str) -> np.ndarray:
    values = col.values
    in_range = len(values) == 0 or (values.min() >= _ISO_MIN_MS and values.max() <= _ISO_MAX_MS)
    if ts_format == "ms" or not in_range:
        return _masked(prefix, values.astype(_TEXT), col.valid)
    iso = np.datetime_as_string(values.astype("datetime64[ms]"), unit="ms", timezone="UTC").astype(_TEXT)
    return _masked(prefix, np.strings.add(np.strings.add('"', iso), '"'), col.valid)


def _tags_fragments(prefix: str, col: TagsColumn) -> np.ndarray:
    """Tags as JSON lists in label order; rows are grouped by their set of tags (a bitmask)."""
    n = len(col.valid)
    counts = np.diff(col.offsets)
    if len(col.labels) > 63:  # too many labels for a bitmask: one row at a time
        rows = [
            prefix + json.dumps(sorted({col.labels[c] for c in col.values[col.offsets[i] : col.offsets[i + 1]]}))
            for i in range(n)
        ]
        return _masked("", np.array(rows, dtype=_TEXT), col.valid)
    masks = np.zeros(n, dtype=np.int64)
    nonempty = counts > 0
    if nonempty.any():  # consecutive non-empty rows: each reduceat segment is exactly one row
        bits = np.left_shift(np.int64(1), col.values[col.offsets[0] : col.offsets[-1]].astype(np.int64))
        masks[nonempty] = np.bitwise_or.reduceat(bits, col.offsets[:-1][nonempty] - col.offsets[0])
    unique, inverse = np.unique(masks, return_inverse=True)
    texts = []
    for mask in unique.tolist():
        tags = [encode_basestring(label) for code, label in enumerate(col.labels) if mask >> code & 1]
        texts.append(prefix + "[" + ",".join(tags) + "]")
    return _masked("", np.array(texts, dtype=_TEXT)[inverse.reshape(-1)], col.valid)


def _consent_fragments(consents: dict[str, np.ndarray]) -> np.ndarray:
    """The ``,"consent":{...}`` per row; the 2**k combinations are formatted once."""
    purposes = list(consents)
    code = np.zeros(len(consents[purposes[0]]), dtype=np.int64)
    for bit, purpose in enumerate(purposes):
        code |= consents[purpose].astype(np.int64) << bit
    table = []
    for combo in range(1 << len(purposes)):
        flags = {purpose: bool(combo >> bit & 1) for bit, purpose in enumerate(purposes)}
        table.append("," + _key("consent") + json.dumps(flags, separators=(",", ":")))
    return np.array(table, dtype=_TEXT)[code]


def _write_lines(handle: TextIO, lines: np.ndarray) -> None:
    """Write the lines, each closed with ``}`` and a newline."""
    if len(lines):
        handle.write("}\n".join(lines.tolist()))
        handle.write("}\n")


# -- records ----------------------------------------------------------------------------------


def column_values(col: Column) -> list:
    """The column as a list of record values: None for null, tags as sorted lists."""
    if isinstance(col, CategoryColumn):
        labels = list(col.labels) + [None]
        return [labels[c] for c in np.where(col.codes < 0, len(col.labels), col.codes).tolist()]
    if isinstance(col, TagsColumn):
        labels = col.labels
        values = col.values.tolist()
        bounds = col.offsets.tolist()
        return [
            sorted({labels[c] for c in values[bounds[i] : bounds[i + 1]]}) if ok else None
            for i, ok in enumerate(col.valid.tolist())
        ]
    return [value if ok else None for value, ok in zip(col.values.tolist(), col.valid.tolist())]


def profile_records(batch: ProfileBatch) -> Iterator[dict]:
    """One upsert record per profile (nulls omitted, timestamps as epoch ms, tags as lists)."""
    for start in range(0, len(batch), CHUNK_ROWS):
        chunk = batch.slice(start, start + CHUNK_ROWS)
        columns = {name: column_values(col) for name, col in chunk.columns.items()}
        consents = {purpose: flags.tolist() for purpose, flags in chunk.consents.items()}
        for i, profile_id in enumerate(chunk.ids):
            record: dict = {"id": profile_id}
            for name, values in columns.items():
                if values[i] is not None:
                    record[name] = values[i]
            if consents:
                record["consent"] = {purpose: flags[i] for purpose, flags in consents.items()}
            yield record


def event_records(batch: EventBatch) -> Iterator[dict]:
    """One event record per event (null properties omitted, ``ts`` as epoch ms, ``event_id`` when it has one)."""
    props = {name: column_values(col) for name, col in batch.props.items()}
    for i, (profile_id, ts) in enumerate(zip(batch.ids, batch.ts.tolist())):
        record: dict = {"id": profile_id, "event": batch.event, "ts": ts}
        if batch.event_ids is not None and batch.event_ids[i] is not None:
            record["event_id"] = batch.event_ids[i]
        for name, values in props.items():
            if values[i] is not None:
                record[name] = values[i]
        yield record


def dataset_records(ds: Dataset) -> tuple[Iterator[dict], Iterator[dict]]:
    """The dataset as (profile records, event records), the shapes ``upsert_profiles``/``track_events`` take."""
    return profile_records(ds.profiles), itertools.chain.from_iterable(event_records(b) for b in ds.events)
