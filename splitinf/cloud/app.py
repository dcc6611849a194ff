"""The tail server as a process runs it: ``create_server(config) -> (TailServer, port)``.

``create_server`` loads and warms up the repository, then starts gRPC (the V2 servicer, health and
reflection) and the Prometheus endpoint. ``TailServer`` is its lifecycle: ``drain()``, ``stop()``.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from splitinf.cloud.auth import token_interceptors
from splitinf.cloud.config import ServerConfig
from splitinf.cloud.dataplane import DataPlane
from splitinf.cloud.metrics import ServerMetrics
from splitinf.cloud.repository import load_repository
from splitinf.cloud.servicer import InferenceServicer, add_inference_servicer
from splitinf.cloud.streams import StreamRegistry
from splitinf.errors import ConfigError
from splitinf.protocol.services import SERVICE_NAME, add_health_and_reflection, bind_address

__all__ = ["TailServer", "allocator_tuned", "create_server", "server_options", "trim_heap", "tune_allocator"]

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Buffers up to 2 MiB (0.8 MB tensors, with room) come from the heap; larger ones are mmapped and
# unmapped on free, and a heap top over twice that is trimmed, so one large request's memory leaves
# the process: with 32 MiB and 128 MiB, a 61 MB request left the server 140 MB above its steady RSS.
_LARGE_BUFFER_BYTES = 2 << 20
_allocator_tuned = False

# Server threads no stream and no admitted inference call can take: health, liveness, refusals.
_RESERVED_THREADS = 8


def tune_allocator() -> bool:
    """Keep tensor-sized buffers (up to 2 MiB) in malloc's heap instead of fresh mmaps.

    By default glibc serves each 0.8 MB message buffer with its own mmap and unmaps it on
    free, so every call page-faults ~200 zeroed pages per buffer: at 4 concurrent clients
    that was ~0.5 ms of kernel time per call, more than all of splitinf's own work
    (benchmarks/bench_server.py, "faults/call"). Process-wide and idempotent; the price
    is that freed memory is kept for reuse (up to 4 MiB above the heap's top) instead of
    being returned to the system at once. ``ServerConfig.tune_allocator`` turns it off for
    servers embedded in a process that wants glibc's defaults. Returns False where the C
    library is not glibc. (Fixed thresholds also keep glibc from raising its mmap threshold
    after each large free, which left a large request's memory in the heap for good.)
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _LARGE_BUFFER_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * _LARGE_BUFFER_BYTES)
    )
    return _allocator_tuned


def trim_heap() -> None:
    """Return the heap's free memory to the system (glibc's malloc_trim); nothing elsewhere.

    Called after a large request: free() trims only the top of the heap, freed memory below
    a live allocation stays in the process until this.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def allocator_tuned() -> bool:
    """Whether this process has applied ``tune_allocator``'s settings."""
    return _allocator_tuned


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    """gRPC server channel arguments, as data."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Devices ping every ~2 s to notice a black hole; allow it, even between calls.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 0),
        # Find dead devices' connections in a minute rather than at TCP's timeout.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Two servers must never share a port (tests bind port 0 side by side).
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connection_age_s is not None:
        age_ms = int(config.max_connection_age_s * 1000)
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", 30_000)]
    return options


class TailServer:
    """A running tail server: gRPC + health + reflection + metrics. Use ``drain()`` or ``stop()``."""

    def __init__(
        self,
        config: ServerConfig,
        grpc_server: grpc.Server,
        dataplane: DataPlane,
        health_servicer: health.HealthServicer,
        metrics: ServerMetrics,
        port: int,
        streams: StreamRegistry | None = None,
    ):
        self.config = config
        self.streams = streams
        self.grpc_server = grpc_server
        self.dataplane = dataplane
        self.health = health_servicer
        self.metrics = metrics
        self.port = port
        self.metrics_port: int | None = None
        self._metrics_http: Any = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start gRPC and the metrics endpoint, then report SERVING."""
        self.grpc_server.start()
        try:
            self._start_metrics_http()
        except OSError as exc:
            self.stop()
            raise ConfigError(
                f"cannot serve metrics on {self.config.host}:{self.config.metrics_port}: {exc.strerror or exc}; "
                "choose another --metrics-port (metrics_port in the config), or -1 for no metrics endpoint"
            ) from exc
        self.dataplane.set_ready(True)
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _start_metrics_http(self) -> None:
        from prometheus_client import start_http_server

        if self.config.metrics_port is None:
            return
        httpd, _thread = start_http_server(
            self.config.metrics_port, addr=self.config.host, registry=self.metrics.registry
        )
        self._metrics_http = httpd
        self.metrics_port = int(httpd.server_port)

    def begin_drain(self) -> None:
        """Health NOT_SERVING and new inference calls refused (UNAVAILABLE); calls in flight go on."""
        self.health.enter_graceful_shutdown()
        self.dataplane.start_draining()

    def drain(self, grace_s: float | None = None) -> bool:
        """Health NOT_SERVING, refuse new calls (UNAVAILABLE), let calls in flight finish, stop.

        Returns True when every call in flight finished within the grace period.
        """
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        self.begin_drain()
        finished = self.dataplane.wait_idle(grace)
        if not finished:
            log.warning(
                "drain: %d call(s) still in flight after %.1fs; stopping anyway", self.dataplane.inflight, grace
            )
        self.stop(grace=1.0)
        return finished

    def stop(self, grace: float | None = 0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        if self.streams is not None:
            self.streams.stop()
        self.dataplane.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    def __enter__(self) -> TailServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _load_dataplane(config: ServerConfig, metrics: ServerMetrics) -> DataPlane:
    if config.allow_unsigned:
        log.warning("allow_unsigned: model versions without manifest.json are served with their sha256 unchecked")
    models = load_repository(
        config.repo,
        providers=config.providers,
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        graph_optimization=config.graph_optimization,
        max_batch_size=config.max_batch_size,
        batch_delay_ms=config.batch_delay_ms,
        warmup=config.warmup,
        allow_unsigned=config.allow_unsigned,
        max_request_bytes=config.max_request_bytes or config.max_message_bytes,
        memory_arena=config.memory_arena,
    )
    return DataPlane(
        models,
        max_inflight=config.max_inflight,
        instances=config.instances,
        metrics=metrics,
        batch_wait_when_idle=config.batch_wait_when_idle,
        release_memory=trim_heap,
    )


def _grpc_server(
    config: ServerConfig, dataplane: DataPlane
) -> tuple[grpc.Server, health.HealthServicer, StreamRegistry]:
    """The gRPC server with the V2 servicer, health (NOT_SERVING until started) and reflection."""
    # Each open stream holds a thread (StreamRegistry bounds them); admission in DataPlane refuses
    # unary calls beyond max_inflight; the threads left over answer health, liveness, metadata
    # and refusals, so no client can take those. maximum_concurrent_rpcs bounds gRPC's own queue.
    workers = config.max_inflight + config.max_streams + _RESERVED_THREADS
    interceptors = token_interceptors(config.token, tls=config.tls is not None)
    grpc_server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splitinf-grpc"),
        interceptors=interceptors,
        options=server_options(config),
        maximum_concurrent_rpcs=workers,
    )
    streams = StreamRegistry(
        total=config.max_streams,
        per_client=config.max_streams_per_client,
        idle_timeout_s=config.stream_idle_timeout_s,
    )
    add_inference_servicer(InferenceServicer(dataplane, config.server_name, streams), grpc_server)
    return grpc_server, add_health_and_reflection(grpc_server), streams


def _bind(grpc_server: grpc.Server, config: ServerConfig) -> int:
    """Listen on the configured address; the bound port, or ConfigError."""
    address = bind_address(config.host, config.port)
    if ":" in config.host and not config.host.startswith("["):
        address = f"[{config.host}]:{config.port}"
    reason = "port 0 returned"
    try:
        if config.tls is not None:
            port = grpc_server.add_secure_port(address, config.tls.credentials())
        else:
            port = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        port, reason = 0, str(exc)
    if port == 0:
        raise ConfigError(f"cannot listen on {address} (in use, or not an address of this host): {reason}")
    return int(port)


def create_server(config: ServerConfig) -> tuple[TailServer, int]:
    """Load and warm up the repository, then start serving; returns the server and the bound port.

    The returned server is already started and SERVING; ``port`` is the bound one (use
    ``port=0`` in tests).
    """
    if config.tune_allocator:
        tune_allocator()
    metrics = ServerMetrics()
    dataplane = _load_dataplane(config, metrics)
    grpc_server, health_servicer, streams = _grpc_server(config, dataplane)
    try:
        port = _bind(grpc_server, config)
    except Exception:
        dataplane.close()
        raise
    server = TailServer(config.replace(port=port), grpc_server, dataplane, health_servicer, metrics, port, streams)
    server.start()
    log.info("serving %d model(s) on %s port %d", len(dataplane.models), config.host, port)
    return server, port
