"""Reference engines for the benchmarks: DuckDB (in-memory SQL) and a NumPy/numba column scan.

Both are loaded from the same generated ``Dataset`` (loaders.generator) that segengine loads,
and both are written independently of segengine's code, so a count that differs between the
three points at a bug in one of them.

Profile rows are numbered 0..N-1 in the order of ``dataset.profiles``; events refer to them by
that number (``pid``).

DuckDB load route: neither pyarrow nor pandas is installed, but DuckDB's Python client can scan
a ``dict`` of 1-D NumPy arrays directly (a "replacement scan": the dict is named in the SQL
text). Nulls cannot be passed that way (masked arrays are refused inside a dict), so every
nullable column is passed as values + validity and turned into NULL by a ``CASE`` in the
``CREATE TABLE ... AS SELECT``. Categories travel as int codes and become VARCHAR through a list
literal of labels (as fast as passing object arrays of strings, and without a Python object per
row). Tags become a ``VARCHAR[]`` built by a ``GROUP BY`` over the flattened (row, tag) pairs.
The events table is created ``ORDER BY type, ts`` so DuckDB's zone maps prune time windows,
the same advantage the NumPy baseline and segengine get from time-ordered events.
"""
from __future__ import annotations

import hashlib
import operator
import os
import time
from dataclasses import dataclass, field

import duckdb
import numba
import numpy as np

from engine.columns import CategoryColumn, EventBatch, TagsColumn, ValueColumn

DAY_MS = 86_400_000
NO_TIME = np.iinfo(np.int64).min
OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def profile_hashes(ids: list[str]) -> np.ndarray:
    """The contract's SAMPLE hash h of each id: blake2b-64 of its UTF-8 bytes, little-endian, as uint64."""
    digests = b"".join([hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest() for i in ids])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def event_pids(batch: EventBatch, row_of: dict[str, int]) -> np.ndarray:
    """Profile row numbers of the events of ``batch`` (every id must be a generated profile)."""
    return np.fromiter(map(row_of.__getitem__, batch.ids), dtype=np.int32, count=len(batch.ids))


# ---------------------------------------------------------------------------------------------
# DuckDB
# ---------------------------------------------------------------------------------------------


def _sql_list(labels: list[str]) -> str:
    return "[" + ", ".join("'" + label.replace("'", "''") + "'" for label in labels) + "]"


def _label_expr(code: str, labels: list[str]) -> str:
    """SQL turning an int code column into its label (-1 -> NULL)."""
    return f"CASE WHEN {code} >= 0 THEN {_sql_list(labels)}[{code} + 1] END"


class DuckDBBaseline:
    """Tables ``profiles`` and ``events`` in an in-memory DuckDB database.

    profiles(pid INTEGER, country VARCHAR, age BIGINT, cart_value DOUBLE, vip BOOLEAN,
             interests VARCHAR[], signup_at BIGINT (epoch ms), consent_<purpose> BOOLEAN ..., h UBIGINT)
    events(pid INTEGER, type VARCHAR, ts BIGINT (epoch ms), <every property of every type>)
    """

    def __init__(self, dataset=None, threads: int | None = None, hashes: np.ndarray | None = None,
                 pids: list[np.ndarray] | None = None, path: str = ":memory:"):
        self.con = duckdb.connect(path)
        self.con.execute(f"SET threads = {threads or os.cpu_count() or 1}")
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute("SET enable_progress_bar = false")
        self.profile_seconds = self.event_seconds = 0.0
        self.loaded = 0  # profiles so far: the pid of the next chunk's first profile
        if dataset is not None:
            self.append(dataset, hashes, pids)

    def append(self, dataset, hashes: np.ndarray | None = None, pids: list[np.ndarray] | None = None) -> None:
        """Load ``dataset`` (the whole data set, or the next chunk of one: see loaders.chunks), its
        profiles numbered from ``self.loaded`` on; events reference profiles of the same chunk."""
        first = self.loaded == 0
        started = time.perf_counter()
        self._load_profiles(dataset, hashes, first)
        self.profile_seconds += time.perf_counter() - started
        started = time.perf_counter()
        self._load_events(dataset, pids, first)
        self.event_seconds += time.perf_counter() - started
        self.loaded += len(dataset.profiles)

    def _store(self, table: str, select: str, create: bool, order: str = "") -> None:
        """CREATE ``table`` from ``select`` (sorted by ``order``), or append to it."""
        if create:
            self.con.execute(f"CREATE TABLE {table} AS {select}{' ORDER BY ' + order if order else ''}")
        else:
            self.con.execute(f"INSERT INTO {table} {select}")

    def _load_profiles(self, dataset, hashes: np.ndarray | None, create: bool = True) -> None:
        batch = dataset.profiles
        n = len(batch)
        arrays: dict[str, np.ndarray] = {"pid": np.arange(self.loaded, self.loaded + n, dtype=np.int32)}
        selects = ["pid"]
        tags_sql: list[tuple[str, TagsColumn]] = []
        for name, attr in dataset.schema["attributes"].items():
            col = batch.columns.get(name)
            kind = attr["type"]
            sql_type = {"int": "BIGINT", "timestamp": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN",
                        "category": "VARCHAR", "tags": "VARCHAR[]"}[kind]
            if col is None:
                selects.append(f"NULL::{sql_type} AS \"{name}\"")
            elif isinstance(col, CategoryColumn):
                arrays[f"{name}__code"] = np.asarray(col.codes, dtype=np.int32)
                selects.append(f"{_label_expr(name + '__code', col.labels)} AS \"{name}\"")
            elif isinstance(col, TagsColumn):
                arrays[f"{name}__valid"] = np.asarray(col.valid, dtype=bool)
                tags_sql.append((name, col))
                selects.append(f"CASE WHEN {name}__valid THEN coalesce(t_{name}.tags, []::VARCHAR[]) END AS \"{name}\"")
            else:
                assert isinstance(col, ValueColumn)
                arrays[f"{name}__v"] = np.asarray(col.values)
                arrays[f"{name}__valid"] = np.asarray(col.valid, dtype=bool)
                selects.append(f"CASE WHEN {name}__valid THEN {name}__v::{sql_type} END AS \"{name}\"")
        for purpose in dataset.schema["consents"]:
            flags = batch.consents.get(purpose)
            arrays[f"consent_{purpose}"] = (np.zeros(n, dtype=bool) if flags is None
                                            else np.asarray(flags, dtype=bool))
            selects.append(f"consent_{purpose}")
        arrays["h"] = profile_hashes(batch.ids) if hashes is None else hashes
        selects.append("h")
        joins = []
        for name, col in tags_sql:
            flat = {"row": np.repeat(np.arange(self.loaded, self.loaded + n, dtype=np.int32), np.diff(col.offsets)),
                    "code": np.asarray(col.values, dtype=np.int32)}
            self.con.register(f"flat_{name}", flat)
            self.con.execute(f"CREATE TEMP TABLE t_{name} AS SELECT row, list(DISTINCT "
                             f"{_sql_list(col.labels)}[code + 1]) AS tags FROM flat_{name} GROUP BY row")
            self.con.unregister(f"flat_{name}")
            joins.append(f"LEFT JOIN t_{name} ON t_{name}.row = src.pid")
        self.con.register("src", arrays)
        self._store("profiles", f"SELECT {', '.join(selects)} FROM src {' '.join(joins)}", create)
        self.con.unregister("src")
        for name, _ in tags_sql:
            self.con.execute(f"DROP TABLE t_{name}")

    def _load_events(self, dataset, pids: list[np.ndarray] | None, create: bool = True) -> None:
        """One CREATE TABLE ... ORDER BY type, ts over the concatenation of every batch (or an INSERT)."""
        props: dict[str, str] = {}
        for definition in dataset.schema["events"].values():
            for prop, kind in definition["properties"].items():
                props.setdefault(prop, kind)
        batches = [b for b in dataset.events if len(b)]
        if pids is None:
            row_of = {pid: row for row, pid in enumerate(dataset.profiles.ids, self.loaded)}
            pids = [event_pids(b, row_of) for b in dataset.events]
            del row_of
        pid_parts = [p for b, p in zip(dataset.events, pids) if len(b)]
        type_names = sorted({b.event for b in batches} | set(dataset.schema["events"]))
        type_code = {name: code for code, name in enumerate(type_names)}
        cat = lambda x: np.concatenate(x) if x else np.empty(0)  # noqa: E731
        arrays: dict[str, np.ndarray] = {
            "pid": cat([np.asarray(p, np.int32) for p in pid_parts]).astype(np.int32),
            "type_code": cat([np.full(len(b), type_code[b.event], np.int16) for b in batches]).astype(np.int16),
            "ts": cat([np.asarray(b.ts, np.int64) for b in batches]).astype(np.int64),
        }
        selects = ["pid", f"{_sql_list(type_names)}[type_code + 1] AS type", "ts"]
        for prop, kind in props.items():
            sql_type = {"int": "BIGINT", "timestamp": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN",
                        "category": "VARCHAR"}[kind]
            if kind == "category":
                code_of: dict[str, int] = {}
                chunks = []
                for b in batches:
                    col = b.props.get(prop)
                    if col is None:
                        chunks.append(np.full(len(b), -1, np.int32))
                        continue
                    mapping = np.array([code_of.setdefault(l, len(code_of)) for l in col.labels] + [-1], np.int32)
                    chunks.append(mapping[np.where(col.codes < 0, len(col.labels), col.codes)])
                arrays[f"{prop}__code"] = cat(chunks).astype(np.int32)
                selects.append(f"{_label_expr(prop + '__code', list(code_of))} AS \"{prop}\"")
            else:
                dtype = {"float": np.float64, "bool": np.bool_}.get(kind, np.int64)
                values, valid = [], []
                for b in batches:
                    col = b.props.get(prop)
                    values.append(np.zeros(len(b), dtype) if col is None else np.asarray(col.values).astype(dtype))
                    valid.append(np.zeros(len(b), bool) if col is None else np.asarray(col.valid, bool))
                arrays[f"{prop}__v"] = cat(values).astype(dtype)
                arrays[f"{prop}__valid"] = cat(valid).astype(bool)
                selects.append(f"CASE WHEN {prop}__valid THEN {prop}__v::{sql_type} END AS \"{prop}\"")
        self.con.register("ev_src", arrays)
        self._store("events", f"SELECT {', '.join(selects)} FROM ev_src", create, order="type, ts")
        self.con.unregister("ev_src")

    def count(self, sql: str, now: int) -> int:
        """Run a count query (``$now`` = the query clock) and return its single value."""
        params = {"now": now} if "$now" in sql else None
        return int(self.con.execute(sql, params).fetchone()[0])

    def close(self) -> None:
        self.con.close()


# ---------------------------------------------------------------------------------------------
# NumPy / numba column scan
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _count_rows(pids, n):
    out = np.zeros(n, dtype=np.int32)
    for i in range(len(pids)):
        out[pids[i]] += 1
    return out


@numba.njit(cache=True)
def _count_rows_kept(pids, keep, n):
    out = np.zeros(n, dtype=np.int32)
    for i in range(len(pids)):
        if keep[i]:
            out[pids[i]] += 1
    return out


@numba.njit(cache=True)
def _latest(pids, ts, n, no_time):
    out = np.full(n, no_time, dtype=np.int64)
    for i in range(len(pids)):
        if ts[i] > out[pids[i]]:
            out[pids[i]] = ts[i]
    return out


@numba.njit(cache=True)
def _sequence_mask(pids, ts, step, k, span, n):
    """Per profile, whether events (sorted by pid, then ts; ``step`` = the step index each event can
    serve, -1 none) hold steps 0..k-1 in strictly increasing time within ``span``: every first event
    is tried, each later step takes the earliest fitting event."""
    out = np.zeros(n, dtype=np.bool_)
    i = 0
    while i < len(pids):
        j = i
        while j < len(pids) and pids[j] == pids[i]:
            j += 1
        for s in range(i, j):
            if step[s] != 0:
                continue
            t = ts[s]
            want = 1
            for q in range(s + 1, j):
                if ts[q] - ts[s] > span:
                    break
                if step[q] == want and ts[q] > t:
                    t = ts[q]
                    want += 1
                    if want == k:
                        break
            if want == k:
                out[pids[i]] = True
                break
        i = j
    return out


@numba.njit(cache=True)
def _splitmix_sample(hashes, seed, threshold):
    out = np.empty(len(hashes), dtype=np.bool_)
    golden = np.uint64(0x9E3779B97F4A7C15)
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    ten_k = np.uint64(10000)
    limit = np.uint64(threshold)
    for i in range(len(hashes)):
        x = (hashes[i] ^ seed) + golden
        x = (x ^ (x >> np.uint64(30))) * m1
        x = (x ^ (x >> np.uint64(27))) * m2
        x = x ^ (x >> np.uint64(31))
        out[i] = x % ten_k < limit
    return out


@dataclass
class EventArrays:
    """The events of one type, sorted by ts: pid, ts, and per property values + validity.

    Category properties are int32 codes (-1 = null) with ``labels[prop]``.
    """

    pid: np.ndarray
    ts: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)

    def window(self, lo: int, hi: int) -> slice:
        """The index range of events with lo <= ts <= hi."""
        return slice(int(np.searchsorted(self.ts, lo, "left")), int(np.searchsorted(self.ts, hi, "right")))

    def cat_in(self, prop: str, part: slice, *labels: str) -> np.ndarray:
        """Events of ``part`` whose category property is one of ``labels`` (null -> False)."""
        codes = self.values[prop][part]
        lut = np.array([label in labels for label in self.labels[prop]] + [False], dtype=bool)
        return lut[np.where(codes >= 0, codes, len(self.labels[prop]))]

    def cmp(self, prop: str, part: slice, op: str, value) -> np.ndarray:
        """Events of ``part`` whose numeric property ``op`` value holds (null -> False)."""
        return self.valid[prop][part] & OPS[op](self.values[prop][part], value)

    def is_null(self, prop: str, part: slice) -> np.ndarray:
        if prop in self.valid:
            return ~self.valid[prop][part]
        return self.values[prop][part] < 0


class NumpyBaseline:
    """Profiles as one array per attribute, events per type as ts-sorted arrays.

    The ``scan`` functions of benchmarks/queries.py combine these helpers into boolean masks
    over the N profiles; event counting uses small numba loops.
    """

    def __init__(self, dataset, hashes: np.ndarray | None = None, pids: list[np.ndarray] | None = None):
        started = time.perf_counter()
        batch = dataset.profiles
        self.n = n = len(batch)
        self.kinds = {name: a["type"] for name, a in dataset.schema["attributes"].items()}
        self.codes: dict[str, np.ndarray] = {}
        self.labels: dict[str, list[str]] = {}
        self.values: dict[str, np.ndarray] = {}
        self.valid: dict[str, np.ndarray] = {}
        self.tag_bits: dict[str, np.ndarray] = {}
        for name, kind in self.kinds.items():
            col = batch.columns.get(name)
            if isinstance(col, CategoryColumn):
                self.codes[name], self.labels[name] = np.asarray(col.codes, np.int32), list(col.labels)
            elif isinstance(col, TagsColumn):
                if len(col.labels) > 64:
                    raise ValueError("the NumPy baseline packs tags into 64-bit masks")
                bits = np.zeros(n, dtype=np.uint64)
                owners = np.repeat(np.arange(n), np.diff(col.offsets))
                np.bitwise_or.at(bits, owners, np.left_shift(np.uint64(1), col.values.astype(np.uint64)))
                self.tag_bits[name], self.labels[name], self.valid[name] = bits, list(col.labels), np.asarray(col.valid, bool)
            elif isinstance(col, ValueColumn):
                self.values[name], self.valid[name] = np.asarray(col.values), np.asarray(col.valid, bool)
            elif kind == "category":
                self.codes[name], self.labels[name] = np.full(n, -1, np.int32), []
            else:
                self.values[name], self.valid[name] = np.zeros(n), np.zeros(n, bool)
        self.consents = {p: np.asarray(batch.consents.get(p, np.zeros(n, bool)), bool) for p in dataset.schema["consents"]}
        self.hashes = profile_hashes(batch.ids) if hashes is None else hashes
        self.profile_seconds = time.perf_counter() - started

        started = time.perf_counter()
        row_of = None
        self.events: dict[str, EventArrays] = {}
        parts: dict[str, list[tuple[EventBatch, np.ndarray]]] = {}
        for position, ev in enumerate(dataset.events):
            if pids is None:
                if row_of is None:
                    row_of = {pid: row for row, pid in enumerate(batch.ids)}
                batch_pids = event_pids(ev, row_of)
            else:
                batch_pids = pids[position]
            parts.setdefault(ev.event, []).append((ev, batch_pids))
        for name, definition in dataset.schema["events"].items():
            self.events[name] = self._event_arrays(definition["properties"], parts.get(name, []))
        self.event_seconds = time.perf_counter() - started
        self._latest_cache: dict[tuple[str, int], np.ndarray] = {}

    @staticmethod
    def _event_arrays(props: dict[str, str], parts: list[tuple[EventBatch, np.ndarray]]) -> EventArrays:
        ts = np.concatenate([np.asarray(b.ts, np.int64) for b, _ in parts]) if parts else np.empty(0, np.int64)
        order = np.argsort(ts, kind="stable")
        pid = np.concatenate([p for _, p in parts])[order] if parts else np.empty(0, np.int32)
        arrays = EventArrays(pid, ts[order])
        for prop, kind in props.items():
            if kind == "category":
                labels: list[str] = []
                code_of: dict[str, int] = {}
                chunks = []
                for b, _ in parts:
                    col = b.props.get(prop)
                    if col is None:
                        chunks.append(np.full(len(b), -1, np.int32))
                        continue
                    mapping = np.array([code_of.setdefault(l, len(code_of)) for l in col.labels] + [-1], np.int32)
                    chunks.append(mapping[np.where(col.codes < 0, len(col.labels), col.codes)])
                labels = list(code_of)
                arrays.values[prop] = np.concatenate(chunks)[order] if chunks else np.empty(0, np.int32)
                arrays.labels[prop] = labels
            else:
                dtype = {"float": np.float64, "bool": np.bool_}.get(kind, np.int64)
                vals, oks = [], []
                for b, _ in parts:
                    col = b.props.get(prop)
                    vals.append(np.zeros(len(b), dtype) if col is None else np.asarray(col.values).astype(dtype))
                    oks.append(np.zeros(len(b), bool) if col is None else np.asarray(col.valid, bool))
                arrays.values[prop] = np.concatenate(vals)[order] if vals else np.empty(0, dtype)
                arrays.valid[prop] = np.concatenate(oks)[order] if oks else np.empty(0, bool)
        return arrays

    # -- profile predicates (each returns a bool mask over the N profiles; null -> False) -----
    def cat_in(self, name: str, *labels: str) -> np.ndarray:
        lut = np.array([label in labels for label in self.labels[name]] + [False], dtype=bool)
        codes = self.codes[name]
        return lut[np.where(codes >= 0, codes, len(self.labels[name]))]

    def cat_cmp(self, name: str, op: str, label: str) -> np.ndarray:
        """Category comparison by Unicode code point."""
        lut = np.array([OPS[op](value, label) for value in self.labels[name]] + [False], dtype=bool)
        codes = self.codes[name]
        return lut[np.where(codes >= 0, codes, len(self.labels[name]))]

    def cmp(self, name: str, op: str, value) -> np.ndarray:
        return self.valid[name] & OPS[op](self.values[name], value)

    def between(self, name: str, lo, hi) -> np.ndarray:
        values = self.values[name]
        return self.valid[name] & (values >= lo) & (values <= hi)

    def is_null(self, name: str) -> np.ndarray:
        if name in self.codes:
            return self.codes[name] < 0
        return ~self.valid[name]

    def _tag_mask(self, name: str, tags: tuple[str, ...]) -> np.uint64 | None:
        bits = 0
        for tag in tags:
            if tag not in self.labels[name]:
                return None
            bits |= 1 << self.labels[name].index(tag)
        return np.uint64(bits)

    def has_any(self, name: str, *tags: str) -> np.ndarray:
        known = tuple(t for t in tags if t in self.labels[name])
        mask = self._tag_mask(name, known)
        if not known or mask is None:
            return np.zeros(self.n, bool)
        return self.valid[name] & ((self.tag_bits[name] & mask) != 0)

    def has_all(self, name: str, *tags: str) -> np.ndarray:
        mask = self._tag_mask(name, tags)
        if mask is None:
            return np.zeros(self.n, bool)
        return self.valid[name] & ((self.tag_bits[name] & mask) == mask)

    def consent(self, purpose: str) -> np.ndarray:
        return self.consents[purpose]

    def sample(self, percent: float, seed: int = 0) -> np.ndarray:
        return _splitmix_sample(self.hashes, np.uint64(seed & (2**64 - 1)), int(round(percent * 100)))

    # -- events --------------------------------------------------------------------------------
    def latest(self, event: str, now: int) -> np.ndarray:
        """Per profile, the time of its latest ``event`` with ts <= now (NO_TIME if none)."""
        ev = self.events[event]
        part = ev.window(NO_TIME, now)
        return _latest(ev.pid[part], ev.ts[part], self.n, NO_TIME)

    def did_counts(self, event: str, now: int, *, where=None, within: int | None = None, since: int | None = None,
                   before: int | None = None, after_last: str | None = None) -> np.ndarray:
        """Per profile, the number of its ``event`` events satisfying ``where`` and the time options.

        ``where(ev, part)`` returns a bool mask over the events ``ev.*[part]``. Only ts <= now counts;
        WITHIN d: now - d < ts; SINCE t: ts >= t; BEFORE t: ts < t; AFTER LAST f: ts > latest f <= now.
        """
        lo, hi = NO_TIME, now
        if within is not None:
            lo = max(lo, now - within + 1)
        if since is not None:
            lo = max(lo, since)
        if before is not None:
            hi = min(hi, before - 1)
        ev = self.events[event]
        if lo > hi:
            return np.zeros(self.n, np.int32)
        part = ev.window(lo, hi)
        keep = None if where is None else where(ev, part)
        if after_last is not None:
            latest = self.latest(after_last, now)[ev.pid[part]]
            after = (latest != NO_TIME) & (ev.ts[part] > latest)
            keep = after if keep is None else keep & after
        if keep is None:
            return _count_rows(ev.pid[part], self.n)
        return _count_rows_kept(ev.pid[part], keep, self.n)

    def bucket_between(self, seed: int, lo: int, hi: int) -> np.ndarray:
        """BUCKET(seed) BETWEEN lo AND hi, as the difference of two samples."""
        seed64 = np.uint64(seed & (2**64 - 1))
        return _splitmix_sample(self.hashes, seed64, hi + 1) & ~_splitmix_sample(self.hashes, seed64, lo)

    def did_aggregate(self, event: str, now: int, prop: str, func: str, op: str, value: float, *,
                      within: int) -> np.ndarray:
        """Per profile, ``func`` (sum or avg) of the non-null ``prop`` of its ``event`` events in the
        window compared with ``value`` (a sum of nothing is 0, an average of nothing is null: false)."""
        ev = self.events[event]
        part = ev.window(now - within + 1, now)
        valid = ev.valid[prop][part]
        pid = ev.pid[part][valid]
        total = np.bincount(pid, weights=ev.values[prop][part][valid], minlength=self.n)
        if func == "sum":
            return OPS[op](total, value)
        count = np.bincount(pid, minlength=self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (count > 0) & OPS[op](total / np.maximum(count, 1), value)

    def sequence(self, types: tuple[str, ...], now: int, *, span: int, within: int) -> np.ndarray:
        """Profiles with events of ``types`` (distinct types) in strictly increasing time, the last at most
        ``span`` after the first, every event in the window."""
        pids, times, steps = [], [], []
        for index, event in enumerate(types):
            ev = self.events[event]
            part = ev.window(now - within + 1, now)
            pids.append(ev.pid[part])
            times.append(ev.ts[part])
            steps.append(np.full(part.stop - part.start, index, np.int8))
        pid, ts, step = np.concatenate(pids), np.concatenate(times), np.concatenate(steps)
        order = np.lexsort((ts, pid))
        return _sequence_mask(pid[order], ts[order], step[order], len(types), span, self.n)

    def did(self, event: str, now: int, *, count: tuple[str, int] = (">=", 1), **options) -> np.ndarray:
        """The DID predicate as a bool mask: the count of matching events satisfies ``count``."""
        op, value = count
        return OPS[op](self.did_counts(event, now, **options), value)
