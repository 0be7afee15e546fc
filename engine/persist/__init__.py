"""Durability: an LMDB write-ahead log with group commit, and per-shard snapshots in LMDB stores.

``DataDir`` is what the engine opens for ``Engine(..., data_dir=D)``; docs/durability.md
describes the design, the formats and the guarantees.
"""
from __future__ import annotations

from .datadir import DataDir
from .errors import DataCorruption, DataDirMismatch

__all__ = ["DataDir", "DataCorruption", "DataDirMismatch"]
