"""Delivery: one thread per destination posts its outbox's batches, in order, until acknowledged.

A batch is a JSON object ``{"destination", "segment", "changes": [{"change_id", "segment",
"profile_id", "change": "entered"|"exited", "at_ms"[, "erased": true]}, ...]}`` sent as
``POST url`` with the headers ``Content-Type: application/json``, ``X-Segengine-Destination``
and ``X-Segengine-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body bytes under the
destination's secret. A 2xx answer acknowledges the batch; a connection error, a timeout or any
other status is a failure, and the same batch is sent again after a random wait of up to
``min(retry_max_s, retry_base_s * 2**(failures - 1))`` (exponential backoff, full jitter). The
next batch is formed only once the previous one is acknowledged.

>>> signature(b"secret", b'{"changes":[]}')
'sha256=3a6fdf1c137113d4b27c25d2fc2c6fdb8a7d27e28cf6cf6fd5adac9084cb070b'
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import random
import threading
import urllib.parse
from typing import Callable

from ..errors import BadRequest
from .outbox import Batch, Outbox

log = logging.getLogger("segengine.destinations")

SIGNATURE_HEADER = "X-Segengine-Signature"
DESTINATION_HEADER = "X-Segengine-Destination"
#: Seconds the delivery thread waits for a change before it looks again (it is woken on a change).
IDLE_WAIT_S = 0.5


def signature(secret: bytes, body: bytes) -> str:
    """The signature header value of ``body``: ``sha256=`` and the hex HMAC-SHA256 under ``secret``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def check_url(url: str) -> urllib.parse.SplitResult:
    """The parts of a webhook URL (BadRequest unless it is http(s)://host[:port][/path])."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as error:
        raise BadRequest(f"bad destination url {url!r}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"bad destination url {url!r}: expected http://host[:port]/path or https://...")
    return parts


def backoff_s(failures: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: a random wait in [0, min(max_s, base_s * 2**(failures - 1))].

    >>> backoff_s(3, 0.5, 1.0, random.Random(1)) <= 1.0
    True
    """
    return rng.uniform(0.0, min(max_s, base_s * (2.0 ** max(0, failures - 1))))


class NotSent(Exception):
    """A request that never left: the connection could not be opened."""


class Poster:
    """A keep-alive HTTP(S) connection to one webhook URL."""

    def __init__(self, url: str, timeout_s: float):
        parts = check_url(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout_s = timeout_s
        self.connection: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        """Open the connection unless it is open (NotSent if it cannot be opened)."""
        if self.connection is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self.connection = cls(self.host, self.port, timeout=self.timeout_s)
        if self.connection.sock is None:
            try:
                self.connection.connect()
            except OSError as exc:
                self.close()
                raise NotSent(f"{type(exc).__name__}: {exc}") from exc

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body`` on the open connection; the response status (raises OSError / HTTPException on a
        transport failure)."""
        assert self.connection is not None, "connect() first"
        try:
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
            response.read()
            if response.will_close:
                self.close()
            return response.status
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection (the next post opens a new one)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class Deliverer:
    """The thread that delivers one outbox (``resync(outbox)`` rebuilds it from the segment's members)."""

    def __init__(self, outbox: Outbox, resync: Callable[[Outbox], None], seed: int | None = None):
        self.outbox = outbox
        self.resync = resync
        self.stop = threading.Event()
        self.rng = random.Random(seed)
        definition = outbox.definition
        self.poster = Poster(definition.url, definition.options.timeout_s)
        self.secret = definition.secret.encode("utf-8")
        self.thread = threading.Thread(target=self._run, name=f"destination-{definition.name}", daemon=True)

    def start(self) -> None:
        """Start delivering."""
        self.thread.start()

    def close(self, wait_s: float = 5.0) -> None:
        """Stop after the request in progress (waits at most ``wait_s``)."""
        self.stop.set()
        with self.outbox.cond:
            self.outbox.closed = True
            self.outbox.cond.notify_all()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(wait_s)
        if not self.thread.is_alive():  # else the thread closes it when its request ends
            self.poster.close()

    def _run(self) -> None:
        try:
            self._deliver()
        finally:
            self.poster.close()

    def _deliver(self) -> None:
        outbox = self.outbox
        options = outbox.definition.options
        while not self.stop.is_set():
            try:
                if outbox.needs_resync and outbox.inflight is None:
                    self.resync(outbox)
                    continue
                batch = outbox.next_batch(IDLE_WAIT_S)
                if batch is None:
                    continue
                if not batch.changes:  # erasure emptied it
                    outbox.acknowledge(batch)
                    continue
                error = self._send(batch)
            except Exception as exc:  # noqa: BLE001 - a store or engine failure: keep the thread, retry later
                log.exception("destination %s: delivery step failed", outbox.name)
                error, batch = f"{type(exc).__name__}: {exc}", None
            if error is None:
                continue
            if batch is not None:
                outbox.failed(batch, error)
                failures = batch.attempts
            else:
                failures = 1
            self.stop.wait(backoff_s(failures, options.retry_base_s, options.retry_max_s, self.rng))
            if batch is not None and not self.stop.is_set():
                outbox.counters.retries += 1

    def _send(self, batch: Batch) -> str | None:
        """Post ``batch`` once; None if acknowledged, else the failure."""
        outbox = self.outbox
        try:
            self.poster.connect()
        except NotSent as exc:
            return str(exc)
        with outbox.cond:
            body = batch.encode(outbox.name, outbox.definition.segment)
            batch.maybe_seen = True  # from now on an erasure tells the receiver (see Outbox.erase)
        headers = {"Content-Type": "application/json", DESTINATION_HEADER: outbox.name,
                   SIGNATURE_HEADER: signature(self.secret, body)}
        try:
            status = self.poster.post(body, headers)
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= status < 300:
            outbox.acknowledge(batch)
            return None
        return f"HTTP {status}"
