"""View reads: Membership answered beside an event batch's commit, on one shard or several, never
seeing one shard after a batch and another before it (engine.concurrency, engine.segments)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pytest

from engine import Engine, Schema
from engine.columns import EventBatch, column_from_values
from engine.commands import LoadEvents, route
from engine.errors import ProfileNotFound
from engine.schema import CONTRACT_SCHEMA
from engine.shard.partition import shard_of
from engine.shard.prepared import view_safe
from shard_hooks import Delays
from test_concurrency import fast_switching, run_threads
from test_segments import DAY, NOW


def test_membership_is_answered_while_an_event_batch_commits():
    """The engine's write of a columnar event batch is view-safe, with one shard or several (each shard
    keeps membership as it was until the write publishes it); its membership reads are view reads."""
    for shards in (1, 2):
        with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=shards, backend="local") as engine:
            engine.upsert_profiles([{"id": "a", "country": "FR"}])
            engine.create_segment("fr", "country = 'FR'")
            calls = route(LoadEvents(EventBatch("page_view", ["a"], np.array([NOW], np.int64), {}), NOW), shards, None)
            assert view_safe(calls)
            inside, leave = threading.Event(), threading.Event()

            def writer() -> None:
                with engine.publish.writing(view_safe=view_safe(calls)):  # noqa: B023
                    inside.set()
                    assert leave.wait(5)  # noqa: B023

            thread = threading.Thread(target=writer)
            thread.start()
            assert inside.wait(5)
            with engine.publish.deadline(0.5):
                answer = engine.membership("a")
            leave.set()
            thread.join(5)
            assert answer == ["fr"]


def _two_shard_ids(count: int) -> tuple[list[str], list[str]]:
    """``count`` ids on shard 0 and ``count`` on shard 1 (of 2)."""
    on: tuple[list[str], list[str]] = ([], [])
    i = 0
    while min(map(len, on)) < count:
        pid = f"v{i}"
        if len(on[shard_of(pid, 2)]) < count:
            on[shard_of(pid, 2)].append(pid)
        i += 1
    return on


@contextmanager
def _slowed_pair(monkeypatch, tmp_path) -> Iterator[tuple[Engine, Delays, str, str]]:
    """An engine of two worker-process shards whose calls the test can slow down (``Delays``), its clock
    at NOW, and an id of each shard: (engine, delays, id on shard 0, id on shard 1)."""
    delays = Delays.install(monkeypatch, tmp_path)
    (a, *_), (b, *_) = _two_shard_ids(1)
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2, backend="process") as engine:
        engine.clock = lambda: NOW
        yield engine, delays, a, b


@pytest.mark.parametrize("backend", ["local", "process"])
def test_view_reads_see_a_batch_on_every_shard_at_once(backend):
    """Each batch puts a profile of shard 0 and one of shard 1 into a new segment (and creates one
    profile on each shard that enters it too). A reader that reads the one, then the other, never
    finds the second outside a segment the first was in: membership read beside the batches' commits
    sees every shard before a batch or after it, never one shard after and another before."""
    (a, *new_a), (b, *new_b) = _two_shard_ids(40)
    rounds = 39
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2, backend=backend) as engine:
        engine.clock = lambda: NOW
        engine.upsert_profiles([{"id": a}, {"id": b}])
        for k in range(rounds):
            engine.create_segment(f"s{k:02d}", f"DID(page_view WHERE category = 'c{k}')")
        done = threading.Event()
        wrong: list[tuple[str, list[str], list[str]]] = []
        reads = [0]

        def writer() -> None:
            try:
                for k in range(rounds):
                    ids = [a, b, new_a[k], new_b[k]]
                    category = column_from_values("category", [f"c{k}"] * len(ids))
                    engine.load_events(EventBatch("page_view", ids, np.full(len(ids), NOW - k, np.int64),
                                                  {"category": category}))
            finally:
                done.set()

        def reader(first: str, second: str, k_of: Callable[[int], str]) -> None:
            while not done.is_set():
                before = set(engine.membership(first))
                after = set(engine.membership(second))
                if not before <= after:
                    wrong.append((first, sorted(before), sorted(after)))
                newest = len(before)  # the profile this batch created on the other shard is known
                if newest and newest < rounds:
                    try:
                        engine.membership(k_of(newest - 1))
                    except ProfileNotFound:
                        wrong.append((k_of(newest - 1), sorted(before), []))
                reads[0] += 1

        with fast_switching():
            run_threads([writer, lambda: reader(a, b, lambda k: new_b[k]), lambda: reader(b, a, lambda k: new_a[k])])
        assert wrong == []
        assert reads[0] > rounds
        assert engine.membership(a) == [f"s{k:02d}" for k in range(rounds)] == engine.membership(b)


def test_a_view_read_is_answered_beside_a_slow_batch_on_process_shards(monkeypatch, tmp_path):
    """While a worker applies a batch (slowed down here), membership of its profiles and of the other
    shard's is answered at once with the state before the batch; after it, with the state after."""
    with _slowed_pair(monkeypatch, tmp_path) as (engine, delays, a, b):
        engine.upsert_profiles([{"id": a}, {"id": b}])
        engine.create_segment("viewed", "DID(page_view)")
        delays.set(0, 1.0, "apply_logged")
        batch = EventBatch("page_view", [a, b], np.full(2, NOW, np.int64), {})
        writer = threading.Thread(target=engine.load_events, args=(batch,))
        writer.start()
        time.sleep(0.3)  # shard 1 has applied the batch, shard 0 is applying it
        began = time.monotonic()
        during = [engine.membership(a), engine.membership(b)]
        read_s = time.monotonic() - began
        writing = writer.is_alive()
        count = engine.count("SEGMENT('viewed')")  # not a view read: waits for the batch
        writer.join(10)
        delays.set(0, 0)
        assert during == [[], []] and writing and read_s < 0.5
        assert count == 2 and engine.membership(a) == engine.membership(b) == ["viewed"]


@pytest.mark.parametrize("backend", ["local", "process"])
def test_view_reads_see_a_merge_on_every_shard_at_once(backend):
    """Each round merges a source (alternately of shard 0 and 1) into one target of shard 1; the
    source alone is in its own segment. Membership read beside the merges' commits finds a source in
    its segment before its merge and after it (then as an alias of the target, in every segment the
    target has taken so far), never outside it (departed, or resolved to the target before the
    target's membership changed); and the target's segments only grow."""
    (_, *on0), (target, *on1) = _two_shard_ids(20)
    sources = [s for pair in zip(on0, on1) for s in pair][:24]
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2, backend=backend) as engine:
        engine.clock = lambda: NOW
        engine.upsert_profiles([{"id": target}, *({"id": s} for s in sources)])
        for k, source in enumerate(sources):
            engine.create_segment(f"s{k:02d}", f"DID(page_view WHERE category = 'c{k}')")
            engine.load_events(EventBatch("page_view", [source], np.array([NOW - k], np.int64),
                                          {"category": column_from_values("category", [f"c{k}"])}))
        done = threading.Event()
        wrong: list[tuple] = []
        reads = [0]

        def writer() -> None:
            try:
                for source in sources:
                    engine.merge(source, target)
            finally:
                done.set()

        def reader(offset: int) -> None:
            seen: set[str] = set()
            k = offset
            while not done.is_set():
                k = (k + 7) % len(sources)
                mine = set(engine.membership(sources[k]))
                theirs = set(engine.membership(target))
                if f"s{k:02d}" not in mine or not seen <= theirs or (len(mine) > 1 and not mine <= theirs):
                    wrong.append((k, sorted(mine), sorted(theirs), sorted(seen)))
                seen = theirs
                reads[0] += 1

        with fast_switching():
            run_threads([writer, lambda: reader(0), lambda: reader(3)])
        assert wrong == []
        assert reads[0] > len(sources)
        everything = [f"s{k:02d}" for k in range(len(sources))]
        assert engine.membership(target) == everything == engine.membership(sources[0])
        assert engine.count("ALL") == 1


def test_a_view_read_is_answered_beside_a_slow_merge_on_process_shards(monkeypatch, tmp_path):
    """While the source's worker applies a cross-shard merge (slowed down here), membership of the
    source and of the target is answered at once with the state before the merge (the source still
    a profile of its own); after it, the source names the target, which took its attribute."""
    with _slowed_pair(monkeypatch, tmp_path) as (engine, delays, a, b):
        engine.upsert_profiles([{"id": a, "country": "FR"}, {"id": b}])
        engine.create_segment("fr", "country = 'FR'")
        delays.set(0, 1.0, "apply_logged")
        writer = threading.Thread(target=engine.merge, args=(a, b))
        writer.start()
        time.sleep(0.4)  # shard 1 has received the source's data, shard 0 is taking the source out
        began = time.monotonic()
        during = [engine.membership(a), engine.membership(b)]
        read_s = time.monotonic() - began
        writing = writer.is_alive()
        writer.join(10)
        delays.set(0, 0)
        assert during == [["fr"], []] and writing and read_s < 0.5
        assert engine.membership(a) == engine.membership(b) == ["fr"]
        assert engine.count("SEGMENT('fr')") == 1


@pytest.mark.parametrize("merge", [False, True])
def test_a_query_reading_no_saved_segment_is_answered_during_a_writes_sync_step(monkeypatch, tmp_path, merge):
    """Once every shard has committed a view write's data, the shards sync their saved segments (one
    slowed down here): a query reading no saved segment is answered meanwhile, with the data after the
    write; membership still sees the state before it; a query reading a saved segment waits for the
    write's end and sees the state after it."""
    with _slowed_pair(monkeypatch, tmp_path) as (engine, delays, a, b):
        engine.upsert_profiles([{"id": a, "country": "FR"}, {"id": b}])
        engine.create_segment("fr", "country = 'FR'")
        engine.create_segment("viewed", "DID(page_view)")
        delays.set(0, 1.0, "sync_view")
        if merge:  # b takes a's place: a's attribute moves to b, a leaves
            writer = threading.Thread(target=engine.merge, args=(a, b))
            query, before, after = "country = 'FR'", {a: ["fr"], b: []}, (1, [b])
        else:
            batch = EventBatch("page_view", [a, b], np.full(2, NOW, np.int64), {})
            writer = threading.Thread(target=engine.load_events, args=(batch,))
            query, before, after = "DID(page_view)", {a: ["fr"], b: []}, (2, sorted([a, b]))
        writer.start()
        time.sleep(0.4)  # every shard has committed; shard 0 is in its sync step
        began = time.monotonic()
        during = (engine.count(query, now=NOW), engine.ids(query, now=NOW))
        read_s = time.monotonic() - began
        seen = {pid: engine.membership(pid) for pid in (a, b)}
        writing = writer.is_alive()
        segment = engine.count("SEGMENT('fr') OR SEGMENT('viewed')")  # reads saved segments: waits
        writer.join(10)
        delays.set(0, 0)
        assert during == after and read_s < 0.5 and writing and seen == before
        assert segment == (1 if merge else 2)
        assert engine.membership(b) == (["fr"] if merge else ["viewed"])


def test_a_refresh_of_time_relative_segments_is_a_view_write(monkeypatch, tmp_path):
    """Refreshing time-relative segments changes no data: membership and queries reading no saved
    segment are answered during its sync step (slowed down on one shard here), membership with the
    state before it; a query reading the segment waits for its end."""
    clock = [NOW]
    with _slowed_pair(monkeypatch, tmp_path) as (engine, delays, a, b):
        engine.clock = lambda: clock[0]
        engine.auto_refresh = False  # as in a server: only its timer refreshes
        engine.upsert_profiles([{"id": a}, {"id": b}])
        engine.load_events(EventBatch("page_view", [a, b], np.full(2, NOW, np.int64), {}))
        engine.create_segment("recent", "DID(page_view, WITHIN 1d)")
        clock[0] = NOW + 2 * DAY
        delays.set(0, 1.0, "sync_view")
        writer = threading.Thread(target=engine.refresh_segments)
        writer.start()
        time.sleep(0.4)  # shard 0 is in the refresh's sync step
        began = time.monotonic()
        during = [engine.membership(a), engine.membership(b), engine.count("DID(page_view)", now=NOW)]
        read_s = time.monotonic() - began
        writing = writer.is_alive()
        segment = engine.count("SEGMENT('recent')")  # waits for the refresh's end
        writer.join(10)
        delays.set(0, 0)
        assert during == [["recent"], ["recent"], 2] and read_s < 0.5 and writing
        assert segment == 0 and engine.membership(a) == engine.membership(b) == []


@pytest.mark.parametrize("merge", [False, True])
def test_membership_waits_only_for_the_insertion_of_a_writes_new_ids(merge):
    """A view write that creates profiles (an event batch naming a new id, a merge into a new id)
    inserts their ids under the segments' lock, then syncs the segments (slowed down here) without
    it: membership of the shard's profiles is answered meanwhile, the new profile still unknown."""
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1, backend="local") as engine:
        engine.clock = lambda: NOW
        engine.upsert_profiles([{"id": "a", "country": "FR"}, {"id": "b", "country": "FR"}])
        engine.create_segment("fr", "country = 'FR'")
        saved = engine.shards[0].saved
        syncing, sync = threading.Event(), saved.sync

        def slow_sync(*args, **kwargs):
            syncing.set()
            time.sleep(1.0)
            return sync(*args, **kwargs)

        saved.sync = slow_sync
        if merge:
            writer = threading.Thread(target=engine.merge, args=("b", "new"))
        else:
            batch = EventBatch("page_view", ["a", "new"], np.full(2, NOW, np.int64), {})
            writer = threading.Thread(target=engine.load_events, args=(batch,))
        writer.start()
        assert syncing.wait(5)
        began = time.monotonic()
        during = engine.membership("a")
        with pytest.raises(ProfileNotFound):
            engine.membership("new")
        read_s = time.monotonic() - began
        writing = writer.is_alive()
        writer.join(10)
        assert during == ["fr"] and writing and read_s < 0.5
        assert engine.membership("new") == (["fr"] if merge else [])


def test_a_view_read_overlapped_by_a_merges_publish_is_made_again():
    """A membership read admitted beside a merge's commit resolves the source's id as it was, and
    (held up here) reaches the shard only after the merge has published: it is made again, and
    answers with the target's segments rather than "unknown profile"."""
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1, backend="local") as engine:
        engine.clock = lambda: NOW
        engine.upsert_profiles([{"id": "a", "country": "FR"}, {"id": "b"}])
        engine.create_segment("fr", "country = 'FR'")
        saved, identity = engine.shards[0].saved, engine.identity
        committing, resolved, merged = threading.Event(), threading.Event(), threading.Event()
        sync, resolve = saved.sync, identity.resolve

        def slow_sync(*args, **kwargs):
            committing.set()
            assert resolved.wait(5)  # the reader has resolved "a" beside the commit
            return sync(*args, **kwargs)

        def held_resolve(ids):
            out = resolve(ids)
            if threading.current_thread() is reader:
                resolved.set()
                assert merged.wait(5)  # the merge has published and ended meanwhile
            return out

        saved.sync, identity.resolve = slow_sync, held_resolve
        answers: list = []

        def read() -> None:
            assert committing.wait(5)
            answers.append(engine.membership("a"))

        reader = threading.Thread(target=read)
        reader.start()
        engine.merge("a", "b")
        merged.set()
        reader.join(10)
        assert answers == [["fr"]] and engine.membership("b") == ["fr"]
