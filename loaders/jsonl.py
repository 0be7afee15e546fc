"""Load profile and event JSON Lines files into an engine, reporting bad lines by number.

Every line is parsed and validated on its own (``Schema.validate_profile``/``validate_event``);
good lines go to the engine in batches, bad ones are reported as ``line N, field 'x': message``
(or ``line N: malformed JSON: ...``) and never stop the load. Blank lines are skipped.

>>> import tempfile, os
>>> from engine.schema import Schema
>>> class Recorder:  # anything with .schema, .upsert_profiles and .track_events
...     schema = Schema.from_dict({"attributes": {"age": {"type": "int"}}})
...     def upsert_profiles(self, records): return len(list(records))
>>> path = os.path.join(tempfile.mkdtemp(), "p.jsonl")
>>> _ = open(path, "w").write('{"id": "u1", "age": 3}\\n{"id": "u2", "age": "x"}\\n{oops\\n')
>>> report = load_profiles_jsonl(Recorder(), path, progress=False)
>>> report.applied, report.errors
(1, ["line 2, field 'age': expected an integer, got str", 'line 3: malformed JSON: Expecting property name enclosed in double quotes (column 2)'])
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from tqdm import tqdm

from engine.errors import DataError
from engine.schema import Schema


class RecordEngine(Protocol):
    """What the loaders need from an engine."""

    schema: Any

    def upsert_profiles(self, records: Iterable[dict]) -> int: ...

    def track_events(self, records: Iterable[dict]) -> int: ...


#: Event times below this epoch ms (1973-03-03T09:46:40Z) look like epoch seconds given as ms.
EPOCH_SECONDS_BOUND_MS = 100_000_000_000
_SUSPECT_LINES_SHOWN = 10


@dataclass
class LoadReport:
    """The outcome of loading one file: records applied, one message per rejected line, warnings."""

    applied: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no line was rejected."""
        return not self.errors

    def summary(self, max_errors: int = 20) -> str:
        """A readable report: the applied count, the first ``max_errors`` errors, the warnings."""
        shown = max(max_errors, 0)
        lines = [f"applied {self.applied} records, {len(self.errors)} errors"]
        lines += [f"  {message}" for message in self.errors[:shown]]
        if len(self.errors) > shown:
            lines.append(f"  ... and {len(self.errors) - shown} more errors")
        lines += [f"  warning: {message}" for message in self.warnings]
        return "\n".join(lines)


class TimestampCheck:
    """Finds event times that look like epoch seconds (epoch ms below 1e11); refuses them if ``strict``."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.count = 0
        self.lines: list[int] = []

    def __call__(self, event: Any, number: int, where: str) -> None:
        """Check one validated event (an ``EventRecord``) read from line ``number``."""
        if event.ts >= EPOCH_SECONDS_BOUND_MS:
            return
        if self.strict:
            raise DataError(f"{event.ts} is before 1973-03-03T09:46:40Z (epoch ms below 1e11): epoch seconds? "
                            "ts is epoch milliseconds or ISO 8601 (refused by --strict-timestamps)", where, "ts")
        self.count += 1
        if len(self.lines) < _SUSPECT_LINES_SHOWN:
            self.lines.append(number)

    def warn(self, report: LoadReport) -> None:
        """Add the warning about suspect timestamps to ``report`` (if there were any)."""
        if self.count:
            first = ", ".join(str(n) for n in self.lines) + (", ..." if self.count > len(self.lines) else "")
            report.warnings.append(
                f"{self.count} events have a ts before 1973-03-03T09:46:40Z (epoch ms below 1e11: epoch "
                f"seconds?), at line{'s' if self.count > 1 else ''} {first}; ts is epoch milliseconds or ISO 8601 "
                "(--strict-timestamps refuses them)")


def engine_schema(engine: RecordEngine) -> Schema:
    """The engine's schema as a ``Schema`` (accepts engines that keep the JSON form)."""
    schema = engine.schema
    return schema if isinstance(schema, Schema) else Schema.from_dict(schema)


class BatchSender:
    """Collects validated records with their line numbers and sends them to the engine in batches.

    If the engine rejects a batch (it applies all or none), the batch is retried one record at a
    time so that only the bad lines are reported.
    """

    def __init__(self, send: Callable[[list[dict]], int], report: LoadReport, batch_size: int):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.send = send
        self.report = report
        self.batch_size = batch_size
        self.lines: list[int] = []
        self.records: list[dict] = []

    def add(self, line: int, record: dict) -> bool:
        """Queue one record; returns True when a batch was sent."""
        self.lines.append(line)
        self.records.append(record)
        if len(self.records) >= self.batch_size:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Send the queued records."""
        if not self.records:
            return
        lines, records = self.lines, self.records
        self.lines, self.records = [], []
        try:
            self.report.applied += self.send(records)
        except DataError:
            for line, record in zip(lines, records):
                try:
                    self.report.applied += self.send([record])
                except DataError as exc:
                    self.report.errors.append(f"line {line}: rejected by the engine: {exc}")


def progress_bar(path: Path, enabled: bool) -> tqdm:
    """A bytes-read progress bar on stderr, shown only when a load lasts over a second."""
    return tqdm(
        total=os.path.getsize(path), unit="B", unit_scale=True, unit_divisor=1024,
        desc=path.name, file=sys.stderr, disable=not enabled, delay=1.0, leave=False,
    )


def load_jsonl(
    path: str | Path,
    validate: Callable[[Any, str], Any],
    send: Callable[[list[dict]], int],
    batch_size: int = 10_000,
    progress: bool = True,
    check: Callable[[Any, int, str], None] | None = None,
) -> LoadReport:
    """Load a JSON Lines file: ``validate(record, where)`` each line (then ``check(validated, line,
    where)``, which may raise DataError), ``send`` good ones in batches."""
    path = Path(path)
    report = LoadReport()
    sender = BatchSender(send, report, batch_size)
    with open(path, "rb") as handle, progress_bar(path, progress) as bar:
        pending_bytes = 0
        for number, raw in enumerate(handle, start=1):
            pending_bytes += len(raw)
            if not raw.strip():
                continue
            where = f"line {number}"
            try:
                record = json.loads(raw.rstrip(b"\r\n"))
            except json.JSONDecodeError as exc:
                report.errors.append(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})")
                continue
            except ValueError as exc:  # bytes that are not UTF-8
                report.errors.append(f"{where}: malformed JSON: {exc}")
                continue
            try:
                validated = validate(record, where)
                if check is not None:
                    check(validated, number, where)
            except DataError as exc:
                report.errors.append(str(exc))
                continue
            if sender.add(number, record):
                bar.update(pending_bytes)
                pending_bytes = 0
        sender.flush()
        bar.update(pending_bytes)
    return report


def load_profiles_jsonl(engine: RecordEngine, path: str | Path, batch_size: int = 10_000, progress: bool = True) -> LoadReport:
    """Upsert the profile records of a JSON Lines file (one record per line, see docs/data.md)."""
    schema = engine_schema(engine)
    return load_jsonl(path, schema.validate_profile, engine.upsert_profiles, batch_size, progress)


def load_events_jsonl(engine: RecordEngine, path: str | Path, batch_size: int = 10_000, progress: bool = True,
                      strict_timestamps: bool = False) -> LoadReport:
    """Track the event records of a JSON Lines file (one record per line, see docs/data.md).

    Times that look like epoch seconds are reported as a warning, or refused with ``strict_timestamps``.
    """
    schema = engine_schema(engine)
    check = TimestampCheck(strict_timestamps)
    report = load_jsonl(path, schema.validate_event, engine.track_events, batch_size, progress, check)
    check.warn(report)
    return report
