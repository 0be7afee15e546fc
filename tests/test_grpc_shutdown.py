"""``segengine serve`` as a process: quick start with --demo, and graceful shutdown on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from server.client import RpcError, SegengineClient

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
