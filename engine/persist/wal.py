"""The write-ahead log: one record per write batch in the LMDB database ``wal`` of the log store.

A record is keyed by (sequence number, part) and its value is sealed (CRC-32 over key and
value): ``crc | parts (u32) | kind length (u8) | kind | body piece``. A body larger than one
LMDB value (about 1 MB) is split over consecutive parts written in the same transaction.
Sequence numbers increase by one from record to record, across truncations.

Reading verifies every record. LMDB commits are atomic, so a damaged record can only come
from outside (a disk, a copy, a hand edit): a damaged or incomplete *last* record is a torn
tail and is cut back to the last valid record; a damaged record, a gap or a missing part
followed by any later record is corruption in the middle, refused with ``DataCorruption``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import DataCorruption
from .framing import CRC, MAX_VALUE, crc32, delete_current, pack_key, unpack_key, unseal
from .lmdb_env import LmdbEnv

HEADER = struct.Struct(">IB")  # number of parts, length of the kind name
DB = "wal"


@dataclass(frozen=True)
class LogRecord:
    """One verified log record."""

    seq: int
    kind: str
    body: bytes
    size: int  # bytes stored (values of all parts)


def put_record(txn: Any, db: Any, seq: int, kind: str, body: bytes) -> int:
    """Write record ``seq`` into an open write transaction; returns the bytes stored."""
    name = kind.encode("utf-8")
    room = MAX_VALUE - CRC.size - HEADER.size - len(name)
    parts = max(1, -(-len(body) // room))
    view = memoryview(body)
    stored = 0
    for part in range(parts):
        key = pack_key(seq, part)
        value = _seal(key, HEADER.pack(parts, len(name)) + name, view[part * room : (part + 1) * room])
        txn.put(key, value, db=db)
        stored += len(value)
    return stored


def _seal(key: bytes, head: bytes, piece: memoryview) -> bytes:
    crc = crc32(piece, crc32(head, crc32(key)))
    return CRC.pack(crc) + head + piece


class TornTail(Exception):
    """A damaged record (its sequence number and the reason)."""

    def __init__(self, seq: int, reason: str):
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


class LogScan:
    """Iterates the verified records with ``after < seq <= upto`` inside a read transaction.

    A damaged last record ends the iteration and is left in ``torn`` (cut it with ``cut_from``);
    damage followed by any later record raises ``DataCorruption``.
    """

    def __init__(self, txn: Any, db: Any, where: str, after: int, upto: int | None = None):
        self.txn, self.db, self.where = txn, db, where
        self.after, self.upto = after, upto
        self.torn: TornTail | None = None
        self.last = after
        self.records = 0
        self.bytes = 0

    def __iter__(self) -> Iterator[LogRecord]:
        expected = self.after + 1
        cursor = self.txn.cursor(db=self.db)
        more = cursor.set_range(pack_key(self.after + 1, 0))
        while more:
            seq = unpack_key(cursor.key())[0]
            if self.upto is not None and seq > self.upto:
                return
            values: list[tuple[int, bytes, bytes]] = []
            while more and unpack_key(cursor.key())[0] == seq:
                key = bytes(cursor.key())
                values.append((unpack_key(key)[1], key, bytes(cursor.value())))
                more = cursor.next()
            try:
                if seq != expected:
                    raise TornTail(expected, f"records {expected}..{seq - 1} are missing")
                record = _assemble(seq, values)
            except TornTail as damage:
                if more or damage.seq != seq:
                    later = "later records follow" if more else f"record {seq} follows"
                    raise DataCorruption(
                        f"the write-ahead log in {self.where} is corrupted in the middle: record {damage.seq}: "
                        f"{damage.reason}, and {later}, so it is not a torn tail. Refusing to serve; restore "
                        f"the data directory from a backup") from None
                self.torn = damage
                return
            self.last, self.records, self.bytes = seq, self.records + 1, self.bytes + record.size
            yield record
            expected = seq + 1


class WriteAheadLog:
    """Reading, cutting and truncating the log (appends happen in ``pipeline.WritePipeline``)."""

    @property
    def db(self) -> Any:
        """The log database (its handle follows a compacted environment)."""
        return self.env.db(DB)

    def __init__(self, env: LmdbEnv):
        self.env = env

    def scan(self, txn: Any, after: int, upto: int | None = None) -> LogScan:
        """The records after ``after`` (up to ``upto``) in ``txn`` (see LogScan)."""
        return LogScan(txn, self.db, self.env.path, after, upto)

    def first_seq(self, txn: Any) -> int:
        """The lowest sequence number present (0 for an empty log)."""
        cursor = txn.cursor(db=self.db)
        return unpack_key(cursor.key())[0] if cursor.first() else 0

    def cut_from(self, seq: int) -> int:
        """Delete every record with sequence number >= ``seq``; returns how many keys were deleted."""
        def cut(txn: Any) -> int:
            cursor = txn.cursor(db=self.db)
            deleted = 0
            more = cursor.set_range(pack_key(seq, 0))
            while more:
                more = delete_current(cursor)
                deleted += 1
            return deleted

        return self.env.write(cut)

    def truncate(self, txn: Any, upto: int) -> int:
        """Delete every record with sequence number <= ``upto`` inside ``txn``; returns keys deleted."""
        cursor = txn.cursor(db=self.db)
        deleted = 0
        more = cursor.first()
        while more and unpack_key(cursor.key())[0] <= upto:
            more = delete_current(cursor)
            deleted += 1
        return deleted


def _assemble(seq: int, values: list[tuple[int, bytes, bytes]]) -> LogRecord:
    """The record made of ``values`` (part number, key, sealed value) or TornTail if damaged."""
    pieces: list[bytes] = []
    kind = None
    parts = None
    size = 0
    for expected, (part, key, value) in enumerate(values):
        size += len(value)
        if part != expected:
            raise TornTail(seq, f"part {expected} is missing")
        body = unseal(key, value)
        if body is None or len(body) < HEADER.size:
            raise TornTail(seq, f"part {part} fails its checksum")
        count, name_len = HEADER.unpack_from(body)
        name = body[HEADER.size : HEADER.size + name_len].decode("utf-8", "replace")
        if parts is None:
            parts, kind = count, name
        elif (count, name) != (parts, kind):
            raise TornTail(seq, f"part {part} disagrees with part 0")
        pieces.append(body[HEADER.size + name_len :])
    if parts is None or len(values) != parts:
        raise TornTail(seq, f"only {len(values)} of its {parts} parts are present")
    return LogRecord(seq, kind or "", b"".join(pieces), size)
