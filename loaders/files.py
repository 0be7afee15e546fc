"""Pick the loader of a profile or event file by its suffix: ``.csv`` is CSV, anything else JSON Lines."""
from __future__ import annotations

from pathlib import Path

from .csv_events import load_events_csv
from .csv_profiles import load_profiles_csv
from .jsonl import LoadReport, RecordEngine, load_events_jsonl, load_profiles_jsonl


def load_file(kind: str, engine: RecordEngine, path: str | Path, batch_size: int = 10_000, progress: bool = True,
              strict_timestamps: bool = False) -> LoadReport:
    """Load ``path`` (``kind``: "profiles" or "events") into ``engine``; the report of bad lines."""
    is_csv = Path(path).suffix.lower() == ".csv"
    if kind == "profiles":
        loader = load_profiles_csv if is_csv else load_profiles_jsonl
        return loader(engine, path, batch_size=batch_size, progress=progress)
    loader = load_events_csv if is_csv else load_events_jsonl
    return loader(engine, path, batch_size=batch_size, progress=progress, strict_timestamps=strict_timestamps)
