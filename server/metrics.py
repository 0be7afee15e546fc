"""Prometheus metrics of one server: call latencies, the engine's state, the process.

``ServerMetrics`` owns a ``CollectorRegistry`` of its own (two servers in one process never
share series). Calls are observed as they end, by ``MetricsInterceptor`` (gRPC) and by the
HTTP API (``server.web``), into one histogram labelled by transport, method and status code.
Everything else is read when scraped, by ``EngineCollector``, from the plain counters the
engine keeps (``engine.observed``), its publish lock, its data directory and its shards: the
engine never imports a metrics library. docs/operations.md lists every metric.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import grpc
from prometheus_client import (CollectorRegistry, Gauge, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from engine.errors import SegengineError

log = logging.getLogger("segengine.server")

#: Upper bounds (seconds) of the call latency buckets: a Membership takes ~0.1 ms, a Count 1-50 ms.
RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: How long a scrape waits for the engine's sizes (a long write holds them); then the last known ones.
STATS_WAIT_S = 1.0
SERVICE_PREFIX = "/segengine.v1.Segmentation/"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The metrics registry of one server and the call observations (see the module docstring)."""

    def __init__(self, gate: Any, started: float | None = None):
        disable_created_metrics()  # no ``*_created`` series (process-wide: Prometheus ignores them in this format)
        self.registry = CollectorRegistry(auto_describe=False)
        self.rpc_seconds = Histogram("segengine_rpc_duration_seconds", "Calls by transport, method and status code",
                                     ("transport", "method", "code"), buckets=RPC_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("segengine_rpc_in_flight", "Calls being served", ("transport",), registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.engine_collector = EngineCollector(gate, time.monotonic() if started is None else started)
        self.registry.register(self.engine_collector)
        self._series: dict[tuple[str, str, str], Any] = {}
        self._gauges = {name: self.in_flight.labels(name) for name in ("grpc", "http")}

    def call_started(self, transport: str) -> None:
        """A call began (``transport``: grpc or http)."""
        self._gauges[transport].inc()

    def call_ended(self, transport: str, method: str, code: str, seconds: float) -> None:
        """A call ended with status ``code`` (a gRPC status name) after ``seconds``."""
        self._gauges[transport].dec()
        key = (transport, method, code)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self.rpc_seconds.labels(transport, method, code)
        series.observe(seconds)

    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format (blocks on the engine briefly: call off the loop)."""
        return generate_latest(self.registry)


def code_name(code: Any) -> str:
    """A gRPC status (a StatusCode, or None for OK) as its name."""
    if code is None:
        return "OK"
    return getattr(code, "name", str(code))


def error_code(error: BaseException) -> str:
    """The gRPC status name an error answers with (``engine.errors``; anything else: INTERNAL)."""
    return error.grpc_status if isinstance(error, SegengineError) else "INTERNAL"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Observes every gRPC call's latency and status code into ``ServerMetrics``.

    The wrapped handler of each method is built once and reused while the method's handler is the
    same object (a call the auth interceptor refuses gets a handler of its own, wrapped for it).
    """

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        cached = self._wrapped.get(full)
        if cached is not None and cached[0] is handler:
            return cached[1]
        name = full[len(SERVICE_PREFIX):] if full.startswith(SERVICE_PREFIX) else full.lstrip("/")
        wrapped = self._wrap(handler, name)
        self._wrapped[full] = (handler, wrapped)  # one entry per method the server has
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
        metrics = self.metrics
        codecs = (handler.request_deserializer, handler.response_serializer)

        def ended(context: grpc.aio.ServicerContext, started: float, failed: BaseException | None) -> None:
            code = context.code()
            if code is None and failed is not None:
                code = grpc.StatusCode.CANCELLED if isinstance(failed, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN
            metrics.call_ended("grpc", name, code_name(code), time.perf_counter() - started)

        if handler.unary_unary or handler.stream_unary:
            behaviour = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failed = time.perf_counter(), None
                metrics.call_started("grpc")
                try:
                    result = behaviour(request, context)
                    return await result if inspect.isawaitable(result) else result
                except BaseException as error:
                    failed = error
                    raise
                finally:
                    ended(context, started, failed)

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return make(unary, *codecs)

        behaviour = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started, failed = time.perf_counter(), None
            metrics.call_started("grpc")
            try:
                messages = behaviour(request, context)
                if hasattr(messages, "__aiter__"):
                    async for message in messages:
                        yield message
                else:
                    for message in messages:
                        yield message
            except BaseException as error:
                failed = error
                raise
            finally:
                ended(context, started, failed)

        make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make(stream, *codecs)


class EngineCollector:
    """The engine's state, read at each scrape (see docs/operations.md for what each metric means)."""

    def __init__(self, gate: Any, started: float):
        self.gate = gate
        self.started = started
        self._sizes: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        engine, gate = self.gate.engine, self.gate
        publish = engine.publish
        waiting = GaugeMetricFamily("segengine_engine_waiting", "Calls waiting for the engine's publish lock",
                                    labels=("kind",))
        waiting.add_metric(("read",), publish.blocked)
        waiting.add_metric(("write",), publish.writers_waiting)
        yield waiting
        yield GaugeMetricFamily("segengine_queries_running", "Queries being evaluated", value=gate.queries_running)
        batches = CounterMetricFamily("segengine_write_batches", "Write batches applied, by kind", labels=("kind",))
        records = CounterMetricFamily("segengine_write_records", "Records applied by write batches, by kind",
                                      labels=("kind",))
        for kind, (count, total) in sorted(engine.writes.totals().items()):
            batches.add_metric((kind,), count)
            records.add_metric((kind,), total)
        yield batches
        yield records
        yield from self._sizes_metrics(engine)
        restarts = CounterMetricFamily("segengine_shard_restarts", "Times a shard worker was restarted after it died",
                                       labels=("shard",))
        for shard, count in enumerate(engine.shards.respawns()):
            restarts.add_metric((str(shard),), count)
        yield restarts
        yield from self._shard_memory(engine)
        yield GaugeMetricFamily("segengine_uptime_seconds", "Seconds since the server started",
                                value=time.monotonic() - self.started)
        if engine.durable is not None:
            yield from self._durability(engine.durable)

    def _sizes_metrics(self, engine: Any) -> Iterator[Metric]:
        try:
            with engine.publish.deadline(STATS_WAIT_S):
                stats = engine.stats()
            self._sizes = {"profiles": stats["profiles"], "events": stats["events"]}
        except SegengineError:  # a long write holds the engine: the last known sizes
            log.debug("metrics: engine sizes not read", exc_info=True)
        except Exception:  # noqa: BLE001 - a scrape never fails for want of the sizes
            log.warning("metrics: reading the engine's sizes failed", exc_info=True)
        for name, meaning in (("profiles", "Live profiles"), ("events", "Events held")):
            if name in self._sizes:
                yield GaugeMetricFamily(f"segengine_{name}", meaning, value=self._sizes[name])
        yield GaugeMetricFamily("segengine_saved_segments", "Saved segments", value=len(engine.catalog))
        yield GaugeMetricFamily("segengine_watchers", "Open saved-segment change streams",
                                value=len(engine.changes.subscribers))

    @staticmethod
    def _shard_memory(engine: Any) -> Iterator[Metric]:
        memory = GaugeMetricFamily("segengine_shard_resident_memory_bytes",
                                   "Resident memory of each shard worker process", labels=("shard",))
        for shard_no, shard in enumerate(getattr(engine.shards, "shards", ())):
            rss = resident_bytes(getattr(shard, "pid", None))
            if rss is not None:
                memory.add_metric((str(shard_no),), rss)
        yield memory

    @staticmethod
    def _durability(durable: Any) -> Iterator[Metric]:
        pipeline = durable.pipeline
        if pipeline is not None:
            latency = pipeline.commit_latency
            cumulative = latency.cumulative()
            buckets = [(repr(float(bound)), n) for bound, n in zip(latency.bounds, cumulative)]
            buckets.append(("+Inf", cumulative[-1]))
            yield HistogramMetricFamily("segengine_wal_commit_seconds", "Write-ahead log group commits (fsync included)",
                                        buckets=buckets, sum_value=latency.total)
            yield GaugeMetricFamily("segengine_wal_bytes_since_snapshot", "Bytes logged since the last snapshot",
                                    value=durable.log_bytes())
        if durable.last_snapshot is not None:
            yield GaugeMetricFamily("segengine_snapshot_duration_seconds", "Duration of the last snapshot this run",
                                    value=durable.last_snapshot["seconds"])
        if durable.manifest is not None:
            age = time.time() - durable.manifest["created_ms"] / 1000
            yield GaugeMetricFamily("segengine_snapshot_age_seconds", "Seconds since the newest snapshot was taken",
                                    value=max(age, 0.0))


def resident_bytes(pid: int | None) -> int | None:
    """Resident memory of process ``pid`` in bytes (Linux ``/proc``; None elsewhere or when gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


__all__ = ["CONTENT_TYPE", "EngineCollector", "MetricsInterceptor", "ServerMetrics", "code_name", "error_code",
           "resident_bytes"]
