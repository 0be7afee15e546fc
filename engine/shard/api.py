"""The shard API: the methods a coordinator may call on a shard, wherever it runs.

``ShardAPI`` lists them with their signatures; ``LocalShard`` implements them, and the remote
handles (``ProcessShard``, ``RayShard``) expose the same methods, each sending one call. The
worker process and the Ray actor dispatch these names only (and the worker's own
``DIAGNOSTICS``); anything else is refused with an AttributeError.

Every method is classified by how it may share a shard with other calls (``ACCESS``):

- ``WRITE``: changes the shard (or its change log, or its snapshot store). It runs alone, after
  every earlier request has finished; later requests wait for it.
- ``QUERY``: a read through the executor (``count``, ``ids``...). Queries may overlap point
  reads, and each other while ``QUERIES_OVERLAP`` (the executor's clock and scratch are per call).
- ``POINT``: a short read outside the executor (``membership``, ``profile``, ``stats``...). A
  point read may run alongside queries and other point reads, and goes ahead of queued queries.
  A point read sent by a view call (``membership``: engine.concurrency) may also run beside a
  write sent by one (an event batch, whose membership switch waits for ``publish_view``).
- ``SNAPSHOT``: a snapshot step that reads the shard's data without changing it (``snapshot_capture``)
  or changes only its snapshot store (``snapshot_prune``). It keeps writes out but runs alongside
  queries and point reads (taking a query's place, ahead of queued queries), so a capture pauses
  the shard's writes, not its readers.
- ``SYNC``: ``sync_view``, a view write's sync step (engine.concurrency): it re-evaluates the saved
  segments on the rows the write's commit touched, changing only the saved segments' state, which
  the reads the coordinator admits beside it do not read. It keeps writes out but runs alongside
  queries and point reads, in a query's place, like a snapshot step.
- ``PREPARE``: ``prepare_logged``, which works out the next write while reads go on
  (engine/shard/prepared.py). It runs alongside reads like a point read, never alongside a
  write, and is not counted as a query.

>>> sorted(name for name, access in ACCESS.items() if access is Access.QUERY)
['breakdown', 'count', 'explain', 'ids', 'lookalike_counts', 'lookalike_sample', 'lookalike_score', 'overlap', 'rows', 'why']
>>> check("count"), check("_worker_pid", diagnostics=True)
('count', '_worker_pid')
>>> check("__init__")
Traceback (most recent call last):
AttributeError: '__init__' is not a shard method
"""
from __future__ import annotations

import enum
from typing import Any, Protocol

import numpy as np
from pyroaring import BitMap

from ..plan.steps import Step
from ..query.ast import Node


class Access(enum.Enum):
    """How a shard method may overlap other calls on the same shard (see the module docstring)."""

    WRITE = "write"
    QUERY = "query"
    POINT = "point"
    SNAPSHOT = "snapshot"
    SYNC = "sync"
    PREPARE = "prepare"


class ShardAPI(Protocol):
    """The methods of a shard that a coordinator calls (see engine/shard/local.py for what they do)."""

    # writes (a write command reaches a shard as ``apply_logged``: see engine.commands)
    def sync_view(self) -> None: ...
    def publish_view(self) -> None: ...
    def refresh_segments(self, now: int) -> None: ...
    def capture_changes(self, on: bool) -> None: ...
    def take_changes(self) -> dict[str, Any]: ...
    def apply_logged(self, seq: int, method: str, args: tuple | None) -> Any: ...
    def prepare_logged(self, seq: int, method: str, args: tuple) -> bool: ...
    def recover(self, data_dir: str) -> dict[str, Any]: ...
    def snapshot_capture(self, data_dir: str, snapshot_id: int, fresh: bool = False) -> dict[str, int]: ...
    def snapshot_prune(self, data_dir: str, keep: list[int]) -> int: ...
    def snapshot_close(self, data_dir: str) -> None: ...

    # queries
    def count(self, step: Step, now: int) -> int: ...
    def rows(self, step: Step, now: int) -> BitMap: ...
    def ids(self, step: Step, now: int) -> list[str]: ...
    def explain(self, step: Step, now: int) -> dict[str, Any]: ...
    def breakdown(self, step: Step, now: int, by: str, bins: list[int | float] | None) -> list[list[Any]]: ...
    def overlap(self, steps: list[Step], now: int) -> list[list[int]]: ...
    def why(self, profile_id: str, node: Node, now: int, with_events: bool) -> dict[str, Any]: ...
    def lookalike_counts(self, seed: Step | list, within: Step, now: int) -> dict[str, Any]: ...
    def lookalike_sample(self, seed: Step | list, within: Step, features: list[Step], positives: Step,
                         negatives: Step, now: int, token: int) -> dict[str, Any]: ...
    def lookalike_score(self, seed: Step | list, within: Step, features: list[Step], model: dict[str, Any],
                        now: int, token: int) -> dict[str, Any]: ...

    # point reads
    def segment_rows(self, name: str) -> BitMap: ...
    def profile(self, profile_id: str) -> dict[str, Any]: ...
    def segment_info(self, name: str) -> dict[str, Any]: ...
    def segment_infos(self) -> list[dict[str, Any]]: ...
    def membership(self, profile_id: str, names: list[str] | None) -> list[str]: ...
    def snapshot_status(self, snapshot_id: int) -> dict[str, int] | None: ...
    def stats(self) -> dict[str, Any]: ...
    def identity_payloads(self, ids: list[str]) -> dict[str, Any]: ...
    def canonical_ids(self, ids: list[str]) -> list[str | None]: ...
    def alias_hashes(self) -> np.ndarray: ...
    def export_profile(self, profile_id: str) -> dict[str, Any] | None: ...
    def segment_sizes(self) -> dict[str, int]: ...
    def member_columns(self, rows: np.ndarray, attributes: list[str]) -> dict[str, Any]: ...


W, Q, P, S = Access.WRITE, Access.QUERY, Access.POINT, Access.SNAPSHOT

#: Every remote shard method and its access class (the order of ShardAPI).
ACCESS: dict[str, Access] = {
    "sync_view": Access.SYNC, "publish_view": W, "refresh_segments": W, "capture_changes": W, "take_changes": W,
    "apply_logged": W, "recover": W, "snapshot_capture": S, "snapshot_prune": S, "snapshot_close": W,
    "count": Q, "rows": Q, "ids": Q, "explain": Q, "breakdown": Q, "overlap": Q, "why": Q,
    "lookalike_counts": Q, "lookalike_sample": Q, "lookalike_score": Q,
    "segment_rows": P, "profile": P, "segment_info": P, "segment_infos": P, "membership": P,
    "snapshot_status": P, "stats": P, "identity_payloads": P, "canonical_ids": P, "alias_hashes": P,
    "export_profile": P, "segment_sizes": P, "member_columns": P,
    "prepare_logged": Access.PREPARE,
}
#: The names of the remote shard methods.
METHODS: frozenset[str] = frozenset(ACCESS)
#: The methods that only read (queries, point reads and the prepare of a write).
READS: frozenset[str] = frozenset(name for name, access in ACCESS.items()
                                  if access in (Access.QUERY, Access.POINT, Access.PREPARE))

#: Whether two queries may run at once on one shard (the executor's clock and scratch are per call).
QUERIES_OVERLAP = True

#: Public LocalShard methods that are not remote: the methods a write command runs, reached only
#: through ``apply_logged`` (``engine.commands.SHARD_METHODS``), and ``adopt``, which a restore
#: in the shard's own process uses.
LOCAL_ONLY: frozenset[str] = frozenset({"adopt"})

#: The worker's own methods (process workers and Ray actors), for tests and monitoring; point reads.
DIAGNOSTICS: dict[str, str] = {
    "_worker_pid": "this worker's process id",
    "_worker_modules": "the imported modules whose names start with one of the given prefixes",
    "_worker_load": "requests served so far and the seconds spent serving them",
    "_worker_nice": "the OS priority (nice value) of the thread serving this request",
}


def access(method: str) -> Access:
    """The access class of a shard method or diagnostic."""
    return ACCESS.get(method, Access.POINT)


def check(method: str, diagnostics: bool = False) -> str:
    """``method`` if it is a remote shard method (or, with ``diagnostics``, a worker diagnostic);
    AttributeError otherwise."""
    if method in METHODS or (diagnostics and method in DIAGNOSTICS):
        return method
    raise AttributeError(f"{method!r} is not a shard method")
