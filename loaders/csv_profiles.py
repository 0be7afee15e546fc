"""Load profiles from CSV: a header row, then one profile per row.

Columns: ``id``, attribute names from the schema, and ``consent.<purpose>``; any subset, in any
order (``id`` is required). Cells (standard CSV quoting, UTF-8, an optional BOM):

- an empty cell: the field is absent (the profile keeps its current value);
- ``null`` (any case): the field is cleared; a category can therefore not be the text "null" in CSV;
- category: the text as is; int: a base-10 integer; float: a decimal number (``1.5``, ``-2``, ``3e4``);
- bool and ``consent.<purpose>``: ``true`` or ``false`` (any case);
- tags: labels separated by ``|`` (``shoes|tech``), ``[]`` for the empty list; no empty labels;
- timestamp: ISO 8601 with an offset or ``Z``, or integer epoch milliseconds.

Rows are numbered by their first physical line (the header is line 1). A bad row is reported as
``line N, field 'x': message`` and skipped; an unknown or repeated header column stops the load
before anything is applied.

>>> from engine.schema import Schema
>>> schema = Schema.from_dict({"attributes": {"age": {"type": "int"}, "interests": {"type": "tags"}},
...                            "consents": ["email"]})
>>> columns = parse_header(schema, ["id", "age", "interests", "consent.email"])
>>> row_record(columns, ["u1", "31", "shoes|tech", "true"], "line 2")
{'id': 'u1', 'age': 31, 'interests': ['shoes', 'tech'], 'consent': {'email': True}}
>>> row_record(columns, ["u2", "null", "[]", ""], "line 3")
{'id': 'u2', 'age': None, 'interests': []}
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from engine.errors import DataError
from engine.schema import Schema

from .jsonl import BatchSender, LoadReport, RecordEngine, engine_schema, progress_bar

TAG_SEPARATOR = "|"
EMPTY_TAGS = "[]"
CONSENT_PREFIX = "consent."
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class CsvColumn(NamedTuple):
    """One header column: the record field it fills, its cell type, and the consent purpose if any."""

    name: str
    kind: str
    purpose: str | None = None


def _int_cell(text: str, where: str, name: str) -> int:
    if not _INT.fullmatch(text.strip()):
        raise DataError(f"expected an integer, got {text!r}", where, name)
    return int(text)


def _float_cell(text: str, where: str, name: str) -> float:
    if not _FLOAT.fullmatch(text.strip()):
        raise DataError(f"expected a number, got {text!r}", where, name)
    return float(text)


def _bool_cell(text: str, where: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise DataError(f"expected true or false, got {text!r}", where, name)
    return lowered == "true"


def _tags_cell(text: str, where: str, name: str) -> list[str]:
    if text.strip() == EMPTY_TAGS:
        return []
    tags = [tag.strip() for tag in text.split(TAG_SEPARATOR)]
    if "" in tags:
        raise DataError(f"empty tag in {text!r} (tags are separated by '{TAG_SEPARATOR}')", where, name)
    return tags


def _timestamp_cell(text: str, where: str, name: str) -> int | str:
    stripped = text.strip()
    return int(stripped) if _INT.fullmatch(stripped) else stripped


#: Cell text -> record value, per schema type (the record is then validated by the schema).
CELL_PARSERS: dict[str, Callable[[str, str, str], Any]] = {
    "category": lambda text, where, name: text,
    "int": _int_cell,
    "float": _float_cell,
    "bool": _bool_cell,
    "tags": _tags_cell,
    "timestamp": _timestamp_cell,
    "consent": _bool_cell,
    "id": lambda text, where, name: text,
}


def parse_header(schema: Schema, header: list[str]) -> list[CsvColumn]:
    """The columns of a header row; DataError (line 1) for an unknown, repeated or missing column."""
    columns: list[CsvColumn] = []
    seen: set[str] = set()
    for raw in header:
        name = raw.strip()
        if name in seen:
            raise DataError("repeated column", "line 1", name)
        seen.add(name)
        if name == "id":
            columns.append(CsvColumn("id", "id"))
        elif name.startswith(CONSENT_PREFIX) and name[len(CONSENT_PREFIX):] in schema.consents:
            columns.append(CsvColumn(name, "consent", name[len(CONSENT_PREFIX):]))
        elif name in schema.attributes:
            columns.append(CsvColumn(name, schema.attributes[name].type))
        else:
            raise DataError("unknown column (not id, an attribute or consent.<purpose>)", "line 1", name)
    if "id" not in seen:
        raise DataError("missing column", "line 1", "id")
    return columns


def row_record(columns: list[CsvColumn], cells: list[str], where: str) -> dict:
    """The upsert record of one row (empty cells absent, ``null`` cells None)."""
    if len(cells) != len(columns):
        raise DataError(f"expected {len(columns)} cells, got {len(cells)}", where)
    record: dict[str, Any] = {}
    consent: dict[str, bool] = {}
    for column, text in zip(columns, cells):
        if text == "":
            continue
        if column.kind == "consent":
            consent[column.purpose] = _bool_cell(text, where, column.name)
        elif column.kind != "id" and text.strip().lower() == "null":
            record[column.name] = None
        else:
            record[column.name] = CELL_PARSERS[column.kind](text, where, column.name)
    if consent:
        record["consent"] = consent
    return record


def _decoded_lines(handle, bad_lines: set[int], counter: list[int]) -> Iterator[str]:
    """Text lines of a binary file; counts bytes read and remembers lines that are not UTF-8."""
    for number, raw in enumerate(handle, start=1):
        counter[0] += len(raw)
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            bad_lines.add(number)
            yield raw.decode("utf-8", errors="replace")


def load_profiles_csv(engine: RecordEngine, path: str | Path, batch_size: int = 10_000, progress: bool = True) -> LoadReport:
    """Upsert the profiles of a CSV file (syntax in the module docstring)."""
    schema = engine_schema(engine)
    return load_csv(path, lambda header: parse_header(schema, header), row_record, schema.validate_profile,
                    engine.upsert_profiles, batch_size, progress)


def load_csv(
    path: str | Path,
    header: Callable[[list[str]], Any],
    make_record: Callable[[Any, list[str], str], dict],
    validate: Callable[[dict, str], Any],
    send: Callable[[list[dict]], int],
    batch_size: int = 10_000,
    progress: bool = True,
    check: Callable[[Any, int, str], None] | None = None,
) -> LoadReport:
    """Load a CSV file: ``header(cells)`` reads the header row (DataError stops the load), then each
    row becomes ``make_record(columns, cells, where)``, is validated (and ``check``-ed) and sent in batches."""
    path = Path(path)
    report = LoadReport()
    sender = BatchSender(send, report, batch_size)
    bad_lines: set[int] = set()
    bytes_read = [0]
    with open(path, "rb") as handle, progress_bar(path, progress) as bar:
        reader = csv.reader(_decoded_lines(handle, bad_lines, bytes_read), strict=True)
        try:
            first_row = next(reader, None)
            if first_row is None:
                return report
            columns = header(first_row)
        except (DataError, csv.Error) as exc:
            report.errors.append(str(exc) if isinstance(exc, DataError) else f"line 1: malformed CSV: {exc}")
            return report
        while True:
            first = reader.line_num + 1
            where = f"line {first}"
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                report.errors.append(f"{where}: malformed CSV: {exc}")
                continue
            if not cells:
                continue
            if bad_lines.intersection(range(first, reader.line_num + 1)):
                report.errors.append(f"{where}: not valid UTF-8")
                continue
            try:
                record = make_record(columns, cells, where)
                validated = validate(record, where)
                if check is not None:
                    check(validated, first, where)
            except DataError as exc:
                report.errors.append(str(exc))
                continue
            if sender.add(first, record):
                bar.update(bytes_read[0] - bar.n)
        sender.flush()
        bar.update(bytes_read[0] - bar.n)
    return report
