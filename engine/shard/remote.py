"""RemoteShard: the ShardAPI methods of a handle whose shard runs elsewhere, each one remote call.

ProcessShard and RayShard derive from it and implement ``call``; tests/test_shard_api.py checks
that these methods are exactly ShardAPI's, with its signatures.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pyroaring import BitMap

from ..plan.steps import Step
from ..query.ast import Node


class RemoteShard:
    """A shard handle: every ShardAPI method sends one ``call`` (see engine/shard/api.py)."""

    shard_id: int

    def call(self, method: str, *args: Any) -> Any:
        """Run shard method (or worker diagnostic) ``method(*args)`` remotely and return its answer."""
        raise NotImplementedError

    # writes
    def refresh_segments(self, now: int) -> None:
        return self.call("refresh_segments", now)

    def sync_view(self) -> None:
        return self.call("sync_view")

    def publish_view(self) -> None:
        return self.call("publish_view")

    def capture_changes(self, on: bool) -> None:
        return self.call("capture_changes", on)

    def take_changes(self) -> dict[str, Any]:
        return self.call("take_changes")

    def apply_logged(self, seq: int, method: str, args: tuple | None) -> Any:
        return self.call("apply_logged", seq, method, args)

    def prepare_logged(self, seq: int, method: str, args: tuple) -> bool:
        return self.call("prepare_logged", seq, method, args)

    def recover(self, data_dir: str) -> dict[str, Any]:
        return self.call("recover", data_dir)

    def snapshot_capture(self, data_dir: str, snapshot_id: int, fresh: bool = False) -> dict[str, int]:
        return self.call("snapshot_capture", data_dir, snapshot_id, fresh)

    def snapshot_prune(self, data_dir: str, keep: list[int]) -> int:
        return self.call("snapshot_prune", data_dir, keep)

    def snapshot_close(self, data_dir: str) -> None:
        return self.call("snapshot_close", data_dir)

    # queries
    def count(self, step: Step, now: int) -> int:
        return self.call("count", step, now)

    def rows(self, step: Step, now: int) -> BitMap:
        return self.call("rows", step, now)

    def ids(self, step: Step, now: int) -> list[str]:
        return self.call("ids", step, now)

    def explain(self, step: Step, now: int) -> dict[str, Any]:
        return self.call("explain", step, now)

    def breakdown(self, step: Step, now: int, by: str, bins: list[int | float] | None) -> list[list[Any]]:
        return self.call("breakdown", step, now, by, bins)

    def overlap(self, steps: list[Step], now: int) -> list[list[int]]:
        return self.call("overlap", steps, now)

    def why(self, profile_id: str, node: Node, now: int, with_events: bool) -> dict[str, Any]:
        return self.call("why", profile_id, node, now, with_events)

    def lookalike_counts(self, seed: Step | list, within: Step, now: int) -> dict[str, Any]:
        return self.call("lookalike_counts", seed, within, now)

    def lookalike_sample(self, seed: Step | list, within: Step, features: list[Step], positives: Step,
                         negatives: Step, now: int, token: int) -> dict[str, Any]:
        return self.call("lookalike_sample", seed, within, features, positives, negatives, now, token)

    def lookalike_score(self, seed: Step | list, within: Step, features: list[Step], model: dict[str, Any],
                        now: int, token: int) -> dict[str, Any]:
        return self.call("lookalike_score", seed, within, features, model, now, token)

    # point reads
    def segment_rows(self, name: str) -> BitMap:
        return self.call("segment_rows", name)

    def profile(self, profile_id: str) -> dict[str, Any]:
        return self.call("profile", profile_id)

    def segment_info(self, name: str) -> dict[str, Any]:
        return self.call("segment_info", name)

    def segment_infos(self) -> list[dict[str, Any]]:
        return self.call("segment_infos")

    def membership(self, profile_id: str, names: list[str] | None) -> list[str]:
        return self.call("membership", profile_id, names)

    def snapshot_status(self, snapshot_id: int) -> dict[str, int] | None:
        return self.call("snapshot_status", snapshot_id)

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def identity_payloads(self, ids: list[str]) -> dict[str, Any]:
        return self.call("identity_payloads", ids)

    def canonical_ids(self, ids: list[str]) -> list[str | None]:
        return self.call("canonical_ids", ids)

    def alias_hashes(self) -> np.ndarray:
        return self.call("alias_hashes")

    def export_profile(self, profile_id: str) -> dict[str, Any] | None:
        return self.call("export_profile", profile_id)

    def segment_sizes(self) -> dict[str, int]:
        return self.call("segment_sizes")

    def member_columns(self, rows: np.ndarray, attributes: list[str]) -> dict[str, Any]:
        return self.call("member_columns", rows, attributes)
