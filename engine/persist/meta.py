"""The ``meta`` database of the log store: the layout record and the snapshot manifests.

The layout (format, schema, shard count) is written when a data directory is created, checked
on every open, and rewritten when the schema is extended. A manifest describes one complete snapshot: its id, the log sequence
number it includes, and each shard's part (chunk count, bytes, index CRC). It is written last,
so a snapshot without a manifest never counts; only the newest manifest is kept.
"""
from __future__ import annotations

import json
from typing import Any

import msgpack

from ..errors import DataCorruption, DataDirMismatch
from ..schema import Schema
from ..errors import SchemaChangeRefused
from ..schema_change import diff
from .framing import delete_current, seal, unseal

LAYOUT_FORMAT = 1
LAYOUT_KEY = b"layout"
MANIFEST_PREFIX = b"manifest"
#: Set with the manifest of a snapshot that included an erasure, deleted once the log's and the
#: destinations' stores are compacted after it: a crash between the two leaves it for the next open.
COMPACTION_KEY = b"erasure-compaction"
DB = "meta"


def schema_text(schema: Schema) -> str:
    """The canonical JSON text of ``schema`` (what the layout stores and compares)."""
    return json.dumps(schema.to_dict(), sort_keys=True)


def schema_dict(layout: dict[str, Any]) -> dict[str, Any]:
    """The schema (JSON dict) a layout record holds."""
    return json.loads(layout["schema"])


def read_layout(txn: Any, db: Any, where: str) -> dict[str, Any] | None:
    """The layout record (None for a new data directory)."""
    stored = txn.get(LAYOUT_KEY, db=db)
    if stored is None:
        return None
    body = unseal(LAYOUT_KEY, stored)
    if body is None:
        raise DataCorruption(f"data directory {where}: the layout record fails its checksum; refusing to serve")
    return msgpack.unpackb(body)


def layout_record(schema: Schema, shards: int) -> bytes:
    """The sealed layout value of a new data directory."""
    body = msgpack.packb({"format": LAYOUT_FORMAT, "schema": schema_text(schema), "shards": shards})
    return seal(LAYOUT_KEY, body)


def check_layout(layout: dict[str, Any], shards: int | None, where: str) -> None:
    """Refuse a data directory of another format or shard count (if given)."""
    if layout["format"] != LAYOUT_FORMAT:
        raise DataDirMismatch(f"data directory {where} has format {layout['format']}; this engine reads "
                              f"format {LAYOUT_FORMAT}")
    if shards is not None and layout["shards"] != shards:
        raise DataDirMismatch(f"data directory {where} holds {layout['shards']} shards; open it with "
                              f"shards={layout['shards']} (re-sharding a data directory is not supported)")


def widest_schema(layout: dict[str, Any], schema: Schema, where: str) -> Schema:
    """Of the layout's schema and ``schema``, the one that extends the other (DataDirMismatch if neither does).

    A data directory opened with a schema that adds names to its own takes the additions (the
    engine logs them as a schema change); one opened with an older schema keeps its own.
    """
    if layout["schema"] == schema_text(schema):
        return schema
    stored = Schema.from_dict(json.loads(layout["schema"]))
    try:
        diff(stored, schema)
        return schema
    except SchemaChangeRefused as wider_given:
        try:
            diff(schema, stored)
            return stored
        except SchemaChangeRefused:
            raise DataDirMismatch(f"data directory {where} was written with a schema that this one does not extend "
                                  f"({wider_given}); open it with the schema it was written with (stored in "
                                  f"{where}/schema.json) or one that only adds to it: {layout['schema']}") from None


def manifest_key(snapshot_id: int) -> bytes:
    """Meta key of a manifest (ordered by snapshot id)."""
    return MANIFEST_PREFIX + snapshot_id.to_bytes(8, "big")


def latest_manifest(txn: Any, db: Any, where: str) -> dict[str, Any] | None:
    """The newest manifest (None if no snapshot was ever completed)."""
    cursor = txn.cursor(db=db)
    found = cursor.prev() if cursor.set_range(MANIFEST_PREFIX + b"\xff" * 9) else cursor.last()
    if not found or not bytes(cursor.key()).startswith(MANIFEST_PREFIX):
        return None
    key = bytes(cursor.key())
    body = unseal(key, cursor.value())
    if body is None:
        raise DataCorruption(f"data directory {where}: the manifest of snapshot "
                             f"{int.from_bytes(key[len(MANIFEST_PREFIX):], 'big')} fails its checksum; "
                             f"refusing to serve")
    return msgpack.unpackb(body)


def mark_compaction(txn: Any, db: Any, pending: bool) -> None:
    """Record that the stores still need their compaction after an erasure's snapshot (or no longer do)."""
    if pending:
        txn.put(COMPACTION_KEY, b"1", db=db)
    else:
        txn.delete(COMPACTION_KEY, db=db)


def compaction_pending(txn: Any, db: Any) -> bool:
    """True if an erasure's snapshot was committed and the compaction after it did not finish."""
    return txn.get(COMPACTION_KEY, db=db) is not None


def put_manifest(txn: Any, db: Any, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` and delete the older ones."""
    key = manifest_key(manifest["id"])
    txn.put(key, seal(key, msgpack.packb(manifest)), db=db)
    cursor = txn.cursor(db=db)
    more = cursor.set_range(MANIFEST_PREFIX)
    while more and bytes(cursor.key()) < key:
        more = delete_current(cursor)
