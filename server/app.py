"""The segengine gRPC server: wiring, limits, health, reflection, TLS, auth and shutdown.

``SegengineServer(engine, ServerConfig(...))`` serves ``segengine.v1.Segmentation``, the
standard health service (``""`` and the service name: SERVING, NOT_SERVING once shutdown
starts) and server reflection. Limits: requests over ``max_message_bytes`` and calls over
``max_concurrent_rpcs`` in flight (watch streams included) are refused by gRPC with
RESOURCE_EXHAUSTED. A timer thread refreshes time-relative saved segments every
``refresh_ms`` so watchers see exits caused by time alone (reads also refresh them when they
are that much behind).

With ``http_port`` (``segengine serve --http-port N``) the same event loop also serves HTTP on
that port (``server.web``): Prometheus metrics (``server.metrics``; gRPC calls are observed by an
interceptor), ``/healthz`` and ``/readyz``, the JSON API and the web console.

Shutdown (``stop``; SIGTERM/SIGINT with ``install_signal_handlers``): health goes NOT_SERVING,
the server keeps serving for ``drain_s`` (so load balancers notice), then answers every new
call UNAVAILABLE, ends watch streams with UNAVAILABLE, lets the calls in flight finish for up to
``grace_s`` (a client stream in flight may go on sending), then stops gRPC (a call that reaches
it in that instant may see CANCELLED) and closes the engine if it owns it.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as aio_health
from grpc_reflection.v1alpha import reflection

from engine import Engine
from engine.priority import lower_thread_priority

from .bridge import AsyncServicer, add_to_server
from .gate import EngineGate
from .interceptors import AuthInterceptor
from .proto_gen import segmentation_pb2 as pb
from .servicer import SegmentationServicer

if TYPE_CHECKING:  # the optional ``http`` extra (aiohttp, prometheus-client): imported only with an HTTP port
    from .metrics import ServerMetrics
    from .web.app import WebFront

log = logging.getLogger("segengine.server")

#: The GIL switch interval while serving (seconds).
SWITCH_INTERVAL_S = 0.0005
#: After the calls in flight finished, the seconds gRPC itself gets to stop (refusals still answering).
STOP_GRACE_S = 1.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name


@dataclass
class ServerConfig:
    """Settings of one server (the ``segengine serve`` flags)."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0 = pick a free port (see SegengineServer.port)
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 128
    workers: int = 32
    heavy_workers: int = 2  # threads for queries known to be heavy (see server.bridge)
    heavy_nice: int = 10  # how much lower their OS priority is
    token: str | None = None
    admin_token: str | None = None  # merge, erase, export (see server.interceptors); None: not allowed with a token
    audit_log: str | None = None  # file the erasures are appended to (also logged as segengine.audit)
    tls_cert: str | None = None  # PEM files; both or neither
    tls_key: str | None = None
    refresh_ms: int = 1000
    expire_s: float = 60.0  # events past their type's retention are deleted this often
    watch_buffer: int = 10_000
    drain_s: float = 0.0
    grace_s: float = 10.0
    http_port: int | None = None  # metrics, health, the JSON API and the console on this port (0: any); None: off


def add_audit_file(path: str) -> None:
    """Append the audit log (``segengine.audit``: erasures) to ``path``, one line per entry."""
    audit = logging.getLogger("segengine.audit")
    target = os.path.abspath(path)
    if any(getattr(h, "baseFilename", None) == target for h in audit.handlers):
        return
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)


def lower_priority(nice: int) -> None:
    """Make the calling thread a background thread ``nice`` lower in OS priority (Linux: per thread;
    elsewhere a no-op): see engine.priority."""
    lower_thread_priority(nice)


class SegengineServer:
    """A running (after ``start``) gRPC server over one engine.

    The server is a grpc.aio server on an event loop of its own thread (``segengine-loop``);
    blocking engine calls run in a thread pool of ``workers`` threads, queries known to be heavy
    in a pool of ``heavy_workers`` threads at a lower OS priority (see ``server.bridge``).
    The methods of this class are called from any other thread.
    """

    def __init__(self, engine: Engine, config: ServerConfig | None = None, owns_engine: bool = False):
        self.engine = engine
        self.config = config or ServerConfig()
        self.owns_engine = owns_engine
        self.gate = EngineGate(engine)
        engine.refresh_ms = self.config.refresh_ms
        self.pool = futures.ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="segengine-rpc")
        self.heavy_pool = futures.ThreadPoolExecutor(max_workers=max(self.config.heavy_workers, 1),
                                                     thread_name_prefix="segengine-heavy",
                                                     initializer=lower_priority, initargs=(self.config.heavy_nice,))
        self.servicer = SegmentationServicer(self.gate, watch_buffer=self.config.watch_buffer)
        self.servicer.tokens = (self.config.token, self.config.admin_token)
        self.started = time.monotonic()
        self.serving = False  # started and not shutting down (``/readyz``)
        self.metrics: ServerMetrics | None = None
        self.web: WebFront | None = None
        self.http_port: int | None = None
        if self.config.http_port is not None:
            from .metrics import ServerMetrics

            self.metrics = ServerMetrics(self.gate, self.started)
        if self.config.audit_log:
            add_audit_file(self.config.audit_log)
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="segengine-loop", daemon=True)
        self._loop_thread.start()
        try:
            self.port = self._on_loop(self._build())
        except BaseException:
            self._stop_loop()
            raise
        self.stopped = threading.Event()
        self._stopping = threading.Lock()
        self._timer_stop = threading.Event()
        self._timer = threading.Thread(target=self._refresh_loop, name="segengine-refresh", daemon=True)

    def _on_loop(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _build(self) -> int:
        """Create the aio server with its services and bind it (on the loop); the port."""
        size = self.config.max_message_bytes
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.metrics is not None:
            from .metrics import MetricsInterceptor

            interceptors.append(MetricsInterceptor(self.metrics))  # outermost: sees refused calls too
        if self.config.token or self.config.admin_token:
            interceptors.append(AuthInterceptor(self.config.token, self.config.admin_token))
        self.server = grpc.aio.server(
            interceptors=interceptors or None,
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        service = pb.DESCRIPTOR.services_by_name["Segmentation"]
        self.handlers = AsyncServicer(self.servicer, service, self.pool, self.heavy_pool)
        add_to_server(self.handlers, service, pb, self.server)
        self.health = aio_health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        return self._bind()

    def _bind(self) -> int:
        address = f"{self.config.host}:{self.config.port}"
        if bool(self.config.tls_cert) != bool(self.config.tls_key):
            raise ValueError("TLS needs both a certificate and a key")
        if self.config.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())])  # type: ignore[arg-type]
            port = self.server.add_secure_port(address, credentials)
        else:
            port = self.server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return port

    @property
    def address(self) -> str:
        """host:port the server listens on."""
        return f"{self.config.host}:{self.port}"

    @property
    def http_url(self) -> str | None:
        """The base URL of the HTTP port (https with TLS), None without one."""
        if self.http_port is None:
            return None
        return f"{'https' if self.config.tls_cert else 'http'}://{self.config.host}:{self.http_port}/"

    def start(self) -> "SegengineServer":
        """Start serving (returns self)."""
        # A query thread holding the GIL makes the event loop wait up to the switch interval
        # (5 ms by default) before it can answer a Membership call: hand it over every 0.5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # The loaded engine's objects live as long as the server: keep the cyclic collector from
        # walking them again and again (a full collection at 10M profiles pauses for ~300 ms).
        gc.collect()
        gc.freeze()
        self._on_loop(self._start())
        self._timer.start()
        log.info("segengine serving on %s%s", self.address, " (TLS)" if self.config.tls_cert else "")
        if self.http_port is not None:
            log.info("segengine HTTP (metrics, API, console) on %s", self.http_url)
        return self

    async def _start(self) -> None:
        if self.metrics is not None:
            from .web.app import WebFront

            self.web = WebFront(self)
            self.http_port = await self.web.start(self.config.host, self.config.http_port or 0)
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True

    def _refresh_loop(self) -> None:
        interval = max(self.config.refresh_ms, 10) / 1000
        expired_at = time.monotonic()
        while not self._timer_stop.wait(interval):
            if time.monotonic() - expired_at >= self.config.expire_s:
                expired_at = time.monotonic()
                try:
                    self.engine.expire()
                except Exception:  # noqa: BLE001 - the next round expires them
                    if not self.gate.closing:
                        log.exception("expiring events past retention failed")
            if not self.engine.catalog.clocked:
                continue
            try:
                self.gate.refresh()
            except Exception:  # noqa: BLE001 - keep refreshing; the next reads refresh too
                if not self.gate.closing:
                    log.exception("refreshing saved segments failed")

    def stop(self, grace_s: float | None = None) -> None:
        """Shut down gracefully (see the module docstring); idempotent, returns when done."""
        if not self._stopping.acquire(blocking=False):
            self.stopped.wait()
            return
        grace = self.config.grace_s if grace_s is None else grace_s
        self.serving = False
        self._on_loop(self.health.enter_graceful_shutdown())
        if self.config.drain_s > 0:
            threading.Event().wait(self.config.drain_s)
        self._timer_stop.set()
        # new calls are refused (UNAVAILABLE); calls in flight go on for up to ``grace`` seconds
        started = time.monotonic()
        web_done = asyncio.run_coroutine_threadsafe(self.web.stop(), self.loop) if self.web is not None else None
        self.handlers.closing = True
        self.servicer.closing = True
        self.engine.changes.close_all()  # watch streams end with UNAVAILABLE
        self._on_loop(self.handlers.drained(grace))
        # then gRPC stops: what is left are refusals, and calls it received but never handed over
        # (it cancels those; waiting the whole grace for them would only delay the exit)
        remaining = max(0.0, grace - (time.monotonic() - started))
        self._on_loop(self.server.stop(min(remaining, STOP_GRACE_S)))
        if web_done is not None:
            web_done.result()
        self.gate.closing = True
        if self._timer.is_alive():
            self._timer.join(timeout=5)
        self._stop_loop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.heavy_pool.shutdown(wait=True, cancel_futures=True)
        if self.owns_engine:
            self.engine.close()
        log.info("segengine stopped")  # before the event: the main thread exits once it is set
        self.stopped.set()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=5)
        if not self._loop_thread.is_alive():
            self.loop.close()

    def wait(self) -> None:
        """Block until the server has stopped."""
        self.stopped.wait()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (call from the main thread)."""

        def handle(signum: int, frame: object) -> None:
            log.info("signal %d: shutting down", signum)
            threading.Thread(target=self.stop, name="segengine-stop", daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def __enter__(self) -> "SegengineServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace_s=0)
