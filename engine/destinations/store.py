"""Where destinations keep what must survive a restart: an LMDB store ``<data_dir>/destinations``.

Databases (keys and values are small; every write is one durable transaction):

- ``defs``: destination name -> its definition (JSON: segment, url, secret, options, created_ms);
- ``acked``: ``name NUL profile id`` -> empty: the members the receiver has acknowledged (the
  receiver's view: every acknowledged ``entered`` adds a key, every acknowledged ``exited`` removes it);
- ``progress``: name -> msgpack ``{"acked": last acknowledged change id, "sent": last change id
  sent, "inflight": [[kind, id], ...] of the batch sent and not yet acknowledged}``;
- ``meta``: ``applied_seq`` -> the last destination command of the write-ahead log applied here.

An engine without a data directory uses ``NullStore`` (nothing is kept).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack

from ..persist.lmdb_env import close_env, open_env

NAMES = ("defs", "acked", "progress", "meta")
APPLIED_SEQ = b"applied_seq"
#: The store is small: its map starts at 1 GiB (it doubles when full).
MAP_SIZE = 1 << 30


@dataclass
class StoredDestination:
    """One destination as the store holds it."""

    definition: dict[str, Any]
    acked: set[str] = field(default_factory=set)
    acked_change_id: int = 0
    sent_change_id: int = 0
    inflight: list[tuple[str, str]] = field(default_factory=list)


def _progress(acked: int, sent: int, inflight: Iterable[tuple[str, str]]) -> bytes:
    return msgpack.packb({"acked": acked, "sent": sent, "inflight": [list(pair) for pair in inflight]})


def _member_key(name: str, profile_id: str) -> bytes:
    return name.encode("utf-8") + b"\0" + profile_id.encode("utf-8")


class NullStore:
    """The store of an engine without a data directory: keeps nothing."""

    applied_seq = 0

    def load(self) -> list[StoredDestination]:
        """Every stored destination (none)."""
        return []

    def put(self, definition: dict[str, Any], seq: int) -> None:
        """Store a new destination (applied as log record ``seq``)."""

    def remove(self, name: str, seq: int) -> None:
        """Forget destination ``name`` and everything kept for it."""

    def sent(self, name: str, acked: int, sent: int, inflight: list[tuple[str, str]]) -> None:
        """Record, before it is sent, the batch ``inflight`` whose last change id is ``sent``."""

    def acknowledged(self, name: str, entered: list[str], exited: list[str], acked: int, sent: int) -> None:
        """The receiver acknowledged the batch in flight: update its view and position."""

    def forget(self, name: str, ids: list[str], acked: int, sent: int, inflight: list[tuple[str, str]]) -> None:
        """Erasure: drop ``ids`` from the receiver's view kept here and store the batch in flight without them."""

    def compact(self) -> dict[str, int] | None:
        """Rewrite the store without its free pages (None: nothing to rewrite)."""
        return None

    def close(self) -> None:
        """Release the store."""


class DestinationStore(NullStore):
    """The LMDB store of a durable engine's destinations (see the module docstring)."""

    def __init__(self, path: str):
        self.env = open_env(path, NAMES, MAP_SIZE)

    @property
    def applied_seq(self) -> int:  # type: ignore[override]
        with self.env.read() as txn:
            raw = txn.get(APPLIED_SEQ, db=self.env.db("meta"))
        return int(raw) if raw else 0

    def names(self) -> set[str]:
        """The names of the stored destinations."""
        with self.env.read() as txn:
            return {bytes(name).decode() for name, _ in txn.cursor(db=self.env.db("defs"))}

    def load(self) -> list[StoredDestination]:
        found: dict[str, StoredDestination] = {}
        with self.env.read() as txn:
            for name, raw in txn.cursor(db=self.env.db("defs")):
                found[name.decode()] = StoredDestination(json.loads(raw))
            for name, raw in txn.cursor(db=self.env.db("progress")):
                stored = found.get(name.decode())
                if stored is not None:
                    progress = msgpack.unpackb(raw)
                    stored.acked_change_id, stored.sent_change_id = progress["acked"], progress["sent"]
                    stored.inflight = [(kind, pid) for kind, pid in progress["inflight"]]
            for key, _ in txn.cursor(db=self.env.db("acked")):
                name, _, profile_id = bytes(key).partition(b"\0")
                stored = found.get(name.decode())
                if stored is not None:
                    stored.acked.add(profile_id.decode())
        return list(found.values())

    def put(self, definition: dict[str, Any], seq: int) -> None:
        name = definition["name"]

        def fill(txn: Any) -> None:
            self._drop_members(txn, name)
            txn.put(name.encode(), json.dumps(definition, sort_keys=True).encode(), db=self.env.db("defs"))
            txn.put(name.encode(), _progress(0, 0, []), db=self.env.db("progress"))
            txn.put(APPLIED_SEQ, str(seq).encode(), db=self.env.db("meta"))

        self.env.write(fill)

    def remove(self, name: str, seq: int) -> None:
        def fill(txn: Any) -> None:
            self._drop_members(txn, name)
            txn.delete(name.encode(), db=self.env.db("defs"))
            txn.delete(name.encode(), db=self.env.db("progress"))
            txn.put(APPLIED_SEQ, str(seq).encode(), db=self.env.db("meta"))

        self.env.write(fill)

    def _drop_members(self, txn: Any, name: str) -> None:
        prefix = name.encode() + b"\0"
        cursor = txn.cursor(db=self.env.db("acked"))
        if cursor.set_range(prefix):
            while cursor.key().startswith(prefix):
                if not cursor.delete():
                    break

    def sent(self, name: str, acked: int, sent: int, inflight: list[tuple[str, str]]) -> None:
        self.env.write(lambda txn: txn.put(name.encode(), _progress(acked, sent, inflight), db=self.env.db("progress")))

    def acknowledged(self, name: str, entered: list[str], exited: list[str], acked: int, sent: int) -> None:
        def fill(txn: Any) -> None:
            members = self.env.db("acked")
            for profile_id in exited:
                txn.delete(_member_key(name, profile_id), db=members)
            for profile_id in entered:
                txn.put(_member_key(name, profile_id), b"", db=members)
            txn.put(name.encode(), _progress(acked, sent, []), db=self.env.db("progress"))

        self.env.write(fill)

    def forget(self, name: str, ids: list[str], acked: int, sent: int, inflight: list[tuple[str, str]]) -> None:
        def fill(txn: Any) -> None:
            members = self.env.db("acked")
            for profile_id in ids:
                txn.delete(_member_key(name, profile_id), db=members)
            txn.put(name.encode(), _progress(acked, sent, inflight), db=self.env.db("progress"))

        self.env.write(fill)

    def compact(self) -> dict[str, int] | None:
        return self.env.compact()

    def close(self) -> None:
        close_env(self.env)
