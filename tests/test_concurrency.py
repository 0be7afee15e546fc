"""Concurrent calls: queries alongside each other and alongside writes, against a serial order.

- Two or more queries on one in-process shard at once give the answers they give one at a time
  (per-call clocks, DID scratch buffers, caches built concurrently from cold).
- A write that spans shards is never seen half-applied (one publish epoch).
- Writes, queries, membership reads and snapshots running together on a durable engine: every
  answer equals the naive oracle after some prefix of the writes, namely one between the writes
  acknowledged before the call started and those started before it ended.
"""
from __future__ import annotations

import random
import sys
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from engine import Engine, Schema
from engine.columns import EventBatch, column_from_values
from engine.concurrency import PublishLock, PublishTimeout
from engine.priority import lower_thread_priority
from engine.errors import ProfileNotFound
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA
from engine.shard.partition import shard_of
from loaders.generator import generate
from oracle import NaiveStore
from server.gate import RUNS_KEPT, EngineGate, WouldWait
from shard_hooks import Delays
from test_segments import DAY, HOUR, NOW, Clock, expand, random_writes

#: Queries covering the executor's shared caches and per-call state: kept ranges and unions
#: (asked for repeatedly), IS NULL, SAMPLE, DID presence (day and slot bitmaps), counts up to two
#: (count bitsets), larger counts (member bitset), WHERE, AFTER LAST (latest times), NOW.
QUERIES = [
    "country = 'FR'",
    "age BETWEEN 25 AND 40",
    "age > 30 AND NOT age BETWEEN 50 AND 60",
    "country IN ('FR', 'BE') AND CONSENTED(email)",
    "interests IS NULL",
    "interests HAS ANY ('shoes', 'tech')",
    "SAMPLE(30, 7)",
    "signup_at > NOW - 30d",
    "DID(page_view, WITHIN 1d)",
    "DID(page_view, WITHIN 2d) AND NOT DID(purchase, WITHIN 7d)",
    "DID(page_view, SINCE NOW - 3d, COUNT < 3)",
    "DID(page_view, COUNT >= 3, WITHIN 5d)",
    "vip = TRUE AND DID(page_view, COUNT >= 4, WITHIN 10d)",
    "DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)",
    "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
    ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40"
     " AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)"
     " AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)"),
]


@contextmanager
def fast_switching() -> Iterator[None]:
    """Switch threads every 10 us, so concurrent calls interleave finely."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Run each target in a thread of its own; re-raise the first error."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


# -- the lock ---------------------------------------------------------------------------------
def test_publish_lock_prefers_writers_and_honours_deadlines():
    lock = PublishLock()
    order: list[str] = []

    def write() -> None:
        with lock.writing():
            order.append("write")

    def late_read() -> None:
        try:
            with lock.deadline(0.05), lock.reading():
                order.append("late read")
        except PublishTimeout:
            order.append("late read timed out")

    with lock.reading():
        writer = threading.Thread(target=write)
        writer.start()
        while not lock.writers_waiting:
            time.sleep(0.001)
        assert not lock.acquire_read(blocking=False) or lock.holds_read()  # nested: this thread reads already
        lock.release_read()
        reader = threading.Thread(target=late_read)  # a new reader waits behind the writer, until its deadline
        reader.start()
        reader.join(5)
        with lock.reading():  # this thread's own nested read goes on
            order.append("nested read")
        with pytest.raises(RuntimeError):
            lock.acquire_write()  # no upgrade from a read share
    writer.join(5)
    assert order == ["late read timed out", "nested read", "write"]
    assert (lock.readers, lock.writer, lock.writers_waiting) == (0, None, 0)


def test_a_stream_of_writes_does_not_starve_readers():
    lock = PublishLock()
    stop = threading.Event()

    def write_forever() -> None:
        while not stop.is_set():
            with lock.writing():
                time.sleep(0.005)

    writer = threading.Thread(target=write_forever)
    writer.start()
    waits = []
    try:
        for _ in range(20):
            started = time.perf_counter()
            with lock.reading():
                waits.append(time.perf_counter() - started)
    finally:
        stop.set()
        writer.join(5)
    assert len(waits) == 20 and max(waits) < 0.5  # at most the write running and the next, not the stream


def test_a_capture_keeps_writers_out_but_not_readers():
    lock = PublishLock()
    wrote = threading.Event()
    with lock.excluding_writers():
        writer = threading.Thread(target=lambda: (lock.acquire_write(), wrote.set(), lock.release_write()))
        writer.start()
        time.sleep(0.05)
        assert not wrote.is_set() and lock.acquire_read(blocking=False)  # readers go on meanwhile
        lock.release_read()
    writer.join(5)
    assert wrote.is_set() and lock.pins == 0


def test_store_reads_go_in_only_during_a_writes_sync_step():
    """Beside a write, a store read (a query reading no saved segment) waits until the writer opens
    its sync step (``open_store``), then goes in; other reads wait for the write's end; after the
    write, a new write closes the store again."""
    lock = PublishLock()
    lock.acquire_write()
    got: list[str] = []

    def read(kind: str) -> None:
        with lock.reading(store=kind == "store", timeout=5):
            got.append(kind)

    waiting = [threading.Thread(target=read, args=(kind,)) for kind in ("store", "plain")]
    for thread in waiting:
        thread.start()
    time.sleep(0.05)
    assert got == [] and not _try_read(lock) and not _try_read(lock, store=True)
    lock.open_store()
    waiting[0].join(5)
    assert got == ["store"] and _try_read(lock, store=True)
    assert not _try_read(lock, point=True) and not _try_read(lock, view=True)  # not a view-safe write
    lock.release_write()
    waiting[1].join(5)
    assert got == ["store", "plain"] and not lock.store_open
    lock.acquire_write()
    assert not _try_read(lock, store=True)
    lock.release_write()


def _writer_behind_a_read(lock: PublishLock, heavy: bool = False) -> tuple[threading.Event, threading.Event, list[threading.Thread]]:
    """Start a read that holds ``lock`` (``heavy``: on a background thread) and a writer behind it;
    once the writer waits, returns (the event that ends the read, the event the writer sets, the threads)."""
    inside, leave, wrote = threading.Event(), threading.Event(), threading.Event()

    def reader() -> None:
        if heavy:
            lower_thread_priority(0)  # a background thread (its priority as it is)
        with lock.reading():
            inside.set()
            assert leave.wait(5)

    def writer() -> None:
        with lock.writing():
            wrote.set()

    threads = [threading.Thread(target=reader)]
    threads[0].start()
    assert inside.wait(5)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    deadline = time.monotonic() + 5
    while not (lock.writers_pending if heavy else lock.writers_waiting) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert (lock.writers_pending if heavy else lock.writers_waiting) == 1 and not wrote.is_set()
    return leave, wrote, threads


def _try_read(lock: PublishLock, point: bool = False, heavy: bool = False, **kinds: bool) -> bool:
    """Whether a new thread (``heavy``: a background one) gets a read share (``point``, ``kinds``: see
    ``acquire_read``) without waiting; the share is given back."""
    got: list[bool] = []

    def read() -> None:
        if heavy:
            lower_thread_priority(0)
        got.append(lock.acquire_read(blocking=False, point=point, **kinds))
        if got[0]:
            lock.release_read()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(5)
    return got[0]


def test_a_writer_waits_for_heavy_reads_without_holding_point_reads_back():
    """A heavy read (an analyst's query) holds a share; a writer waits for it, but other readers
    go on meanwhile, new heavy reads wait behind the writer, and the writer goes in once the
    heavy read ends."""
    lock = PublishLock()
    leave, wrote, threads = _writer_behind_a_read(lock, heavy=True)
    assert lock.acquire_read(blocking=False)  # a point read goes on
    lock.release_read()
    assert not _try_read(lock, heavy=True)  # a new heavy read waits behind the writer
    leave.set()
    for thread in threads:
        thread.join(5)
    assert wrote.is_set() and lock.heavy == 0 and lock.readers == 0


def test_a_point_read_passes_a_writer_waiting_for_a_longer_read_but_not_point_reads_alone():
    """A writer waits for a running query; a point read goes in meanwhile (the writer waits for the
    query anyway), an ordinary read does not; once only point reads hold the lock, a new point read
    queues behind the writer, and the writer goes in when they end."""
    lock = PublishLock()
    leave, wrote, (query, writer) = _writer_behind_a_read(lock)
    assert not _try_read(lock)  # an ordinary read queues behind the writer
    assert lock.acquire_read(blocking=False, point=True)  # a point read goes in: the query still runs
    assert (lock.readers, lock.points) == (2, 1)
    leave.set()
    query.join(5)
    assert lock.readers == 1 and not wrote.is_set()  # the point read still holds the lock
    assert not _try_read(lock, point=True)  # only point reads left: a new one queues behind the writer
    lock.release_read()
    writer.join(5)
    assert wrote.is_set() and (lock.readers, lock.points) == (0, 0)


def test_a_view_read_goes_in_beside_a_view_safe_write_only():
    """Membership on a one-shard engine (a view read) is answered while an event batch commits (a
    view-safe write), but waits for any other write; other reads wait for both."""
    lock = PublishLock()
    for view_safe in (True, False):
        inside, leave = threading.Event(), threading.Event()

        def writer() -> None:
            with lock.writing(view_safe=view_safe):  # noqa: B023 (each writer joins in its round)
                inside.set()
                assert leave.wait(5)  # noqa: B023

        thread = threading.Thread(target=writer)
        thread.start()
        assert inside.wait(5)
        got = lock.acquire_read(blocking=False, view=True)
        assert got is view_safe
        if got:
            assert (lock.readers, lock.points) == (1, 1)
            lock.release_read()
        assert not lock.acquire_read(blocking=False, point=True)
        leave.set()
        thread.join(5)
    assert (lock.readers, lock.points, lock.writer, lock.view_safe) == (0, 0, None, False)


# -- queries at once on one in-process shard --------------------------------------------------
def dense_engine() -> Engine:
    """A one-shard in-process engine with generated data plus 20k page views a day for 12 days,
    so windows ending inside a day build slot bitmaps (and evict them: more than 8 days)."""
    ds = generate(profiles=4000, events=40000, seed=5, now_ms=NOW)
    engine = Engine(Schema.from_dict(ds.schema), shards=1, backend="local")
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    rng = np.random.default_rng(7)
    n = 12 * 20_000
    ids = [ds.profiles.ids[i] for i in rng.integers(0, len(ds.profiles.ids), n).tolist()]
    ts = NOW - rng.integers(0, 12 * DAY, n)
    engine.load_events(EventBatch("page_view", ids, ts.astype(np.int64), {}))
    return engine


def test_queries_at_once_on_one_shard_answer_as_serially():
    tasks = [(kind, text, NOW - k * (DAY + 37 * 60_000 + 11)) for k in range(10)
             for text in QUERIES for kind in ("count", "ids")]
    tasks += [("explain", text, NOW - k * 5 * HOUR) for k in range(2) for text in QUERIES]
    with dense_engine() as serial:
        expected = {task: _answer(serial, *task) for task in tasks}
    with dense_engine() as engine, fast_switching():  # cold caches, filled by concurrent queries
        answers: dict[tuple, list[Any]] = {task: [] for task in tasks}

        def worker(seed: int) -> None:
            mine = list(tasks) * 2
            random.Random(seed).shuffle(mine)
            for task in mine:
                answers[task].append(_answer(engine, *task))

        run_threads([lambda s=s: worker(s) for s in range(4)])
        store = engine.shards[0].events.types["page_view"]
        assert len(store.slot_days) == 8  # slot bitmaps were built and evicted while queries ran
    for task in tasks:
        assert answers[task] == [expected[task]] * 8, task


def _answer(engine: Engine, kind: str, text: str, now: int) -> Any:
    if kind == "count":
        return engine.count(text, now=now)
    if kind == "ids":
        return engine.ids(text, now=now)
    return engine.explain(text, now=now)["count"]


def test_point_reads_leave_the_event_loop_while_a_worker_may_be_busy(monkeypatch, tmp_path):
    delays = Delays.install(monkeypatch, tmp_path)
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2, backend="process") as engine:
        engine.upsert_profiles([{"id": "a", "vip": True}])
        gate, on_loop = EngineGate(engine), SimpleNamespace(on_loop=True)
        assert gate.read(on_loop, engine.membership, "a") == []
        delays.set(0, 0.3)  # shard 0 now takes 0.3 s per request
        counted: list[int] = []
        query = threading.Thread(target=lambda: counted.append(gate.query(None, engine.count, "vip = TRUE")))
        query.start()
        while not gate.queries_running:
            time.sleep(0.001)
        with pytest.raises(WouldWait):  # the loop must not wait for the worker busy with the query
            gate.read(on_loop, engine.membership, "a")
        query.join(5)
        delays.set(0, 0)
        assert counted == [1] and gate.read(on_loop, engine.membership, "a") == []


def test_a_query_is_heavy_by_its_work_in_its_last_runs_not_by_its_waits():
    """The gate remembers a query's work, not its wait for a write: a short query that waited for a
    commit stays with the short calls. It calls a query heavy once each of its last RUNS_KEPT runs
    worked ``heavy_ms`` or more, so one slow run does not move it either."""
    with Engine(Schema.from_dict(CONTRACT_SCHEMA)) as engine:
        engine.upsert_profiles([{"id": "a", "vip": True}])
        gate, query = EngineGate(engine), "vip = TRUE"
        gate.heavy_ms = 50.0
        writing, release = threading.Event(), threading.Event()

        def write() -> None:
            with engine.publish.writing():
                writing.set()
                release.wait(5)

        writer = threading.Thread(target=write)
        writer.start()
        writing.wait(5)
        threading.Timer(0.2, release.set).start()
        started = time.perf_counter()
        assert gate.query(None, engine.count, query) == 1
        assert time.perf_counter() - started >= 0.2  # it waited for the write
        writer.join(5)
        assert gate.costs[query][-1] < 50.0 and not gate.heavy(query)

        def slow(text: str) -> int:
            time.sleep(0.06)
            return engine.count(text)

        ran = []
        for fn in (slow, slow, slow, engine.count):
            gate.query(None, fn, query)
            ran.append(gate.heavy(query))
        assert ran == [False, False, True, False] and len(gate.costs[query]) == RUNS_KEPT == 3


# -- a write spanning shards is published at once ---------------------------------------------
@pytest.mark.parametrize("backend,durable", [("local", False), ("process", False), ("process", True)])
def test_a_write_spanning_shards_is_never_seen_half_applied(tmp_path, backend, durable):
    ids = [f"p{i}" for i in range(300)]
    assert {shard_of(i, 2) for i in ids} == {0, 1}
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2, backend=backend,
                    data_dir=str(tmp_path / "data") if durable else None,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None})
    rounds = 26
    seen: dict[str, set[int]] = {"vip": set(), "purchase": set()}
    done = threading.Event()
    with engine:
        engine.upsert_profiles([{"id": i, "vip": False} for i in ids])

        def writer() -> None:
            try:
                for k in range(rounds):
                    engine.upsert_profiles([{"id": i, "vip": k % 2 == 0} for i in ids])
                    engine.load_events(EventBatch("purchase", ids, np.full(len(ids), NOW - k, np.int64), {}))
            finally:
                done.set()

        def reader() -> None:
            while not done.is_set():
                seen["vip"].add(engine.count("vip = TRUE"))
                seen["purchase"].add(engine.count("DID(purchase, COUNT = 1)", now=NOW))

        run_threads([writer, reader, reader])
        assert engine.count("vip = TRUE") == 0 and engine.count("DID(purchase)", now=NOW) == len(ids)
    assert seen["vip"] <= {0, len(ids)} and seen["purchase"] <= {0, len(ids)}, seen
    assert len(seen["vip"]) == 2  # readers ran while the writes did


# -- everything at once, checked against the oracle -------------------------------------------
SAVED = {
    "fr": "country = 'FR'",
    "carted_7d": "DID(cart_abandoned, WITHIN 7d)",
    "fr_carted": "SEGMENT('fr') AND SEGMENT('carted_7d')",
    "adults_not_vip": "age >= 18 AND NOT vip = TRUE",
}
CHECKED = QUERIES + ["SEGMENT('fr_carted')"]


def _writes(rng: random.Random, ids: list[str], n: int) -> list[tuple[str, list[dict]]]:
    """``n`` write batches: profile upserts, event records, or event columns (as records)."""
    writes: list[tuple[str, list[dict]]] = []
    for k in range(n):
        profiles, events = random_writes(rng, ids, NOW - rng.randrange(0, 3 * DAY), 40)
        kind = ("upsert", "track", "columns")[k % 3]
        if kind == "upsert":
            writes.append((kind, profiles or [{"id": ids[0]}]))
        elif kind == "track":
            writes.append((kind, events))
        else:
            views = [{"id": rng.choice(ids) if j % 8 else f"n{k:03d}",  # and a profile the batch creates
                      "event": "page_view", "ts": NOW - rng.randrange(0, 4 * DAY),
                      "category": rng.choice(["shoes", "tech", None])} for j in range(40)]
            writes.append((kind, views))
    return writes


def _apply(engine: Engine, kind: str, records: list[dict]) -> None:
    if kind == "upsert":
        engine.upsert_profiles(records)
    elif kind == "track":
        engine.track_events(records)
    else:
        category = column_from_values("category", [r["category"] for r in records])
        engine.load_events(EventBatch("page_view", [r["id"] for r in records],
                                      np.array([r["ts"] for r in records], np.int64), {"category": category}))


@pytest.mark.parametrize("shards,backend", [(1, "local"), (2, "process")])
def test_concurrent_calls_match_the_oracle_at_a_serial_order(tmp_path, shards, backend):
    rng = random.Random(17)
    ids = [f"u{i:04d}" for i in range(250)]
    first_profiles, first_events = random_writes(rng, ids, NOW, 600)
    initial = [("upsert", [{"id": i, "country": rng.choice(["FR", "BE", "DE"]), "age": rng.randrange(15, 70)}
                           for i in ids]), ("upsert", first_profiles), ("track", first_events)]
    writes = _writes(rng, ids, 45)
    data = str(tmp_path / "data")
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=shards, backend=backend, data_dir=data,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None})
    engine.clock = Clock(NOW)
    engine.refresh_ms = 10**9
    for kind, records in initial:
        _apply(engine, kind, records)
    for name, text in SAVED.items():
        engine.create_segment(name, text)

    started = [0]  # writes begun
    acked = [0]  # writes acknowledged
    done = threading.Event()
    queries: list[tuple[str, int, int, list[str] | int, int]] = []  # text, now, lo, ids or count, hi
    members: list[tuple[str, int, list[str] | None, int]] = []  # id, lo, segments (None: unknown), hi
    snapshots: list[int] = []

    def writer() -> None:
        try:
            for kind, records in writes:
                started[0] += 1
                _apply(engine, kind, records)
                acked[0] += 1
                time.sleep(0.002)
        finally:
            done.set()

    def querier(seed: int) -> None:
        local = random.Random(seed)
        while not done.is_set():
            text, now = local.choice(CHECKED), NOW - local.choice([0, 2 * DAY + 7 * HOUR])
            lo = acked[0]
            answer = engine.ids(text, now=now) if local.random() < 0.5 else engine.count(text, now=now)
            queries.append((text, now, lo, answer, started[0]))

    def member_reader() -> None:
        local = random.Random(5)
        while not done.is_set():
            pid = local.choice(ids + [f"n{k:03d}" for k in range(len(writes))] + ["nobody"])
            lo = acked[0]
            try:
                answer: list[str] | None = engine.membership(pid)
            except ProfileNotFound:
                answer = None
            members.append((pid, lo, answer, started[0]))

    def snapshotter() -> None:
        while not done.is_set():
            snapshots.append(engine.snapshot()["id"])
            time.sleep(0.05)

    with fast_switching():
        run_threads([writer, lambda: querier(1), lambda: querier(2), member_reader, snapshotter])
    final = engine.ids("ALL")
    engine.close()
    assert len(queries) > 20 and len(members) > 20 and snapshots

    # the oracle, write by write; each answer must match one of the prefixes it may have seen
    schema = Schema.from_dict(CONTRACT_SCHEMA)
    oracle = NaiveStore(CONTRACT_SCHEMA)
    for kind, records in initial:
        (oracle.upsert if kind == "upsert" else oracle.track)(records)
    bound = {text: bind(parse(expand(text, SAVED)), schema) for text in CHECKED}
    saved = {name: bind(parse(expand(text, SAVED)), schema) for name, text in SAVED.items()}
    allowed_q: dict[int, set[int]] = {i: set() for i in range(len(queries))}
    allowed_m: dict[int, set[int]] = {i: set() for i in range(len(members))}
    for k in range(len(writes) + 1):
        cache: dict[tuple[str, int], list[str]] = {}
        for i, (text, now, lo, answer, hi) in enumerate(queries):
            if lo <= k <= hi:
                if (text, now) not in cache:  # SEGMENT(...) reads the members at the segment clock
                    at = NOW if "SEGMENT(" in text else now
                    cache[text, now] = sorted(oracle.evaluate(bound[text], at))
                expected = cache[text, now] if isinstance(answer, list) else len(cache[text, now])
                if answer == expected:
                    allowed_q[i].add(k)
        in_saved = {name: oracle.evaluate(node, NOW) for name, node in saved.items()} if members else {}
        for i, (pid, lo, answer, hi) in enumerate(members):
            if lo <= k <= hi:
                expected = sorted(n for n, m in in_saved.items() if pid in m) if pid in oracle.attrs else None
                if answer == expected:
                    allowed_m[i].add(k)
        if k < len(writes):
            kind, records = writes[k]
            (oracle.upsert if kind == "upsert" else oracle.track)(records)
    assert [queries[i][:3] + queries[i][4:] for i, ks in allowed_q.items() if not ks] == []
    assert [members[i] for i, ks in allowed_m.items() if not ks] == []
    assert final == sorted(oracle.attrs)

    # the snapshots taken while everything ran recover to the same state
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=shards, backend=backend, data_dir=data,
                durability={"snapshot_every_s": None, "snapshot_log_bytes": None}) as reopened:
        for text in CHECKED[:-1]:
            assert reopened.ids(text, now=NOW) == sorted(oracle.evaluate(bound[text], NOW)), text


def test_a_background_threads_calls_run_at_a_lower_priority_in_the_workers():
    """A heavy query's thread (a background thread: engine.priority) has its share of the work
    served by each worker on a thread of lower OS priority; other callers' requests are not."""
    from engine.shard.worker import BACKGROUND_NICE

    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2) as engine:
        normal = engine.shards.call_all("_worker_nice")
        got: list[list[int]] = []

        def background_call() -> None:
            lower_thread_priority(1)
            got.append(engine.shards.call_all("_worker_nice"))

        thread = threading.Thread(target=background_call)
        thread.start()
        thread.join(30)
        assert got == [[min(n + BACKGROUND_NICE, 19) for n in normal]]
        assert engine.shards.call_all("_worker_nice") == normal  # the serving threads kept their priority
