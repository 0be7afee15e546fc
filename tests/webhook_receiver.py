"""A real webhook receiver for tests and benchmarks: an HTTP server on 127.0.0.1 (ephemeral port).

It verifies each request's signature, records every batch it acknowledges, and keeps the
receiver's view of each segment the way a consumer should: apply a change only if its change id
is above the last one applied (so a repeated batch changes nothing), ``entered`` adds the id,
``exited`` removes it. ``fail_next(n, status)`` answers the next ``n`` requests with ``status``
(without applying them); ``stop()``/``start()`` take it down and up on the same port. With
``keep_alive=False`` it closes every connection after its answer.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A webhook receiver (see the module docstring)."""

    def __init__(self, secret: str, port: int = 0, keep_alive: bool = True):
        self.secret = secret.encode()
        self.lock = threading.Lock()
        self.batches: list[dict[str, Any]] = []
        self.members: dict[str, set[str]] = {}
        self.last_change: dict[str, int] = {}
        self.requests = 0
        self.bad_signatures = 0
        self.torn = 0  # requests cut short by the sender's death
        self.duplicates = 0
        self.gaps = 0  # change ids skipped (a batch sent before a restart and never received)
        self.delay_s = 0.0  # seconds each request takes
        self.failures_left = 0
        self.fail_status = 500
        self.port = port
        self.keep_alive = keep_alive
        self.connections: set[socket.socket] = set()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        """Listen (again) on ``self.port`` (0: an ephemeral one)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections.add(self.connection)

            def finish(self) -> None:
                with receiver.lock:
                    receiver.connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (kill -9): nothing to answer
                    with receiver.lock:
                        receiver.torn += 1
                    self.close_connection = True
                    return
                status = receiver.handle(body, self.headers.get("X-Segengine-Signature", ""))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                if not receiver.keep_alive:
                    self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening (requests then fail with a connection error)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` without applying them."""
        with self.lock:
            self.failures_left, self.fail_status = count, status

    def handle(self, body: bytes, signature: str) -> int:
        """Check, record and apply one request; the status to answer."""
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.requests += 1
            if not hmac.compare_digest(expected, signature):
                self.bad_signatures += 1
                return 401
            if self.failures_left:
                self.failures_left -= 1
                return self.fail_status
            batch = json.loads(body)
            self.batches.append(batch)
            for change in batch["changes"]:
                key = batch["destination"]
                if change["change_id"] <= self.last_change.get(key, 0):
                    self.duplicates += 1
                    continue
                if change["change_id"] != self.last_change.get(key, 0) + 1:
                    self.gaps += 1
                self.last_change[key] = change["change_id"]
                members = self.members.setdefault(change["segment"], set())
                if change["change"] == "entered":
                    members.add(change["profile_id"])
                else:
                    members.discard(change["profile_id"])
            return 200

    def view(self, segment: str) -> set[str]:
        """The receiver's members of ``segment``."""
        with self.lock:
            return set(self.members.get(segment, set()))

    def changes(self) -> list[dict[str, Any]]:
        """Every change of every acknowledged batch, in arrival order (duplicates included)."""
        with self.lock:
            return [change for batch in self.batches for change in batch["changes"]]

    def wait_for(self, predicate: Any, timeout_s: float = 20.0) -> None:
        """Wait until ``predicate()`` holds (AssertionError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "the receiver did not get what was expected in time"
            time.sleep(0.01)
