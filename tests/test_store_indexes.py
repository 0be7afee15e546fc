"""Unit tests of the id map and the attribute bitmap indexes."""
from __future__ import annotations

import numpy as np
import pytest

from engine.columns import CategoryColumn, TagsColumn, ValueColumn, column_from_values
from engine.persist.state_io import StateReader, StateWriter
from engine.store import idmap as idmap_module
from engine.store.growable import GrowableArray
from engine.store.idmap import IdMap, id_hashes
from engine.store.indexes import BoolIndex, CategoryIndex, TagsIndex
from engine.store.numeric import NumericIndex


def test_idmap_inserts_in_order_and_finds_existing_ids() -> None:
    idmap = IdMap()
    rows, before = idmap.lookup_or_insert(["a", "b", "a", "ünï"])
    assert rows.tolist() == [0, 1, 0, 2] and before == 0
    rows, before = idmap.lookup_or_insert(["ünï", "c"])
    assert rows.tolist() == [2, 3] and before == 3
    assert idmap.lookup(["c", "missing", "a"]).tolist() == [3, -1, 0]
    assert idmap.ids_of(np.array([3, 0, 2])) == ["c", "a", "ünï"]


def test_idmap_survives_many_rehashes() -> None:
    idmap = IdMap()
    ids = [f"user-{i}" for i in range(50_000)]
    for start in range(0, len(ids), 7_000):
        idmap.lookup_or_insert(ids[start : start + 7_000])
    assert idmap.lookup(ids[::997]).tolist() == list(range(0, 50_000, 997))
    assert idmap.ids_of(np.arange(50_000))[12345] == "user-12345"
    writer = StateWriter()
    state = idmap.to_state(writer)
    frames = [np.frombuffer(bytearray(frame), dtype=np.uint8) for frame in writer.capture({}, 0, state).joined()]
    rebuilt = IdMap.from_state(StateReader(frames, "a test"), state)
    assert rebuilt.lookup(["user-49999", "nope"]).tolist() == [49_999, -1]
    assert rebuilt.lookup_or_insert(["user-50000", "user-3"])[0].tolist() == [50_000, 3]


def snapshot_round_trip(part, restore):
    """``restore(reader, state)`` of ``part.to_state`` through real snapshot frames."""
    writer = StateWriter()
    state = part.to_state(writer)
    frames = [np.frombuffer(bytearray(frame), dtype=np.uint8) for frame in writer.capture({}, 0, state).joined()]
    return restore(StateReader(frames, "a test"), state)


def test_idmap_offsets_are_uint32_until_the_buffer_passes_the_limit(monkeypatch) -> None:
    idmap = IdMap()
    idmap.lookup_or_insert(["abc", "de"])
    assert idmap.offsets.data.dtype == np.uint32
    monkeypatch.setattr(idmap_module, "MAX_NARROW_OFFSET", 10)  # stands for 4 GiB
    rows, _ = idmap.lookup_or_insert(["fghij", "abc", "klmnop"])
    assert (idmap.offsets.data.dtype, rows.tolist()) == (np.int64, [2, 0, 3])
    assert idmap.offsets.view().tolist() == [0, 3, 5, 10, 16]
    assert idmap.lookup(["klmnop", "de", "x"]).tolist() == [3, 1, -1] and idmap.id_of(2) == "fghij"
    rebuilt = snapshot_round_trip(idmap, lambda reader, state: IdMap.from_state(reader, state))
    assert rebuilt.ids_of(np.arange(4)) == ["abc", "de", "fghij", "klmnop"]


def test_idmap_forgets_rows_through_rehashes_and_snapshots() -> None:
    idmap = IdMap()
    ids = [f"u{i:08d}" for i in range(3_000)] + ["ünïcödé-" * 5, "x"]
    idmap.lookup_or_insert(ids)
    idmap.forget(np.array([1, 3001, 1, 7]))
    assert idmap.lookup(["u00000001", "x", "u00000007", "u00000002"]).tolist() == [-1, -1, -1, 2]
    assert (idmap.lookup_one("u00000001"), idmap.lookup_one("u00000002"), idmap.buried) == (-1, 2, 3)
    assert idmap.id_of(1) == "\x00" * 9 and idmap.lookup(["\x00" * 9]).tolist() == [-1]
    rows, before = idmap.lookup_or_insert(["x", "u00000001", "u00000003"])
    assert (rows.tolist(), before) == ([3002, 3003, 3], 3002)
    with pytest.raises(IndexError, match="no row 3004 in an id map of 3004 rows"):
        idmap.forget(np.array([0, 3004]))
    idmap.lookup_or_insert([f"v{i}" for i in range(10_000)])  # grows the table: tombstones are dropped
    assert (idmap.buried, len(idmap.table), idmap.table.dtype) == (0, 17_339, np.uint32)
    restored = snapshot_round_trip(idmap, lambda reader, state: IdMap.from_state(reader, state))
    for m in (idmap, restored):
        assert m.lookup(["u00000001", "x", "u00000007", "ünïcödé-" * 5, "v9999"]).tolist() == [3003, 3002, -1, 3000, 13_003]
        assert list(m.forgotten) == [1, 7, 3001]
        expected = id_hashes([i.encode() for i in ids[:9]]).tolist()
        expected[1] = expected[7] = 0
        assert m.row_hashes(0, 9).tolist() == expected
        assert m.hashes_of(np.array([8, 7, 0])).tolist() == [expected[8], 0, expected[0]]
        assert m.row_hashes()[3003] == id_hashes([b"u00000001"])[0] and len(m.row_hashes(13_000)) == 4


def test_idmap_lookups_agree_on_every_path() -> None:
    ids = ["", "a", "é", "u00000001", "u0000000", "12345678", "123456789", "x" * 17, "日本語のid", "\x00"]
    idmap = IdMap()
    rows, _ = idmap.lookup_or_insert(ids)
    assert rows.tolist() == list(range(len(ids)))
    assert [idmap.lookup_one(i) for i in ids + ["b", "1234567"]] == list(range(len(ids))) + [-1, -1]
    assert idmap.lookup(ids[::-1] + ["b"]).tolist() == list(range(len(ids)))[::-1] + [-1]
    assert idmap.ids_of(np.arange(len(ids))) == ids


def test_idmap_table_is_sized_for_one_large_batch_and_widens_past_the_narrow_row_bits(monkeypatch) -> None:
    idmap = IdMap()
    ids = [f"u{i:08d}" for i in range(300_000)]
    idmap.lookup_or_insert(ids)
    assert (len(idmap.table), idmap.row_bits, idmap.table.dtype) == (400_001, 19, np.uint32)
    monkeypatch.setattr(idmap_module, "MAX_NARROW_ROW_BITS", 19)  # stands for 28 (268M slots)
    idmap.lookup_or_insert([f"w{i}" for i in range(100_000)])
    assert (len(idmap.table), idmap.row_bits, idmap.table.dtype) == (600_001, 20, np.uint64)
    idmap.forget(np.array([5]))
    assert idmap.lookup(["u00000004", "u00000005", "w99999"]).tolist() == [4, -1, 399_999]
    assert idmap.lookup_one("w0") == 300_000 and idmap.lookup_one("u00000005") == -1
    restored = snapshot_round_trip(idmap, lambda reader, state: IdMap.from_state(reader, state))
    assert restored.table.dtype == np.uint64 and restored.lookup(["w5", "u00000005"]).tolist() == [300_005, -1]


def test_idmap_rows_of_low_hashes_hold_the_smallest_hashes_as_rows_arrive() -> None:
    idmap = IdMap()
    idmap.lookup_or_insert([f"p{i}" for i in range(30_000)])
    rows, hashes = idmap.low_hash_rows(1_000)  # 30,000 // 4,000 = 7: below 2**62
    every = idmap.row_hashes()
    assert rows.tolist() == np.flatnonzero(every < 2**62).tolist() and hashes.tolist() == every[rows].tolist()
    idmap.lookup_or_insert([f"q{i}" for i in range(40_000)])  # 70,000 // 4,000 = 17: below 2**60
    rows, hashes = idmap.low_hash_rows(1_000)
    every = idmap.row_hashes()
    assert rows.tolist() == np.flatnonzero(every < 2**60).tolist() and hashes.tolist() == every[rows].tolist()
    subset = np.arange(0, 70_000, 3)
    inside = np.intersect1d(rows, subset)
    assert len(inside) >= 1_000
    assert sorted(every[inside])[:1_000] == sorted(every[subset])[:1_000]
    assert len(idmap.low_hash_rows(100_000)[0]) == 70_000  # fewer rows than 4 x count: every row
    idmap.forget(rows[:1])
    assert idmap.low_hash_rows(1_000)[1][0] == 0  # a forgotten row's hash is FORGOTTEN


def legacy_idmap_state(writer: StateWriter, ids: list[str], forgotten: list[int]) -> dict:
    """The map's state in the layout with a blake2b hash per row and an int32 table (0 = forgotten)."""
    buf, offsets = idmap_module.pack_ids(ids)
    hashes = id_hashes([i.encode() for i in ids])
    hashes[forgotten] = 0
    buffer = buf.copy()
    for row in forgotten:
        buffer[offsets[row]:offsets[row + 1]] = 0
    return {"size": len(ids), "hashes": writer.array(hashes), "offsets": writer.array(offsets.astype(np.uint32)),
            "buffer": writer.array(buffer), "table": writer.array(np.full(1024, -1, dtype=np.int32))}


def test_idmap_reads_the_layout_with_a_hash_per_row() -> None:
    ids = [f"id-{i}" for i in range(2_000)]
    writer = StateWriter()
    state = legacy_idmap_state(writer, ids, [3, 10])
    frames = [np.frombuffer(bytearray(frame), dtype=np.uint8) for frame in writer.capture({}, 0, state).joined()]
    idmap = IdMap.from_state(StateReader(frames, "a test"), state)
    assert idmap.lookup(["id-0", "id-3", "id-10", "id-1999", "nope"]).tolist() == [0, -1, -1, 1999, -1]
    assert (list(idmap.forgotten), len(idmap.table)) == ([3, 10], 2_667)
    assert idmap.lookup_or_insert(["id-3"])[0].tolist() == [2_000]
    pickled = IdMap.__new__(IdMap)  # a pickle of the same layout (segengine migrate)
    pickled.__setstate__({"size": 2, "hashes": GrowableArray.adopt(id_hashes([b"a", b"b"]), 0),
                          "offsets": GrowableArray.adopt(np.array([0, 1, 2], dtype=np.uint32), 0),
                          "buffer": GrowableArray.adopt(np.frombuffer(b"ab", dtype=np.uint8).copy(), 0),
                          "table": np.full(1024, -1, dtype=np.int32)})
    assert pickled.lookup(["b", "a", "c"]).tolist() == [1, 0, -1] and not pickled.forgotten


def test_idmap_refuses_a_table_that_does_not_match_its_ids() -> None:
    idmap = IdMap()
    idmap.lookup_or_insert([f"r{i}" for i in range(100)])
    writer = StateWriter()
    state = idmap.to_state(writer)
    frames = [bytearray(frame) for frame in writer.capture({}, 0, state).joined()]
    table = np.frombuffer(frames[state["table"] + 1], dtype=np.uint32)
    table[np.flatnonzero(table)[0]] = 0  # a row lost from the table
    with pytest.raises(ValueError, match="the id map's table does not agree with its ids"):
        IdMap.from_state(StateReader([np.frombuffer(f, dtype=np.uint8) for f in frames], "a test"), state)


def test_code_columns_take_the_narrowest_type_and_widen() -> None:
    category, tags = CategoryIndex(), TagsIndex()
    category.grow(300)
    tags.grow(300)
    category.assign(np.arange(3), column_from_values("category", ["FR", None, "BE"]))
    tags.assign(np.arange(2), column_from_values("tags", [("a",), ()]))
    assert (category.codes.data.dtype, tags.column.data.dtype) == (np.int8, np.int8)
    labels = [f"c{i}" for i in range(300)]
    category.assign(np.arange(300), column_from_values("category", labels))
    tags.assign(np.arange(300), column_from_values("tags", [(f"t{i % 20}", f"t{i % 17}") for i in range(300)]))
    assert (category.codes.data.dtype, tags.column.data.dtype) == (np.int16, np.int16)
    assert [category.value(r) for r in (0, 2, 299)] == ["c0", "c2", "c299"] and list(category.eq("FR")) == []
    assert list(category.eq("c299")) == [299] and tags.value(299) == sorted({"t19", f"t{299 % 17}"})
    restored = snapshot_round_trip(category, lambda reader, state: CategoryIndex.from_state(reader, state, 300))
    assert restored.codes.data.dtype == np.int16 and restored.value(150) == "c150"


def test_id_hash_is_little_endian_blake2b_64() -> None:
    from hashlib import blake2b

    expected = int.from_bytes(blake2b(b"u1", digest_size=8).digest(), "little")
    assert int(id_hashes([b"u1"])[0]) == expected


def test_category_index_moves_rows_and_clears() -> None:
    idx = CategoryIndex()
    idx.grow(4)
    idx.assign(np.array([0, 1, 2, 3]), column_from_values("category", ["FR", "BE", "FR", None]))
    assert list(idx.eq("FR")) == [0, 2] and list(idx.notnull) == [0, 1, 2]
    idx.assign(np.array([2, 1]), column_from_values("category", ["BE", None]))
    assert list(idx.eq("FR")) == [0] and list(idx.eq("BE")) == [2]
    assert list(idx.notnull) == [0, 2]
    assert list(idx.compare(">", "C")) == [0] and list(idx.between("A", "C")) == [2]
    assert idx.value(1) is None and idx.value(2) == "BE"


def test_bool_index() -> None:
    idx = BoolIndex()
    idx.grow(3)
    idx.assign(np.array([0, 1, 2]), column_from_values("bool", [True, False, None]))
    assert list(idx.eq(True)) == [0] and list(idx.eq(False)) == [1] and list(idx.notnull) == [0, 1]
    idx.assign(np.array([0]), column_from_values("bool", [False]))
    assert list(idx.eq(True)) == [] and list(idx.eq(False)) == [0, 1]


def test_tags_index_empty_list_is_not_null_and_updates_move_tags() -> None:
    idx = TagsIndex()
    idx.grow(3)
    idx.assign(np.array([0, 1, 2]), column_from_values("tags", [("a", "b"), (), None]))
    assert list(idx.has("a")) == [0] and list(idx.notnull) == [0, 1]
    idx.assign(np.array([0, 2]), column_from_values("tags", [("b", "c"), ("a",)]))
    assert list(idx.has("a")) == [2] and list(idx.has("b")) == [0] and list(idx.has("c")) == [0]
    assert idx.value(0) == ["b", "c"] and idx.value(1) == [] and idx.value(2) == ["a"]


def test_tags_index_with_more_than_63_labels() -> None:
    idx = TagsIndex()
    idx.grow(2)
    labels = [f"t{i}" for i in range(100)]
    idx.assign(np.array([0, 1]), TagsColumn(np.array([0, 100, 101]), np.r_[np.arange(100), [99]].astype(np.int32),
                                            labels, np.array([True, True])))
    assert list(idx.has("t99")) == [0, 1] and list(idx.has("t5")) == [0]


@pytest.mark.parametrize("kind", ["int", "float", "timestamp"])
def test_numeric_range_matches_a_scan_across_rebins(kind: str) -> None:
    rng = np.random.default_rng(7)
    idx = NumericIndex(kind)
    size = 5_000
    idx.grow(size)
    truth = np.full(size, np.nan)
    for _ in range(6):
        rows = np.unique(rng.integers(0, size, 2_000))
        values = rng.integers(-50, 50, len(rows)).astype(np.float64)
        if kind == "float":
            values = values / 4
        valid = rng.random(len(rows)) > 0.1
        idx.assign(rows, ValueColumn(values, valid))
        truth[rows] = np.where(valid, values, np.nan)
        for lo, hi in [(-10, 10), (-3.5, 2.25), (0, 0), (49, 100), (-100, -49), (5, 4)]:
            expected = np.flatnonzero((truth >= lo) & (truth <= hi)).tolist()
            assert list(idx.range(lo, hi)) == expected
            found = idx.notnull & __import__("pyroaring").BitMap(range(0, size, 3))
            assert list(idx.range(lo, hi, found=found) & found) == [r for r in expected if r % 3 == 0]
        assert list(idx.range(None, 0, hi_open=True)) == np.flatnonzero(truth < 0).tolist()
        assert list(idx.range(0, None, lo_open=True)) == np.flatnonzero(truth > 0).tolist()


def test_int_column_with_float_bounds_compares_numerically() -> None:
    idx = NumericIndex("int")
    idx.grow(4)
    idx.assign(np.arange(4), ValueColumn(np.array([1, 2, 3, 4]), np.ones(4, bool)))
    assert list(idx.range(2.5, None, lo_open=True)) == [2, 3]
    assert list(idx.range(None, 2.5, hi_open=True)) == [0, 1]
    assert list(idx.range(2.5, 2.5)) == []
    assert list(idx.range(3.0, 3.0)) == [2]


@pytest.mark.parametrize("kind", ["float", "int", "timestamp"])
def test_numeric_range_and_count_with_fine_bins_match_a_scan(kind: str) -> None:
    """Coarse + fine bins (no per-value bitmaps): ranges and counts within found sets, through updates."""
    rng = np.random.default_rng(11)
    n = 20_000
    index = NumericIndex(kind)
    index.grow(n)

    def draw(size: int) -> np.ndarray:
        if kind == "float":
            return np.round(rng.lognormal(3, 1, size), 2)
        return rng.integers(-10**6, 10**6, size) if kind == "int" else rng.integers(0, 10**12, size)

    values = draw(n)
    valid = rng.random(n) > 0.05
    index.assign(np.arange(n), ValueColumn(values, valid))
    assert index.fine is not None and len(index.fine) > 100 and index.by_value is None
    for _ in range(3):  # updates move rows between fine bins; some values clear
        rows = np.unique(rng.integers(0, n, 3000))
        new, ok = draw(len(rows)), rng.random(len(rows)) > 0.1
        index.assign(rows, ValueColumn(new, ok))
        values[rows], valid[rows] = new, ok
    from pyroaring import BitMap
    sample = np.sort(values[valid])
    asked = []
    for _ in range(60):
        lo, hi = sorted(rng.choice(sample, 2))
        lo_open, hi_open = bool(rng.integers(2)), bool(rng.integers(2))
        found = BitMap(np.flatnonzero(rng.random(n) < rng.choice([0.02, 0.3, 1.0])).astype(np.uint32))
        inside = valid & ((values > lo) if lo_open else (values >= lo)) & ((values < hi) if hi_open else (values <= hi))
        expected = set(np.flatnonzero(inside).tolist())
        got = index.range(lo, hi, lo_open, hi_open)
        assert set(got) == expected
        assert set(index.range(lo, hi, lo_open, hi_open, found=found)) == expected & set(found)
        assert index.count_range(lo, hi, lo_open, hi_open, found) == len(expected & set(found))
        assert set(index.range(lo, None, lo_open, found=found)) == \
            set(np.flatnonzero(valid & ((values > lo) if lo_open else (values >= lo))).tolist()) & set(found)
        asked.append((lo, hi, lo_open, hi_open))
    # ranges asked twice are cached; writes keep the cached bitmaps exact
    for _ in range(3):
        rows = np.unique(rng.integers(0, n, 2000))
        new, ok = draw(len(rows)), rng.random(len(rows)) > 0.1
        index.assign(rows, ValueColumn(new, ok))
        values[rows], valid[rows] = new, ok
        for lo, hi, lo_open, hi_open in asked[-10:]:
            inside = valid & ((values > lo) if lo_open else (values >= lo)) & ((values < hi) if hi_open else (values <= hi))
            assert set(index.range(lo, hi, lo_open, hi_open)) == set(np.flatnonzero(inside).tolist())
            found = BitMap(np.flatnonzero(rng.random(n) < 0.5).astype(np.uint32))
            assert index.count_range(lo, hi, lo_open, hi_open, found) == len(set(np.flatnonzero(inside)) & set(found))
