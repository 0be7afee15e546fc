"""kill -9 of a serving ``segengine serve --data-dir`` process while it writes and delivers to a real
webhook receiver: once the server is back and delivery has drained, the receiver's view (changes
applied in change-id order, repeats skipped) equals the segment's members, 0 missing, 0 extra."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from server.client import SegengineClient
from engine.errors import SegengineError

from test_grpc_shutdown import start_server
from webhook_receiver import Receiver

SECRET = "crash-secret"
PROFILES = 3000


def write_until_killed(address: str, seed: int, stop: threading.Event, written: list[int]) -> None:
    """Upsert batches of random ages (each profile moves in and out of ``age >= 50``) until the server dies."""
    rng = random.Random(seed)
    with SegengineClient(address, timeout=5) as client:
        while not stop.is_set():
            batch = [{"id": f"p{rng.randrange(PROFILES)}", "age": rng.randrange(100)} for _ in range(100)]
            try:
                client.upsert_profiles(batch)
            except SegengineError:
                return
            written[0] += 1


def crash_cycle(data_dir: Path, receiver: Receiver, seed: int, first: bool) -> None:
    """Serve, write and deliver for a random while, then kill -9 the server mid-stream."""
    proc, address = start_server("--data-dir", str(data_dir), "--refresh-ms", "0")
    try:
        if first:
            with SegengineClient(address) as client:
                client.create_segment("hot", "age >= 50")
                client.add_destination("hot", receiver.url, SECRET, batch_size=40, retry_base_s=0.01,
                                       retry_max_s=0.2)
        stop, written = threading.Event(), [0]
        writer = threading.Thread(target=write_until_killed, args=(address, seed, stop, written))
        writer.start()
        received = len(receiver.batches)
        receiver.wait_for(lambda: written[0] >= 5 and len(receiver.batches) >= received + 3, timeout_s=60)
        time.sleep(random.Random(seed).uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        stop.set()
        writer.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def check_drained(data_dir: Path, receiver: Receiver) -> dict[str, int]:
    """Serve again, wait for delivery to drain, and compare the receiver's view with the members."""
    proc, address = start_server("--data-dir", str(data_dir), "--refresh-ms", "0")
    try:
        with SegengineClient(address) as client:
            deadline = time.monotonic() + 60
            while (stats := client.list_destinations()[0])["pending"] or stats["state"] != "idle":
                assert time.monotonic() < deadline, client.list_destinations()
                time.sleep(0.05)
            members = set(client.ids("SEGMENT('hot')"))
            view = receiver.view("hot")
            assert sorted(members - view) == [], "members the receiver is missing"
            assert sorted(view - members) == [], "ids the receiver holds that are not members"
            assert receiver.bad_signatures == 0
            return {"members": len(members), "batches": len(receiver.batches), "duplicates": receiver.duplicates,
                    "gaps": receiver.gaps}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_kill_9_mid_stream_then_the_receiver_view_equals_the_members(tmp_path: Path) -> None:
    receiver = Receiver(SECRET)
    receiver.delay_s = 0.005  # a receiver slower than the writer: a backlog is always in flight
    try:
        crash_cycle(tmp_path, receiver, seed=1, first=True)
        result = check_drained(tmp_path, receiver)
        assert result["members"] > 0
    finally:
        receiver.stop()


@pytest.mark.slow
def test_five_kill_9_cycles_then_the_receiver_view_equals_the_members(tmp_path: Path) -> None:
    receiver = Receiver(SECRET)
    receiver.delay_s = 0.005
    try:
        for cycle in range(5):
            crash_cycle(tmp_path, receiver, seed=cycle, first=cycle == 0)
        result = check_drained(tmp_path, receiver)
        assert result["members"] > 0
    finally:
        receiver.stop()
