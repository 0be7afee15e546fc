"""``segengine serve`` as a process: quick start with --demo, and graceful shutdown on SIGTERM
(one in-flight stream; and a load of writes and queries, checked against the reopened data directory)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.errors import SegengineError
from engine.schema import CONTRACT_SCHEMA
from server.client import RpcError, SegengineClient

from durability_harness import QUERY_NOW, Acks, batch_id, check, event_batch, profile_batch

ROOT = Path(__file__).resolve().parent.parent


def start_server(*flags: str) -> tuple[subprocess.Popen, str]:
    """``python -m server.cli serve --port 0 ...`` and the address it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", "0", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("segengine serving on "):
            return proc, line.split()[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")


def test_demo_quick_start_and_graceful_sigterm():
    proc, address = start_server("--demo", "2000", "--drain-s", "1.0", "--grace-s", "20")
    try:
        client = SegengineClient(address)
        assert client.count("ALL") == 2000
        assert {s.name for s in client.list_segments()} >= {"cart_abandoners_7d", "winback_fr_be"}
        first_sent, resume = threading.Event(), threading.Event()
        result: list = []

        def batches():
            yield "profiles", [{"id": f"late{i}"} for i in range(10)]
            first_sent.set()
            resume.wait(30)
            yield "events", [{"id": f"late{i}", "event": "purchase", "ts": 1} for i in range(10)]

        writer = threading.Thread(target=lambda: result.append(client.write(batches())))
        writer.start()
        assert first_sent.wait(10)
        time.sleep(0.2)  # the first message reached the server: the call is in flight
        os.kill(proc.pid, signal.SIGTERM)
        probe = SegengineClient(address, timeout=2)
        deadline = time.monotonic() + 5
        while probe.health() != "NOT_SERVING":
            assert time.monotonic() < deadline, "health never went NOT_SERVING"
            time.sleep(0.05)
        time.sleep(1.5)  # past the drain: new calls are refused, the stream goes on
        with pytest.raises(RpcError, match="UNAVAILABLE"):
            probe.count("ALL")
        resume.set()
        writer.join(30)
        assert result == [20]  # the in-flight call finished
        assert proc.wait(timeout=30) == 0
        assert "segengine stopped" in proc.stderr.read()
        probe.close()
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class LoadRecord:
    """Every call of a load run: (start, end, kind, status name or "OK"), thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[float, float, str, str]] = []

    def add(self, start: float, kind: str, status: str) -> None:
        with self.lock:
            self.calls.append((start, time.monotonic(), kind, status))


def run_load(client: SegengineClient, acks: Acks, record: LoadRecord, stop: threading.Event) -> list[threading.Thread]:
    """Writers (unary upserts/events in two threads, Write streams in one) and two query threads,
    each until its first refused call or ``stop``; acknowledged writes go to ``acks``."""

    def call(kind: str, fn, *args) -> bool:
        start = time.monotonic()
        try:
            fn(*args)
        except RpcError as error:
            record.add(start, kind, error.code.name)
            return False
        except SegengineError as error:
            record.add(start, kind, type(error).__name__)
            return False
        record.add(start, kind, "OK")
        return True

    def unary_writer(thread: int) -> None:
        for i in range(100_000):
            if stop.is_set() or not call("upsert", client.upsert_profiles, profile_batch(0, thread, i)):
                return
            acks.profiles.add(batch_id(0, thread, i))
            if not call("track", client.track_events, event_batch(0, thread, i)):
                return
            acks.events.add(batch_id(0, thread, i))

    def stream_writer(thread: int) -> None:
        for i in range(100_000):
            batches = [("profiles", profile_batch(0, thread, i)), ("events", event_batch(0, thread, i))]
            if stop.is_set() or not call("write", client.write, batches):
                return
            acks.profiles.add(batch_id(0, thread, i))
            acks.events.add(batch_id(0, thread, i))

    def reader(query: str) -> None:
        while not stop.is_set() and call("count", client.count, query, QUERY_NOW):
            pass

    threads = [threading.Thread(target=unary_writer, args=(0,)), threading.Thread(target=unary_writer, args=(1,)),
               threading.Thread(target=stream_writer, args=(2,)),
               threading.Thread(target=reader, args=("DID(page_view) AND age < 4",)),
               threading.Thread(target=reader, args=("signup_at >= 0 OR country IS NOT NULL",))]
    for thread in threads:
        thread.start()
    return threads


def test_sigterm_under_load_finishes_accepted_calls_and_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """SIGTERM while writers and readers run: what clients see, what survives, how long it takes.

    Clients see: every call that started before the signal (and during the drain, when the server
    still serves, NOT_SERVING on health) succeeds; calls after the drain are refused with
    UNAVAILABLE (or CANCELLED by gRPC for a call reaching it in the instant it stops). The process exits 0 within drain + grace. Reopened, the data
    directory holds every acknowledged write, and no batch half-applied or twice."""
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(CONTRACT_SCHEMA))
    drain_s, grace_s = 1.0, 15.0
    proc, address = start_server("--data-dir", str(tmp_path / "data"), "--schema", str(schema_file),
                                 "--drain-s", str(drain_s), "--grace-s", str(grace_s), "--refresh-ms", "0")
    acks, record, stop = Acks(), LoadRecord(), threading.Event()
    try:
        with SegengineClient(address, timeout=60) as client:
            threads = run_load(client, acks, record, stop)
            deadline = time.monotonic() + 60
            while len(acks.profiles) < 30 and time.monotonic() < deadline:  # the load is under way
                time.sleep(0.05)
            signalled = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            code = proc.wait(timeout=drain_s + grace_s + 30)
            exit_s = time.monotonic() - signalled
            stop.set()
            for thread in threads:
                thread.join(60)
        assert code == 0 and "segengine stopped" in (proc.stderr.read() if proc.stderr else "")

        assert exit_s <= drain_s + grace_s, exit_s
        before = [c for c in record.calls if c[0] < signalled + drain_s / 2]
        after = [c for c in record.calls if c[0] >= signalled + drain_s / 2]
        assert len(acks.profiles) >= 30 and {c[2] for c in before} == {"upsert", "track", "write", "count"}
        assert [c for c in before if c[3] != "OK"] == []  # accepted before the signal (or while draining): finished
        assert {c[3] for c in after} <= {"OK", "UNAVAILABLE", "CANCELLED"}  # CANCELLED: reached gRPC as it stopped
        assert sum(c[3] == "UNAVAILABLE" for c in after) >= 1  # each thread ended on a refusal (or on stop)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1, data_dir=str(tmp_path / "data")) as engine:
        summary = check(engine, acks)
    assert summary["acked"] == len(acks.profiles | acks.events) > 0
