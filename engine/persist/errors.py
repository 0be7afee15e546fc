"""The durable store's errors (defined in engine.errors so shard workers re-raise them by class)."""
from __future__ import annotations

from ..errors import DataCorruption, DataDirMismatch

__all__ = ["DataCorruption", "DataDirMismatch"]
