"""Snapshot format 4: a msgpack header plus raw buffers, read without executing anything.

A part of a snapshot is a list of frames (``chunk_store`` cuts them into checksummed chunks):

- frame 0, the **header**: msgpack of a map with the keys ``format`` (4), ``schema`` (the
  schema's JSON dict), ``applied_seq``, ``arrays`` (one ``[dtype, shape]`` per array buffer),
  ``bitmaps`` (the byte length of every bitmap) and ``state`` (a tree of maps, lists, strings and
  numbers in which an array or a bitmap is its index into those tables);
- frames 1..n: one per array, its bytes (C order, the dtype says the byte order);
- frame n + 1: every bitmap's portable Roaring serialisation, back to back.

``StateWriter`` builds the tree and the frames (store classes call ``array`` and ``bitmap`` from
their ``to_state``); ``StateReader`` gives them back (from their ``from_state``): ``msgpack``
without ext types, ``np.frombuffer`` with a dtype from ``ARRAY_DTYPES`` and
``BitMap.deserialize`` (CRoaring's safe deserialiser) are the only decoders, so a crafted part can
make loading fail but cannot name anything to run. Malformed content is ``DataCorruption``.

An array is copied when captured (into the ``CaptureArena`` when given), since writes change
arrays in place, unless the caller declares it immutable (event runs): then it is referenced.
"""
from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np
from pyroaring import BitMap

from ..errors import DataCorruption
from .arena import CaptureArena

FORMAT = 4
#: The dtypes an array buffer may have (little-endian and single-byte types, as NumPy spells them).
ARRAY_DTYPES = frozenset({"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8"})


class Capture:
    """The frames of a captured part: ``frames[i]`` is a list of bytes-like pieces (frame 0: the header)."""

    def __init__(self, frames: list[list[Any]], copied: int, referenced: int, copy_s: float = 0.0,
                 in_place: bool = False):
        self.frames = frames
        self.copied = copied
        self.referenced = referenced
        self.copy_s = copy_s
        self.in_place = in_place  # some array that writes change is referenced: write before the next write

    @property
    def lengths(self) -> list[int]:
        """The byte length of every frame."""
        return [sum(memoryview(piece).nbytes for piece in pieces) for pieces in self.frames]

    @property
    def nbytes(self) -> int:
        """Bytes of all frames."""
        return sum(self.lengths)

    def joined(self) -> list[Any]:
        """One contiguous buffer per frame (copies multi-piece frames; for tests and small states)."""
        return [pieces[0] if len(pieces) == 1 else b"".join(memoryview(p).cast("B") for p in pieces)
                for pieces in self.frames]


class StateWriter:
    """Collects the buffers of a state tree as frames (see the module docstring)."""

    def __init__(self, arena: CaptureArena | None = None, copy: bool = True, budget: int | None = None):
        self.arena = arena
        self.copy = copy
        self.budget = budget  # bytes of arrays it may copy (None: any); past it, arrays are referenced
        self.in_place = False
        self.arrays: list[list[Any]] = []
        self.array_frames: list[list[Any]] = []
        self.bitmap_lengths: list[int] = []
        self.bitmap_pieces: list[bytes] = []
        self.copied = 0
        self.referenced = 0
        self.copy_s = 0.0

    def array(self, values: np.ndarray, immutable: bool = False) -> int:
        """Add an array; returns its index. ``immutable``: never changed in place, so referenced, not copied."""
        dtype = values.dtype.str
        if dtype not in ARRAY_DTYPES:
            raise TypeError(f"an array of dtype {dtype} cannot be stored in a snapshot")
        if not values.flags.c_contiguous:
            values = np.ascontiguousarray(values)
        raw = values.reshape(-1).view(np.uint8)
        over_budget = self.budget is not None and self.copied + raw.nbytes > self.budget
        if immutable or not self.copy or over_budget:
            piece: Any = raw
            self.referenced += raw.nbytes
            self.in_place |= over_budget and not immutable
        else:
            began = time.perf_counter()
            piece = np.empty(raw.nbytes, dtype=np.uint8) if self.arena is None else self.arena.take(raw.nbytes)
            np.copyto(piece, raw)
            self.copied += raw.nbytes
            self.copy_s += time.perf_counter() - began
        self.arrays.append([dtype, list(values.shape)])
        self.array_frames.append([piece])
        return len(self.arrays) - 1

    def bitmap(self, bitmap: BitMap) -> int:
        """Add a bitmap (its portable serialisation, taken now); returns its index."""
        data = bitmap.serialize()
        self.bitmap_pieces.append(data)
        self.bitmap_lengths.append(len(data))
        self.copied += len(data)
        return len(self.bitmap_lengths) - 1

    def bitmaps(self, bitmaps: list[BitMap]) -> list[int]:
        """Add several bitmaps; returns their indexes."""
        return [self.bitmap(bitmap) for bitmap in bitmaps]

    def capture(self, schema: dict[str, Any], applied_seq: int, state: dict[str, Any]) -> Capture:
        """The frames of ``state`` (whose buffers were added to this writer)."""
        header = msgpack.packb({"format": FORMAT, "schema": schema, "applied_seq": applied_seq,
                                "arrays": self.arrays, "bitmaps": self.bitmap_lengths, "state": state})
        self.copied += len(header)
        frames = [[header], *self.array_frames, self.bitmap_pieces]
        return Capture(frames, self.copied, self.referenced, self.copy_s, self.in_place)


class StateReader:
    """The header and buffers of a stored part (fresh writable frames, one per buffer)."""

    def __init__(self, frames: list[Any], where: str):
        self.where = where
        if not frames:
            raise DataCorruption(f"{where}: the snapshot has no header")
        try:
            header = msgpack.unpackb(memoryview(frames[0]).cast("B"), raw=False, use_list=True, strict_map_key=True,
                                     ext_hook=_refuse_ext)
        except Exception as exc:
            raise DataCorruption(f"{where}: the snapshot header is not valid msgpack ({exc})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise DataCorruption(f"{where}: the snapshot header is not a format-{FORMAT} header")
        self.header = header
        arrays, lengths = header.get("arrays"), header.get("bitmaps")
        if not isinstance(arrays, list) or not isinstance(lengths, list) or len(frames) != len(arrays) + 2:
            raise DataCorruption(f"{where}: the snapshot's buffer tables do not match its frames")
        self.arrays = arrays
        self.frames = frames
        self.bitmap_frame = np.frombuffer(frames[-1], dtype=np.uint8)
        if not all(type(length) is int and length >= 0 for length in lengths) or \
                sum(lengths) != len(self.bitmap_frame):
            raise DataCorruption(f"{where}: the snapshot's bitmap table does not match its bitmap frame")
        self.bitmap_offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).tolist()

    @property
    def schema(self) -> dict[str, Any]:
        """The schema the part was written with (its JSON dict)."""
        return self.header.get("schema")

    @property
    def applied_seq(self) -> int:
        """The last log record the part includes."""
        return self.header.get("applied_seq")

    @property
    def state(self) -> dict[str, Any]:
        """The state tree."""
        return self.header.get("state")

    def array(self, index: int) -> np.ndarray:
        """Array ``index`` (a view of its fresh frame: writable, owned by nothing else)."""
        entry = self.arrays[_index(index, len(self.arrays), self.where, "array")]
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] not in ARRAY_DTYPES \
                or not isinstance(entry[1], list) or not all(type(n) is int and n >= 0 for n in entry[1]):
            raise DataCorruption(f"{self.where}: array {index} has a bad table entry {entry!r}")
        dtype, shape = np.dtype(entry[0]), tuple(entry[1])
        raw = np.frombuffer(self.frames[index + 1], dtype=np.uint8)
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise DataCorruption(f"{self.where}: array {index} holds {len(raw)} bytes, not {dtype} {list(shape)}")
        return raw.view(dtype).reshape(shape)

    def bitmap(self, index: int, rows: int | None = None) -> BitMap:
        """Bitmap ``index``; with ``rows``, every member must be below it."""
        at = _index(index, len(self.bitmap_offsets) - 1, self.where, "bitmap")
        data = self.bitmap_frame[self.bitmap_offsets[at] : self.bitmap_offsets[at + 1]]
        try:
            bitmap = BitMap.deserialize(data)
        except Exception as exc:
            raise DataCorruption(f"{self.where}: bitmap {index} is not a portable Roaring bitmap ({exc})") from None
        if rows is not None and bitmap and bitmap.max() >= rows:
            raise DataCorruption(f"{self.where}: bitmap {index} holds row {bitmap.max()} of {rows}")
        return bitmap

    def bitmaps(self, indexes: list[int], rows: int | None = None) -> list[BitMap]:
        """Bitmaps ``indexes`` (members below ``rows`` if given)."""
        return [self.bitmap(index, rows) for index in indexes]

    def column(self, index: int, dtypes: tuple[type, ...], rows: int) -> np.ndarray:
        """Array ``index``, which must be a column of ``rows`` values of one of ``dtypes``."""
        values = self.array(index)
        if values.dtype not in [np.dtype(dtype) for dtype in dtypes] or values.shape != (rows,):
            raise DataCorruption(f"{self.where}: array {index} is {values.dtype} {list(values.shape)}, not a column "
                                 f"of {rows} rows")
        return values


def _index(index: Any, size: int, where: str, kind: str) -> int:
    if type(index) is not int or not 0 <= index < size:
        raise DataCorruption(f"{where}: the snapshot names {kind} {index!r}, which it does not hold")
    return index


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"it holds a msgpack extension type ({code}), which format {FORMAT} never uses")
