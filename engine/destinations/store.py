"""Where destinations keep what must survive a restart: an LMDB store ``<data_dir>/destinations``.

Databases (keys and values are small; every write is one durable transaction):

- ``defs``: destination name -> its definition (JSON: segment, url, secret, options, created_ms);
- ``acked``: ``name NUL profile id`` -> empty: the members the receiver has acknowledged (the
  receiver's view: every acknowledged ``entered`` adds a key, every acknowledged ``exited`` removes it);
- ``unsure``: ``name NUL profile id`` -> empty: the ids whose state at the receiver is unknown: every
  id of a batch is added before the batch is sent and removed when it is acknowledged (so after a
  crash these are the ids the receiver may hold differently from ``acked``);
- ``progress``: name -> msgpack ``{"acked": last acknowledged change id, "sent": last change id sent}``;
- ``meta``: ``applied_seq`` -> the last destination command of the write-ahead log applied here.

An engine without a data directory uses ``NullStore`` (nothing is kept).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack

from ..persist.lmdb_env import close_env, open_env

NAMES = ("defs", "acked", "unsure", "progress", "meta")
APPLIED_SEQ = b"applied_seq"
#: The store is small: its map starts at 1 GiB (it doubles when full).
MAP_SIZE = 1 << 30


@dataclass
class StoredDestination:
    """One destination as the store holds it."""

    definition: dict[str, Any]
    acked: set[str] = field(default_factory=set)
    unsure: set[str] = field(default_factory=set)
    acked_change_id: int = 0
    sent_change_id: int = 0


def _progress(acked: int, sent: int) -> bytes:
    return msgpack.packb({"acked": acked, "sent": sent})


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

    def sent(self, name: str, acked: int, sent: int, ids: Iterable[str]) -> None:
        """Record, before it is sent, a batch of the changes of ``ids`` whose last change id is ``sent``."""

    def acknowledged(self, name: str, entered: list[str], exited: list[str], acked: int, sent: int) -> None:
        """The receiver acknowledged the batch in flight (of the ids ``entered`` + ``exited``, by their final
        state): update its view and position."""

    def forget(self, name: str, ids: list[str]) -> None:
        """Erasure: drop ``ids`` from the receiver's view and from the unsure ids kept here."""

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
            for db in ("acked", "unsure"):
                for key, _ in txn.cursor(db=self.env.db(db)):
                    name, _, profile_id = bytes(key).partition(b"\0")
                    stored = found.get(name.decode())
                    if stored is not None:
                        getattr(stored, db).add(profile_id.decode())
        return list(found.values())

    def put(self, definition: dict[str, Any], seq: int) -> None:
        name = definition["name"]

        def fill(txn: Any) -> None:
            self._drop_members(txn, name)
            txn.put(name.encode(), json.dumps(definition, sort_keys=True).encode(), db=self.env.db("defs"))
            txn.put(name.encode(), _progress(0, 0), db=self.env.db("progress"))
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
        for db in ("acked", "unsure"):
            cursor = txn.cursor(db=self.env.db(db))
            if cursor.set_range(prefix):
                while cursor.key().startswith(prefix):
                    if not cursor.delete():
                        break

    def sent(self, name: str, acked: int, sent: int, ids: Iterable[str]) -> None:
        def fill(txn: Any) -> None:
            unsure = self.env.db("unsure")
            for profile_id in ids:
                txn.put(_member_key(name, profile_id), b"", db=unsure)
            txn.put(name.encode(), _progress(acked, sent), db=self.env.db("progress"))

        self.env.write(fill)

    def acknowledged(self, name: str, entered: list[str], exited: list[str], acked: int, sent: int) -> None:
        def fill(txn: Any) -> None:
            members, unsure = self.env.db("acked"), self.env.db("unsure")
            for profile_id in exited:
                key = _member_key(name, profile_id)
                txn.delete(key, db=members)
                txn.delete(key, db=unsure)
            for profile_id in entered:
                key = _member_key(name, profile_id)
                txn.put(key, b"", db=members)
                txn.delete(key, db=unsure)
            txn.put(name.encode(), _progress(acked, sent), db=self.env.db("progress"))

        self.env.write(fill)

    def forget(self, name: str, ids: list[str]) -> None:
        def fill(txn: Any) -> None:
            members, unsure = self.env.db("acked"), self.env.db("unsure")
            for profile_id in ids:
                key = _member_key(name, profile_id)
                txn.delete(key, db=members)
                txn.delete(key, db=unsure)

        self.env.write(fill)

    def compact(self) -> dict[str, int] | None:
        return self.env.compact()

    def close(self) -> None:
        close_env(self.env)
