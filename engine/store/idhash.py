"""The two hashes of an id: blake2b-64 and the id map's table hash.

blake2b-64 (RFC 7693, 8-byte digest, read little-endian) is part of the contract: SAMPLE, BUCKET,
shard routing and lookalike samples use it. The table hash (``word_hash``: 8-byte words folded by a
multiply and xor-shift, then the splitmix64 finaliser) only places ids in the id map's table; it
costs a fraction of blake2b, so the map recomputes it from the ids' bytes instead of keeping it.

>>> buf, offsets = pack_ids(["u1", "é"])
>>> packed_hashes(buf, offsets).tolist() == id_hashes([b"u1", "é".encode()]).tolist()
True
"""
from __future__ import annotations

from hashlib import blake2b
from typing import Sequence

import numba
import numpy as np


def id_hashes(encoded: Sequence[bytes]) -> np.ndarray:
    """blake2b-64 (little-endian) of each encoded id, as uint64."""
    digests = b"".join([blake2b(item, digest_size=8).digest() for item in encoded])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _pack(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(item) for item in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def pack_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of ``ids`` in one buffer (uint8) and their offsets (int64, len(ids) + 1).

    All-ASCII batches (the usual case) are encoded in one piece, without a bytes object per id.
    """
    joined = "".join(ids)
    data = joined.encode("utf-8")
    if len(data) != len(joined):  # some id is not ASCII: its UTF-8 length differs from its length
        return _pack([item.encode("utf-8") for item in ids])
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
    return np.frombuffer(data, dtype=np.uint8), offsets


_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
                0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179], dtype=np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
], dtype=np.int64)


@numba.njit(inline="always")
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@numba.njit(inline="always")
def _mix(a, b, c, d, x, y):
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@numba.njit(cache=True, nogil=True)
def blake2b64(buf, offsets, iv, sigma):
    """blake2b with an 8-byte digest (RFC 7693) of each ``buf[offsets[i]:offsets[i+1]]``, read little-endian."""
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.uint64)
    h = np.empty(8, dtype=np.uint64)
    m = np.empty(16, dtype=np.uint64)
    for i in range(n):
        start = offsets[i]
        length = offsets[i + 1] - start
        for k in range(8):
            h[k] = iv[k]
        h[0] ^= np.uint64(0x01010008)  # digest length 8, no key, fanout 1, depth 1
        done = 0
        while True:
            take = min(length - done, 128)
            last = done + take == length
            for w in range(16):
                m[w] = np.uint64(0)
            for k in range(take):
                m[k >> 3] |= np.uint64(buf[start + done + k]) << np.uint64((k & 7) * 8)
            done += take
            v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
            v8, v9, v10, v11 = iv[0], iv[1], iv[2], iv[3]
            v12 = iv[4] ^ np.uint64(done)  # byte counter (ids are far below 2**64 bytes)
            v13 = iv[5]
            v14 = ~iv[6] if last else iv[6]
            v15 = iv[7]
            for r in range(12):
                s = sigma[r % 10]
                v0, v4, v8, v12 = _mix(v0, v4, v8, v12, m[s[0]], m[s[1]])
                v1, v5, v9, v13 = _mix(v1, v5, v9, v13, m[s[2]], m[s[3]])
                v2, v6, v10, v14 = _mix(v2, v6, v10, v14, m[s[4]], m[s[5]])
                v3, v7, v11, v15 = _mix(v3, v7, v11, v15, m[s[6]], m[s[7]])
                v0, v5, v10, v15 = _mix(v0, v5, v10, v15, m[s[8]], m[s[9]])
                v1, v6, v11, v12 = _mix(v1, v6, v11, v12, m[s[10]], m[s[11]])
                v2, v7, v8, v13 = _mix(v2, v7, v8, v13, m[s[12]], m[s[13]])
                v3, v4, v9, v14 = _mix(v3, v4, v9, v14, m[s[14]], m[s[15]])
            h[0] ^= v0 ^ v8
            h[1] ^= v1 ^ v9
            h[2] ^= v2 ^ v10
            h[3] ^= v3 ^ v11
            h[4] ^= v4 ^ v12
            h[5] ^= v5 ^ v13
            h[6] ^= v6 ^ v14
            h[7] ^= v7 ^ v15
            if last:
                break
        out[i] = h[0]
    return out


def packed_hashes(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """blake2b-64 (little-endian, as ``id_hashes``) of each packed id."""
    return blake2b64(buf, offsets, _IV, _SIGMA)


#: The fold and finaliser constants of the table hash (splitmix64's).
_FOLD = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_MASK64 = 2**64 - 1


@numba.njit(inline="always")
def buffer_word_hash(buf, start, length):
    """The table hash of ``buf[start:start + length]``: each 8-byte little-endian word folded in by a
    multiply and xor-shift (a bijection of the word), then the splitmix64 finaliser."""
    h = np.uint64(length) * np.uint64(_FOLD)
    for at in range(0, length, 8):
        word = np.uint64(0)
        for k in range(min(8, length - at)):
            word |= np.uint64(buf[start + at + k]) << np.uint64(8 * k)
        h = (h ^ word) * np.uint64(_FOLD)
        h ^= h >> np.uint64(32)
    h = (h ^ (h >> np.uint64(30))) * np.uint64(_MUL1)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(_MUL2)
    return h ^ (h >> np.uint64(31))


def word_hash(key: bytes) -> int:
    """``buffer_word_hash`` of one id's bytes, in Python (the point-lookup path).

    >>> word_hash(b"u00000001") == int(table_hashes(np.frombuffer(b"u00000001", np.uint8), np.array([0, 9]))[0])
    True
    """
    h = (len(key) * _FOLD) & _MASK64
    for at in range(0, len(key), 8):
        h = ((h ^ int.from_bytes(key[at:at + 8], "little")) * _FOLD) & _MASK64
        h ^= h >> 32
    h = ((h ^ (h >> 30)) * _MUL1) & _MASK64
    h = ((h ^ (h >> 27)) * _MUL2) & _MASK64
    return h ^ (h >> 31)


@numba.njit(cache=True, nogil=True)
def table_hashes(buf, offsets):
    """The table hash of each packed id (uint64)."""
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        out[i] = buffer_word_hash(buf, np.int64(offsets[i]), np.int64(offsets[i + 1]) - np.int64(offsets[i]))
    return out
