"""The identity oracle (tests/oracle_identity.py) with retention per event type (contract section 6).

At clock ``now`` an event of a type with retention ``r`` exists only if ``ts > now - r``;
``expire(now)`` deletes the others for good.

>>> schema = {"attributes": {}, "events": {"v": {"properties": {}, "retention": "1s"}}, "consents": []}
>>> store = RetentionStore(schema)
>>> store.track([{"id": "a", "event": "v", "ts": 0}, {"id": "a", "event": "v", "ts": 1500}])
2
>>> store.expire(1000), store.expire(2600), [e.ts for e in store.events["a"]]
(1, 1, [])
"""
from __future__ import annotations

from typing import Any, Mapping

from engine.schema import parse_duration

try:
    from oracle_identity import IdentityStore
except ImportError:  # tests/ imported as a package
    from tests.oracle_identity import IdentityStore


class RetentionStore(IdentityStore):
    """IdentityStore plus retention: events past it do not exist for a query, ``expire`` deletes them."""

    def __init__(self, schema: Mapping[str, Any]):
        super().__init__(schema)
        self.retention = {name: parse_duration(d["retention"], name) for name, d in schema["events"].items()
                          if d.get("retention")}

    def exists(self, event: str, ts: int, now: int) -> bool:
        """Whether an event of type ``event`` at ``ts`` exists at clock ``now``."""
        return event not in self.retention or ts > now - self.retention[event]

    def _did(self, node: Any, pid: str, now: int) -> bool:
        return self._with_existing(pid, now, lambda: super(RetentionStore, self)._did(node, pid, now))

    def _sequence(self, node: Any, pid: str, now: int) -> bool:
        return self._with_existing(pid, now, lambda: super(RetentionStore, self)._sequence(node, pid, now))

    def _with_existing(self, pid: str, now: int, evaluate: Any) -> bool:
        """``evaluate()`` with the profile's events reduced to those that exist at ``now``."""
        held = self.events[pid]
        self.events[pid] = [e for e in held if self.exists(e.event, e.ts, now)]
        try:
            return evaluate()
        finally:
            self.events[pid] = held

    def expire(self, now: int) -> int:
        """Delete the events past their type's retention at ``now``; returns how many."""
        deleted = 0
        for pid, events in self.events.items():
            kept = [e for e in events if self.exists(e.event, e.ts, now)]
            deleted += len(events) - len(kept)
            self.events[pid] = kept
        return deleted

    def export(self, profile_id: str, now: int | None = None) -> dict[str, Any] | None:
        """The export at clock ``now`` (events past retention left out)."""
        record = super().export(profile_id)
        if record is not None and now is not None:
            record["events"] = [e for e in record["events"] if self.exists(e["event"], e["ts"], now)]
        return record
