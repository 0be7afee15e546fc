"""Requests to worker processes from many callers at once: lanes, large frames, faults, idle workers.

Every test uses real worker processes. See engine/shard/process.py for the protocol: each
caller takes a lane (its own socket to every worker), sends into it and reads its own replies;
a worker serves the requests of all lanes in the order they were numbered.
"""
from __future__ import annotations

import gc
import os
import signal
import threading
import time
import weakref

import numpy as np
import pytest

from engine import Engine, Schema
from engine.columns import CategoryColumn, ProfileBatch, ValueColumn
from engine.errors import ShardError
from engine.schema import CONTRACT_SCHEMA
from engine.shard.partition import shard_of
from engine.shard.channel import COALESCE
from engine.shard.lanes import LANES

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)


def run_threads(targets: list, timeout_s: float = 60.0) -> None:
    """Start one thread per target, join them all, and fail if any is still running."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    assert not any(thread.is_alive() for thread in threads), "a caller is stuck"


def profile_batch(start: int, n: int) -> ProfileBatch:
    """Profiles ``p{start}``..``p{start + n - 1}``, all in FR, aged ``i % 80``."""
    ids = [f"p{i:07d}" for i in range(start, start + n)]
    return ProfileBatch(ids, {"country": CategoryColumn(np.zeros(n, dtype=np.int32), ["FR"]),
                              "age": ValueColumn(np.arange(start, start + n, dtype=np.int64) % 80,
                                                 np.ones(n, dtype=bool))})


def test_large_batches_and_queries_from_many_threads_interleave() -> None:
    """Batches far larger than the pipeline (sent alone) mix with small pipelined queries and
    large replies (ids); every answer is exact and nobody blocks."""
    batches, per_batch = 6, 40_000
    with Engine(SCHEMA, shards=2) as engine:
        observed: list[int] = []
        failures: list[str] = []

        def loader() -> None:
            for k in range(batches):
                engine.load_profiles(profile_batch(k * per_batch, per_batch))

        def querier() -> None:
            for _ in range(40):
                n = engine.count("country = 'FR'")
                ids = engine.ids("country = 'FR'")
                if len(ids) < n or n % per_batch:  # a batch is applied whole, and ids come later
                    failures.append(f"count {n}, then {len(ids)} ids")
                observed.append(n)

        assert len(profile_batch(0, per_batch).ids) * 8 > COALESCE
        run_threads([loader, querier, querier, querier])
        assert failures == []
        assert engine.count("country = 'FR'") == batches * per_batch
        assert engine.count("age < 40") == batches * per_batch // 2
        assert engine.ids("age = 79")[:2] == ["p0000079", "p0000159"]


def test_requests_wait_in_the_workers_socket_while_it_is_busy() -> None:
    with Engine(SCHEMA, shards=2) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(100))
        shard = engine.shards[0]
        shard.call("_worker_delay", 0.3)
        depths: list[int] = []
        counts: list[int] = []
        clients = [lambda: counts.append(engine.count("age < 40")) for _ in range(4)]

        def watch() -> None:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                depths.append(len(shard.pending))
                time.sleep(0.01)

        run_threads(clients + [watch])
        shard.call("_worker_delay", 0)
        assert counts == [60] * 4  # profiles p0-p39 and p80-p99
        assert max(depths) == 4  # all four were sent at once, not queued in the coordinator


def test_requests_queued_behind_a_killed_one_are_sent_to_the_new_worker() -> None:
    with Engine(SCHEMA, shards=2) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(200))
        victim = engine.shards[0]
        survivors = sum(1 for i in range(200) if shard_of(f"p{i}", 2) == 1)
        victim.call("_worker_delay", 0.5)
        outcomes: list[str] = []

        def client() -> None:
            try:
                outcomes.append(str(engine.count("ALL")))
            except ShardError as error:
                outcomes.append(str(error))

        threading.Timer(0.25, lambda: os.kill(victim.pid, signal.SIGKILL)).start()
        run_threads([client, client, client])
        # The one being served fails; the two behind it never started, and the new (empty)
        # worker answers them.
        assert sorted(outcomes) == sorted([str(survivors)] * 2 + [
            "shard 0 died (exit code -9) while serving count; respawned"])
        assert victim.respawns == 1 and victim.pending == type(victim.pending)()


def test_more_callers_than_lanes_all_get_exact_answers() -> None:
    with Engine(SCHEMA, shards=2) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(500))
        callers = 2 * LANES + 3
        answers: list[tuple[int, list[str]]] = []

        def client(k: int) -> None:
            for _ in range(5):
                answers.append((engine.count(f"age < {k}"), engine.ids(f"age = {k}")))

        run_threads([lambda k=k: client(k) for k in range(callers)])
        expected = sorted((sum(1 for i in range(500) if i % 80 < k),
                           sorted(f"p{i}" for i in range(500) if i % 80 == k)) for k in range(callers))
        assert sorted(answers) == sorted(expected * 5)
        assert len(engine.shards[0].pool.free) == LANES  # every lane was given back


def test_a_lane_given_up_on_is_cleaned_by_its_next_holder() -> None:
    """A fan-out that fails in one shard leaves the other shard's reply in its lane; the next
    caller on that lane drops it and reads its own answer."""
    with Engine(SCHEMA, shards=2) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(100))
        engine.shards[1].call("_worker_delay", 0.3)
        threading.Timer(0.1, lambda: os.kill(engine.shards[0].pid, signal.SIGKILL)).start()
        engine.shards[0].call("_worker_delay", 1.0)  # the kill lands while shard 0 serves this
        with pytest.raises(ShardError, match=r"^shard 0 died \(exit code -9\) while serving count; respawned$"):
            engine.count("ALL")
        engine.shards[1].call("_worker_delay", 0)
        survivors = sum(1 for i in range(100) if shard_of(f"p{i}", 2) == 1)
        assert [engine.count("ALL") for _ in range(3)] == [survivors] * 3
        assert engine.shards[1].pending == {}


class Interrupted(BaseException):
    """Raised by the test's SIGALRM handler, as Ctrl-C raises KeyboardInterrupt (not an Exception either)."""


def test_an_interrupted_large_send_is_finished_in_the_background() -> None:
    """An interrupt while a load batch is being written to a busy worker: the frame is still
    written whole (a half-written frame, or a request number the worker never receives, would
    stall that shard for good), the interrupt reaches the caller, and the engine keeps answering."""
    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with Engine(SCHEMA, shards=2) as engine:
        engine.load_profiles(profile_batch(900_000, 10))  # warm: the interrupt must land in the send
        engine.shards[0].call("_worker_delay", 1.0)
        busy = threading.Thread(target=lambda: engine.shards[0].call("stats"))  # worker 0 reads nothing for 1 s
        busy.start()
        time.sleep(0.1)
        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            with pytest.raises(Interrupted):
                engine.load_profiles(profile_batch(0, 40_000))  # far more than a socket buffer for shard 0
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        counts: list[int] = []

        def check() -> None:
            busy.join()
            engine.shards[0].call("_worker_delay", 0)
            counts.append(engine.count("ALL"))

        run_threads([check], timeout_s=20)  # a half-sent frame stalls shard 0 for good
        owned = sum(1 for i in range(40_000) if shard_of(f"p{i:07d}", 2) == 0)
        assert counts == [10 + owned]  # shard 0's batch was sent whole; shard 1's was not sent


def test_workers_report_their_load() -> None:
    with Engine(SCHEMA, shards=2) as engine:
        before = engine.shards.call_all("_worker_load")
        engine.shards[0].call("_worker_delay", 0.05)
        engine.count("ALL")
        after = engine.shards.call_all("_worker_load")
        assert [b["served"] - a["served"] for a, b in zip(before, after)] == [3, 2]  # load calls included
        assert after[0]["busy_s"] - before[0]["busy_s"] >= 0.05


def test_an_idle_worker_sleeps_after_its_short_spin() -> None:
    """After a reply a worker polls for the next request for about a millisecond, then sleeps."""
    with Engine(SCHEMA, shards=2) as engine:
        engine.count("ALL")
        time.sleep(0.05)
        before = [_cpu_seconds(shard.pid) for shard in engine.shards]
        time.sleep(1.0)
        after = [_cpu_seconds(shard.pid) for shard in engine.shards]
        assert all(b - a < 0.05 for a, b in zip(before, after)), (before, after)
        engine.shards.call_all("_worker_spin", 0)
        assert engine.count("ALL") == 0


def test_workers_report_the_cpu_they_answered_on() -> None:
    """A fan-out reads first from workers on the caller's CPU: each worker records its CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    with Engine(SCHEMA, shards=2) as engine:
        assert [shard.worker_cpu() for shard in engine.shards] == [-1, -1]  # nothing answered yet
        for shard, cpu in zip(engine.shards, (cpus[0], cpus[-1])):
            os.sched_setaffinity(shard.pid, {cpu})
        engine.count("ALL")
        engine.count("ALL")  # a worker records a reply's CPU after sending it: the first is recorded by now
        assert [shard.worker_cpu() for shard in engine.shards] == [cpus[0], cpus[-1]]


def test_a_dropped_engine_frees_its_shards_without_a_collection() -> None:
    """No reference cycle keeps a shard (and all its data) alive until the next full GC."""
    gc.disable()
    try:
        engine = Engine(SCHEMA, shards=2, backend="local")
        engine.upsert_profiles([{"id": "a", "age": 3}])
        refs = [weakref.ref(shard) for shard in engine.shards]
        engine.close()
        del engine
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
