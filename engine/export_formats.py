"""Member export file formats: CSV, JSON Lines and Parquet, written chunk by chunk to a binary sink.

Columns are ``id`` then the chosen attributes, in the order asked. Values are those of the
records (docs/data.md): category text, int, float, bool, timestamps as integer epoch ms, tags
as a sorted list. Nulls are empty cells in CSV, ``null`` in JSON Lines and nulls in Parquet.

- **CSV**: a header row, standard quoting; bools ``true``/``false``, tags ``a|b`` (``[]`` for the
  empty list), floats in Python's shortest round-trip form. The file loads back with ``segengine load``
  (an empty cell leaves the attribute as it is there).
- **JSON Lines**: one object per member, every chosen attribute present (null when null).
- **Parquet** (needs pyarrow: the ``parquet`` extra): one row group per chunk; ``id`` and categories
  as strings, int and timestamp as int64 (epoch ms), float as double, bool as boolean, tags as a
  list of strings.

>>> import io, numpy as np
>>> from engine.member_export import MemberChunk
>>> chunk = MemberChunk(np.frombuffer(b"u1u2", dtype=np.uint8), np.array([0, 2, 4]),
...                     [{"kind": "category", "values": np.array([0, -1], dtype=np.int32), "labels": ["FR"]}])
>>> out = io.BytesIO()
>>> write_members([chunk], [("country", "category")], "jsonl", out)
2
>>> out.getvalue().decode()
'{"id": "u1", "country": "FR"}\\n{"id": "u2", "country": null}\\n'
"""
from __future__ import annotations

import csv
import io
import json
import os
from json.encoder import encode_basestring as encode_string  # type: ignore[attr-defined]
from typing import Any, BinaryIO, Iterable, Protocol

import numpy as np

from .errors import BadRequest
from .member_export import MemberChunk

FORMATS = ("csv", "jsonl", "parquet")


class MemberWriter(Protocol):
    """Writes member chunks in one format to a binary sink."""

    def write(self, chunk: MemberChunk) -> None: ...
    def close(self) -> None: ...


def _json_cells(column: dict[str, Any]) -> list[str]:
    """A column's values as JSON text (``null`` for null); each distinct label is encoded once."""
    kind, values = column["kind"], column["values"]
    if kind in ("category", "tags"):
        labels = [json.dumps(label, ensure_ascii=False) for label in column["labels"]] + ["null"]
        return [labels[code] for code in values.tolist()]  # code -1 picks the last: null
    if kind == "bool":
        return [("false", "true", "null")[v] for v in values.tolist()]
    cells = [repr(v) for v in values.tolist()] if kind == "float" else [str(v) for v in values.tolist()]
    for i in np.flatnonzero(~column["valid"]).tolist():
        cells[i] = "null"
    return cells


def _csv_cells(column: dict[str, Any]) -> list[str]:
    """A column's values as CSV cells (empty for null)."""
    kind, values = column["kind"], column["values"]
    if kind == "category":
        labels = [*column["labels"], ""]
        return [labels[code] for code in values.tolist()]
    if kind == "tags":
        labels = ["|".join(tags) if tags else "[]" for tags in column["labels"]] + [""]
        return [labels[code] for code in values.tolist()]
    if kind == "bool":
        return [("false", "true", "")[v] for v in values.tolist()]
    cells = [repr(v) for v in values.tolist()] if kind == "float" else [str(v) for v in values.tolist()]
    for i in np.flatnonzero(~column["valid"]).tolist():
        cells[i] = ""
    return cells


class CsvWriter:
    """CSV: a header row, then one row per member."""

    def __init__(self, sink: BinaryIO, attributes: list[tuple[str, str]]):
        self.sink = sink
        self._write_rows([["id", *(name for name, _ in attributes)]])

    def _write_rows(self, rows: Iterable[Iterable[str]]) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        self.sink.write(text.getvalue().encode("utf-8"))

    def write(self, chunk: MemberChunk) -> None:
        self._write_rows(zip(chunk.ids(), *(_csv_cells(column) for column in chunk.columns)))

    def close(self) -> None:
        """Nothing to finish."""


class JsonlWriter:
    """JSON Lines: one object per member."""

    def __init__(self, sink: BinaryIO, attributes: list[tuple[str, str]]):
        self.sink = sink
        keys = [json.dumps(name, ensure_ascii=False).replace("%", "%%") for name in ["id", *(n for n, _ in attributes)]]
        self.line = "{" + ", ".join(f"{key}: %s" for key in keys) + "}"

    def write(self, chunk: MemberChunk) -> None:
        ids = [encode_string(i) for i in chunk.ids()]
        line = self.line
        lines = [line % row for row in zip(ids, *(_json_cells(column) for column in chunk.columns))]
        self.sink.write(("\n".join(lines) + "\n").encode("utf-8"))

    def close(self) -> None:
        """Nothing to finish."""


class ParquetWriter:
    """Parquet: one row group per chunk (pyarrow)."""

    def __init__(self, sink: BinaryIO, attributes: list[tuple[str, str]]):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise BadRequest("Parquet export needs pyarrow: pip install 'segengine[parquet]'") from None
        self.pa = pa
        types = {"category": pa.string(), "int": pa.int64(), "timestamp": pa.int64(), "float": pa.float64(),
                 "bool": pa.bool_(), "tags": pa.list_(pa.string())}
        self.schema = pa.schema([("id", pa.string()), *((name, types[kind]) for name, kind in attributes)])
        # dictionary pages for labels only: ids are distinct, numbers gain little (and it costs ~40%)
        labelled = [name for name, kind in attributes if kind in ("category", "tags")]
        self.writer = pq.ParquetWriter(sink, self.schema, use_dictionary=labelled)

    def _array(self, column: dict[str, Any]) -> Any:
        pa, kind, values = self.pa, column["kind"], column["values"]
        if kind in ("category", "tags"):
            labels = pa.array(column["labels"], pa.string() if kind == "category" else pa.list_(pa.string()))
            return labels.take(pa.array(values, mask=values < 0))
        if kind == "bool":
            return pa.array(values == 1, mask=values < 0)
        return pa.array(values, mask=~column["valid"])

    def write(self, chunk: MemberChunk) -> None:
        pa = self.pa
        offsets = chunk.id_offsets - chunk.id_offsets[0]
        ids = pa.StringArray.from_buffers(len(chunk), pa.py_buffer(offsets.astype(np.int32)),
                                          pa.py_buffer(chunk.id_buffer))
        arrays = [ids, *(self._array(column) for column in chunk.columns)]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        """Write the footer."""
        self.writer.close()


class ByteChunks(io.RawIOBase):
    """A write-only binary sink whose bytes are taken out in pieces as they come (for streaming a file).

    >>> sink = ByteChunks()
    >>> sink.write(b"abc"), sink.write(b"de"), sink.take(piece_bytes=2), sink.tell()
    (3, 2, [b'ab', b'cd', b'e'], 5)
    """

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        data = bytes(data)
        self.parts.append(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def take(self, piece_bytes: int = 1 << 20) -> list[bytes]:
        """The bytes written since the last call, in pieces of at most ``piece_bytes``."""
        data = b"".join(self.parts)
        self.parts = []
        return [data[i:i + piece_bytes] for i in range(0, len(data), piece_bytes)]


WRITERS: dict[str, type] = {"csv": CsvWriter, "jsonl": JsonlWriter, "parquet": ParquetWriter}


def open_writer(format: str, sink: BinaryIO, attributes: list[tuple[str, str]]) -> MemberWriter:
    """A writer of ``format`` to ``sink`` for the attributes ``[(name, schema type)]``."""
    writer = WRITERS.get(format)
    if writer is None:
        raise BadRequest(f"unknown export format {format!r} (expected one of {', '.join(FORMATS)})")
    return writer(sink, attributes)


def write_members(chunks: Iterable[MemberChunk], attributes: list[tuple[str, str]], format: str,
                  out: str | BinaryIO) -> int:
    """Write ``chunks`` as ``format`` to ``out`` (a path, or a binary file left open); the rows written."""
    if format not in WRITERS:
        open_writer(format, io.BytesIO(), attributes)  # raises BadRequest naming the formats
    if isinstance(out, str):  # written whole or not at all
        partial = out + ".part"
        try:
            with open(partial, "wb") as handle:
                rows = write_members(chunks, attributes, format, handle)
            os.replace(partial, out)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return rows
    writer = open_writer(format, out, attributes)
    rows = 0
    for chunk in chunks:
        writer.write(chunk)
        rows += len(chunk)
    writer.close()
    return rows
