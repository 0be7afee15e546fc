"""Keys and checksummed values of the LMDB stores.

Keys are big-endian so LMDB's byte order is numeric order. A sealed value starts with the
CRC-32 of its key and body, so a flipped byte, a cut value or a value under the wrong key is
detected. ``crc32`` is zlib's CRC-32, computed by ISA-L (``isal``, carry-less multiplication:
~5 GB/s against zlib's ~0.75 GB/s here) when it is installed; both give the same values.

>>> key = pack_key(7, 0)
>>> unseal(key, seal(key, b"abc"))
b'abc'
>>> unseal(pack_key(8, 0), seal(key, b"abc")) is None
True
"""
from __future__ import annotations

import struct
import zlib
from typing import Callable

try:  # the same CRC-32 as zlib's, several times faster (snapshots checksum every byte they write and read)
    from isal.isal_zlib import crc32 as _isal_crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same values
    _isal_crc32 = None

#: CRC-32 of a bytes-like object, continuing from ``value`` (zlib.crc32's signature and values).
crc32: Callable[..., int] = _isal_crc32 if _isal_crc32 is not None else zlib.crc32

KEY = struct.Struct(">QI")
CRC = struct.Struct(">I")

#: Largest value written (snapshot chunk or log record part): 256 LMDB pages of 4 KiB, minus
#: the overflow page header, so a full chunk fills its pages exactly.
MAX_VALUE = 256 * 4096 - 16


def pack_key(major: int, minor: int) -> bytes:
    """A 12-byte key: (sequence or snapshot id, part or chunk number)."""
    return KEY.pack(major, minor)


def unpack_key(key: bytes) -> tuple[int, int]:
    """The (major, minor) pair of a key made by ``pack_key``."""
    return KEY.unpack(bytes(key))


def delete_current(cursor) -> bool:
    """Delete the LMDB cursor's current entry; True if the cursor still points at a later one."""
    return bool(cursor.delete()) and len(cursor.key()) > 0


def checksum(key: bytes, body) -> int:
    """CRC-32 of ``key`` followed by ``body`` (any bytes-like object)."""
    return crc32(body, crc32(key))


def seal(key: bytes, body: bytes) -> bytes:
    """``body`` prefixed with its checksum under ``key``."""
    return CRC.pack(checksum(key, body)) + body


def unseal(key: bytes, value) -> bytes | None:
    """The body of a sealed value, or None if the value is damaged (bad checksum or too short)."""
    value = bytes(value)
    if len(value) < CRC.size:
        return None
    body = value[CRC.size :]
    return body if CRC.unpack_from(value)[0] == checksum(key, body) else None
