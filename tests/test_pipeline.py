"""Requests to worker processes from many callers at once: lanes, large frames, faults, idle
workers, reads served together and writes alone.

Every test uses real worker processes. See engine/shard/process.py for the protocol: each
caller takes a lane (its own socket to every worker), sends into it and reads its own replies;
a worker admits the requests of all lanes in the order they were numbered and serves them in
the order of engine/shard/scheduler.py. Slow shards come from tests/shard_hooks.py.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path
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
from shard_hooks import Delays

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)


@pytest.fixture()
def delays(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Delays:
    """Workers started in the test can be slowed down."""
    return Delays.install(monkeypatch, tmp_path)


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


def test_requests_wait_in_the_workers_socket_while_it_is_busy(delays: Delays) -> None:
    with Engine(SCHEMA, shards=2) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(100))
        shard = engine.shards[0]
        delays.set(0, 0.3)
        depths: list[int] = []
        counts: list[int] = []
        clients = [lambda: counts.append(engine.count("age < 40")) for _ in range(4)]

        def watch() -> None:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                depths.append(len(shard.pending))
                time.sleep(0.01)

        run_threads(clients + [watch])
        delays.set(0, 0)
        assert counts == [60] * 4  # profiles p0-p39 and p80-p99
        assert max(depths) == 4  # all four were sent at once, not queued in the coordinator


def test_requests_queued_behind_a_killed_one_are_sent_to_the_new_worker(delays: Delays) -> None:
    with Engine(SCHEMA, shards=2) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(200))
        victim = engine.shards[0]
        survivors = sum(1 for i in range(200) if shard_of(f"p{i}", 2) == 1)
        delays.set(0, 0.5)
        outcomes: list[str] = []

        def client() -> None:
            try:
                outcomes.append(str(engine.count("ALL")))
            except ShardError as error:
                outcomes.append(str(error))

        def kill() -> None:
            os.kill(victim.pid, signal.SIGKILL)
            delays.set(0, 0)

        threading.Timer(0.25, kill).start()
        run_threads([client, client, client, client])
        # The three being served (a worker runs up to three queries at once) fail; the one behind
        # them never started, and the new (empty) worker answers it.
        assert sorted(outcomes) == sorted([str(survivors)] + [
            "shard 0 died (exit code -9) while serving count; respawned"] * 3)
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


def test_a_lane_given_up_on_is_cleaned_by_its_next_holder(delays: Delays) -> None:
    """A fan-out that fails in one shard leaves the other shard's reply in its lane; the next
    caller on that lane drops it and reads its own answer."""
    with Engine(SCHEMA, shards=2) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(100))
        delays.set(1, 0.3)
        delays.set(0, 1.0)

        def kill() -> None:  # while shard 0 serves the count
            os.kill(engine.shards[0].pid, signal.SIGKILL)
            delays.set(0, 0)

        threading.Timer(0.1, kill).start()
        with pytest.raises(ShardError, match=r"^shard 0 died \(exit code -9\) while serving count; respawned$"):
            engine.count("ALL")
        delays.set(1, 0)
        survivors = sum(1 for i in range(100) if shard_of(f"p{i}", 2) == 1)
        assert [engine.count("ALL") for _ in range(3)] == [survivors] * 3
        assert engine.shards[1].pending == {}


class Interrupted(BaseException):
    """Raised by the test's SIGALRM handler, as Ctrl-C raises KeyboardInterrupt (not an Exception either)."""


def test_an_interrupted_large_send_is_finished_in_the_background() -> None:
    """An interrupt while a load batch is being written to a stopped worker: the frame is still
    written whole (a half-written frame, or a request number the worker never receives, would
    stall that shard for good), the interrupt reaches the caller, and the engine keeps answering."""
    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with Engine(SCHEMA, shards=2) as engine:
        engine.load_profiles(profile_batch(900_000, 10))  # warm: the interrupt must land in the send
        worker = engine.shards[0].pid
        os.kill(worker, signal.SIGSTOP)  # worker 0 reads nothing until SIGCONT
        resume = threading.Timer(1.0, os.kill, (worker, signal.SIGCONT))
        resume.start()
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
            resume.join()
            counts.append(engine.count("ALL"))

        run_threads([check], timeout_s=20)  # a half-sent frame (or one cut by another) stalls shard 0 for good
        owned = sum(1 for i in range(40_000) if shard_of(f"p{i:07d}", 2) == 0)
        assert counts == [10 + owned]  # shard 0's batch was sent whole; shard 1's was not sent


def test_workers_report_their_load(delays: Delays) -> None:
    with Engine(SCHEMA, shards=2) as engine:
        before = engine.shards.call_all("_worker_load")
        delays.set(0, 0.05)
        engine.count("ALL")
        after = engine.shards.call_all("_worker_load")
        assert [b["served"] - a["served"] for a, b in zip(before, after)] == [2, 2]  # the first load call included
        assert after[0]["busy_s"] - before[0]["busy_s"] >= 0.05


def test_an_idle_worker_sleeps() -> None:
    """A worker that has answered everything uses no CPU until the next request."""
    with Engine(SCHEMA, shards=2) as engine:
        engine.count("ALL")
        time.sleep(0.05)
        before = [_cpu_seconds(shard.pid) for shard in engine.shards]
        time.sleep(1.0)
        after = [_cpu_seconds(shard.pid) for shard in engine.shards]
        assert all(b - a < 0.05 for a, b in zip(before, after)), (before, after)
        assert engine.count("ALL") == 0


def test_a_point_read_goes_ahead_of_running_and_queued_queries(delays: Delays) -> None:
    """With a worker busy on one long count and another waiting behind it, membership and
    profile calls to that worker are answered while both counts still run."""
    with Engine(SCHEMA, shards=1, backend="process") as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(100))
        engine.create_segment("young", "age < 40")
        delays.set(0, 1.0, "count")
        counts: list[int] = []
        long = [threading.Thread(target=lambda: counts.append(engine.count("ALL"))) for _ in range(2)]
        for thread in long:
            thread.start()
        time.sleep(0.2)  # the first count is running, the second waits for it
        answers = [engine.membership("p1"), engine.membership("p41"), engine.profile("p2")["age"]]
        still_running = [thread.is_alive() for thread in long]
        for thread in long:
            thread.join()
        assert answers == [["young"], [], 2]
        assert still_running == [True, True]
        assert counts == [100, 100]


def test_a_snapshot_capture_keeps_writes_out_but_not_reads(delays: Delays, tmp_path: Path) -> None:
    """While a worker captures its shard for a snapshot, membership, profile and count calls to it
    are answered; a write waits for the capture, and the snapshot holds the state before it."""
    with Engine(SCHEMA, shards=1, backend="process", data_dir=str(tmp_path / "d")) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(100))
        engine.create_segment("young", "age < 40")
        delays.set(0, 1.0, "snapshot_capture")
        snapshot = threading.Thread(target=engine.snapshot)
        snapshot.start()
        time.sleep(0.3)  # the capture is running
        began = time.monotonic()
        answers = [engine.membership("p1"), engine.membership("p41"), engine.profile("p2")["age"],
                   engine.count("age < 40")]
        read_s = time.monotonic() - began
        capturing = snapshot.is_alive()
        engine.upsert_profiles([{"id": "q0", "age": 1}])
        write_s = time.monotonic() - began
        snapshot.join(10)
        delays.set(0, 0)
        assert answers == [["young"], [], 2, 60] and capturing
        assert read_s < 0.5 <= write_s  # the reads did not wait for the capture; the write did
    with Engine(SCHEMA, shards=1, backend="process", data_dir=str(tmp_path / "d")) as engine:
        assert engine.count("age < 40") == 61 and engine.membership("q0") == ["young"]


def test_a_write_waits_for_earlier_reads_and_later_reads_wait_for_it(delays: Delays) -> None:
    """Writes keep the order the coordinator numbered them in against every other request, except
    that a point read passes a write waiting for a running query (engine.concurrency)."""
    with Engine(SCHEMA, shards=1, backend="process") as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": 1} for i in range(10))
        delays.set(0, 0.6, "count")
        delays.set(0, 0.3, "apply_logged")
        finished: list[tuple[str, object]] = []

        def count() -> None:
            finished.append(("count", engine.count("ALL")))

        def upsert() -> None:
            finished.append(("upsert", engine.upsert_profiles({"id": f"q{i}", "age": 2} for i in range(5))))

        def profile() -> None:
            finished.append(("profile", engine.profile("p0")["age"]))

        def later_query() -> None:
            finished.append(("later query", engine.ids("age = 2")))

        threads = [threading.Thread(target=target) for target in (count, upsert, profile, later_query)]
        for thread in threads:
            thread.start()
            time.sleep(0.1)  # numbered in this order
        for thread in threads:
            thread.join(10)
        assert finished == [("profile", 1), ("count", 10), ("upsert", 5),
                            ("later query", [f"q{i}" for i in range(5)])]


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
