"""The tail server: Open Inference Protocol (KServe V2) over gRPC, onnxruntime behind it.

Layers, from the wire inward:

- ``InferenceServicer``: the thin adapter. It converts protobuf <-> numpy and maps
  ``InferenceError.code`` to the gRPC status in one place (``_abort``).
- ``DataPlane``: the core. Admission (bounded, RESOURCE_EXHAUSTED when full), draining,
  validation, execution directly or through a ``Batcher``; it raises ``InferenceError``s.
- ``Batcher``: dynamic batching across requests for models with a batch dimension
  (at most ``max_batch_size`` samples, waiting at most ``batch_delay_s`` for more).
- ``create_server(config) -> (TailServer, port)``: loads and warms up the repository, then
  starts gRPC (with health and reflection) and the Prometheus endpoint.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from splitinf import __version__
from splitinf.cloud.auth import token_interceptors
from splitinf.cloud.config import ServerConfig
from splitinf.cloud.metrics import ServerMetrics
from splitinf.cloud.repository import LoadedModel, load_repository
from splitinf.errors import (
    ConfigError,
    InferenceError,
    InvalidRequestError,
    ModelExecutionError,
    ModelNotFoundError,
    ServerBusyError,
    ServerUnavailableError,
)
from splitinf.protocol import COMPUTE_NS_PARAMETER, MODEL_SHA256_PARAMETER
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.protocol.tensors import (
    EncodedInferResponse,
    ParsedInferRequest,
    datatype_of,
    decode_request_inputs,
    encode_infer_response,
    parse_infer_request,
)

__all__ = [
    "SERVICE_NAME",
    "Batcher",
    "DataPlane",
    "InferOutcome",
    "InferenceServicer",
    "TailServer",
    "add_inference_servicer",
    "create_server",
    "inference_method_handlers",
    "tune_allocator",
]

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
UNKNOWN_MODEL_LABEL = "_unknown"


class _ModelSeries:
    """One model's metric children, looked up once: ``labels()`` costs about a microsecond per call."""

    def __init__(self, metrics: ServerMetrics, model: str):
        self.queue_seconds = metrics.queue_seconds.labels(model=model)
        self.compute_seconds = metrics.compute_seconds.labels(model=model)
        self.batch_size = metrics.batch_size.labels(model=model)
        self.request_bytes = metrics.request_bytes.labels(model=model)
        self.response_bytes = metrics.response_bytes.labels(model=model)
        self.requests_ok = metrics.requests.labels(model=model, code=grpc.StatusCode.OK.name)


class _SeriesCache:
    """``_ModelSeries`` by model name; only names of served models ever reach it."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self._by_model: dict[str, _ModelSeries] = {}

    def __call__(self, model: str) -> _ModelSeries:
        series = self._by_model.get(model)
        if series is None:
            series = self._by_model[model] = _ModelSeries(self.metrics, model)
        return series


@dataclass(frozen=True)
class InferOutcome:
    model: LoadedModel
    outputs: dict[str, np.ndarray]
    compute_ns: int
    queue_ns: int


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    batch: int
    enqueued_ns: int
    future: concurrent.futures.Future[tuple[dict[str, np.ndarray], int, int]]


class Batcher:
    """Collects requests for one model and runs them as one batch (Triton's dynamic batching).

    Requests whose non-batch dimensions differ from the batch's first request wait for the
    next batch. The queue needs no bound of its own: DataPlane admission bounds it.
    ``in_flight()`` (requests for this model admitted by the DataPlane) lets the batcher run
    at once when no other request could join, instead of always waiting the full delay.
    """

    _STOP = object()

    def __init__(
        self, model: LoadedModel, metrics: ServerMetrics | None = None, in_flight: Callable[[], int] | None = None
    ):
        self.model = model
        self._series = _ModelSeries(metrics, model.name) if metrics is not None else None
        self._in_flight = in_flight
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._carry: _Pending | None = None
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{model.name}", daemon=True)
        self._thread.start()

    def submit(self, inputs: Mapping[str, np.ndarray], batch: int) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Pending(inputs, batch, time.perf_counter_ns(), future))
        return future

    def stop(self) -> None:
        self._queue.put(self._STOP)
        self._thread.join(timeout=5)

    @staticmethod
    def _compatible(a: _Pending, b: _Pending) -> bool:
        return a.inputs.keys() == b.inputs.keys() and all(
            a.inputs[name].shape[1:] == b.inputs[name].shape[1:] for name in a.inputs
        )

    def _collect(self) -> list[_Pending] | None:
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is self._STOP:
            return None
        batch = [first]
        size = first.batch
        deadline = time.perf_counter() + self.model.batch_delay_s
        while size < self.model.max_batch_size:
            if self._in_flight is not None and self._in_flight() <= len(batch) and self._queue.empty():
                break  # nobody else is in the server: waiting would only add latency
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is self._STOP or not self._compatible(first, item) or size + item.batch > self.model.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += item.batch
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # never let the batcher thread die with callers waiting
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        names = list(batch[0].inputs)
        if len(batch) == 1:
            joined = dict(batch[0].inputs)
        else:
            joined = {name: np.concatenate([p.inputs[name] for p in batch], axis=0) for name in names}
        total = sum(p.batch for p in batch)
        try:
            outputs = self.model.run(joined)
        except InferenceError as exc:
            for pending in batch:
                pending.future.set_exception(exc)
            return
        compute_ns = time.perf_counter_ns() - started
        if self._series is not None:
            self._series.compute_seconds.observe(compute_ns / 1e9)
            self._series.batch_size.observe(total)
        bad = [name for name, value in outputs.items() if value.ndim == 0 or value.shape[0] != total]
        if bad:
            error = ModelExecutionError(
                f"model {self.model.name!r}: output(s) {bad} do not keep the batch dimension ({total}); "
                "turn dynamic batching off for this model"
            )
            for pending in batch:
                pending.future.set_exception(error)
            return
        offset = 0
        for pending in batch:
            part = {name: value[offset : offset + pending.batch] for name, value in outputs.items()}
            offset += pending.batch
            pending.future.set_result((part, compute_ns, started - pending.enqueued_ns))


class DataPlane:
    """The server core: models, admission, draining, validation and execution. No protobuf here."""

    def __init__(
        self,
        models: Mapping[str, Mapping[str, LoadedModel]],
        *,
        max_inflight: int = 64,
        instances: int = 1,
        metrics: ServerMetrics | None = None,
        batch_wait_when_idle: bool = False,
    ):
        self.models = {name: dict(versions) for name, versions in models.items()}
        self._latest = {name: versions[max(versions, key=int)] for name, versions in self.models.items() if versions}
        self.metrics = metrics
        self._series = _SeriesCache(metrics) if metrics is not None else None
        self.max_inflight = max_inflight
        self._inflight = 0
        self._idle_waiters = 0
        # Per-call counters take the plain Lock (one C call); waiting for idle uses the Condition over it.
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._draining = False
        self._ready = False
        self._model_inflight: dict[tuple[str, str], int] = {}
        # Requests of a batching model run inline (in their own thread, skipping the batcher) when
        # nothing else for that model is in the server; they cannot join any batch anyway.
        self._model_inline: dict[tuple[str, str], int] = {}
        self._adaptive_batching = not batch_wait_when_idle
        # A plain Lock for one instance: threading.Semaphore is Python code, a Lock is one C call.
        self._instance_slots: dict[tuple[str, str], threading.Lock | threading.Semaphore] = {
            (name, version): threading.Lock() if instances == 1 else threading.Semaphore(instances)
            for name, versions in self.models.items()
            for version in versions
        }
        if metrics is not None:
            # Read when scraped, instead of inc()/dec() under a lock on every call.
            metrics.inflight.set_function(lambda: self._inflight)
        self._batchers = {
            (name, version): Batcher(
                model, metrics, None if batch_wait_when_idle else self._in_flight_counter(name, version)
            )
            for name, versions in self.models.items()
            for version, model in versions.items()
            if model.max_batch_size > 0
        }

    def _in_flight_counter(self, name: str, version: str) -> Callable[[], int]:
        key = (name, version)
        return lambda: self._model_inflight.get(key, 0) - self._model_inline.get(key, 0)

    def _enter_inline(self, key: tuple[str, str]) -> bool:
        with self._lock:
            if self._model_inflight.get(key, 0) - self._model_inline.get(key, 0) != 1:
                return False
            self._model_inline[key] = self._model_inline.get(key, 0) + 1
            return True

    def _leave_inline(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._model_inline[key] -= 1

    # --- state ---
    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    @property
    def ready(self) -> bool:
        return self._ready and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def inflight(self) -> int:
        return self._inflight

    def start_draining(self) -> None:
        with self._lock:
            self._draining = True
            self._lock.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False when ``timeout_s`` passed first."""
        with self._lock:
            self._idle_waiters += 1
            try:
                return self._lock.wait_for(lambda: self._inflight == 0, timeout=timeout_s)
            finally:
                self._idle_waiters -= 1

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.stop()

    # --- lookups ---
    def model(self, name: str, version: str = "") -> LoadedModel:
        versions = self.models.get(name)
        if versions is None:
            raise ModelNotFoundError(f"unknown model {name!r}; this server has {sorted(self.models)}")
        if not version:
            return self._latest[name]
        try:
            return versions[version]
        except KeyError:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; available: {sorted(versions, key=int)}"
            ) from None

    def model_ready(self, name: str, version: str = "") -> bool:
        self.model(name, version)
        return self.ready

    # --- inference ---
    def _admit(self, key: tuple[str, str]) -> None:
        with self._mutex:
            if self._draining:
                raise ServerUnavailableError("the server is shutting down; send the request to another replica")
            if self._inflight >= self.max_inflight:
                raise ServerBusyError(
                    f"the server is at its limit of {self.max_inflight} requests in flight; retry later"
                )
            self._inflight += 1
            self._model_inflight[key] = self._model_inflight.get(key, 0) + 1

    def _release(self, key: tuple[str, str]) -> None:
        with self._mutex:
            self._inflight -= 1
            self._model_inflight[key] -= 1
            if self._idle_waiters:
                self._lock.notify_all()

    def infer(
        self, name: str, version: str, inputs: Mapping[str, np.ndarray], requested: Sequence[str] = ()
    ) -> InferOutcome:
        model = self.model(name, version)
        if not self._ready:
            raise ServerUnavailableError(f"model {name!r} is not ready yet")
        key = (model.name, model.version)
        self._admit(key)
        try:
            batch = model.validate(inputs, requested)
            batcher = self._batchers.get(key)
            if batcher is None:
                outputs, compute_ns, queue_ns = self._run_direct(model, inputs)
            elif self._adaptive_batching and self._enter_inline(key):
                try:
                    outputs, compute_ns, queue_ns = self._run_direct(model, inputs)
                finally:
                    self._leave_inline(key)
            else:
                outputs, compute_ns, queue_ns = batcher.submit(inputs, batch).result()
        finally:
            self._release(key)
        if self._series is not None:
            self._series(model.name).queue_seconds.observe(queue_ns / 1e9)
        if requested:
            outputs = {out: outputs[out] for out in requested}
        return InferOutcome(model, outputs, compute_ns, queue_ns)

    def _run_direct(self, model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], int, int]:
        arrived = time.perf_counter_ns()
        with self._instance_slots[(model.name, model.version)]:
            started = time.perf_counter_ns()
            outputs = model.run(inputs)
            compute_ns = time.perf_counter_ns() - started
        if self._series is not None:
            series = self._series(model.name)
            series.compute_seconds.observe(compute_ns / 1e9)
            series.batch_size.observe(
                next(iter(inputs.values())).shape[0] if model.has_batch_dimension and inputs else 1
            )
        return outputs, compute_ns, started - arrived


def _tensor_metadata(specs: Sequence[Any]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name,
            datatype=datatype_of(spec.dtype),
            shape=[d if isinstance(d, int) else -1 for d in spec.shape],
        )
        for spec in specs
    ]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """V2 gRPC adapter over a ``DataPlane``: protobuf <-> numpy and error -> status, nothing else."""

    def __init__(self, dataplane: DataPlane, metrics: ServerMetrics | None = None, server_name: str = "splitinf"):
        self.dataplane = dataplane
        self.metrics = metrics
        self.server_name = server_name
        self._series = _SeriesCache(metrics) if metrics is not None else None

    def _model_label(self, name: str | None) -> str | None:
        # Clients choose the name: unknown ones share one label, so they cannot grow the metrics without bound.
        if name is None or name in self.dataplane.models:
            return name
        return UNKNOWN_MODEL_LABEL

    def _abort(self, context: grpc.ServicerContext, model: str | None, exc: Exception) -> NoReturn:
        """The one place where an error becomes a gRPC status (and gets counted). Call it in ``except``."""
        if isinstance(exc, InferenceError):
            if model is not None and self.metrics is not None:
                self.metrics.record_request(model, exc.code)
            context.abort(grpc.StatusCode[exc.code], str(exc))
        else:
            log.exception("unexpected error answering %s", model or "a call")
            if model is not None and self.metrics is not None:
                self.metrics.record_request(model, grpc.StatusCode.INTERNAL.name)
            context.abort(grpc.StatusCode.INTERNAL, f"internal server error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _count_ok(self, model: str | None) -> None:
        if model is not None and self._series is not None:
            self._series(model).requests_ok.inc()

    @contextlib.contextmanager
    def _answer(self, context: grpc.ServicerContext, model: str | None = None) -> Iterator[None]:
        """Errors in the block become a gRPC status (``_abort``); success is counted."""
        model = self._model_label(model)
        try:
            yield
        except Exception as exc:
            self._abort(context, model, exc)
        else:
            self._count_ok(model)

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        with self._answer(context):
            return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))
        raise AssertionError("unreachable")  # pragma: no cover  (abort raised)

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.server_name, version=__version__, extensions=[])

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        with self._answer(context):
            model = self.dataplane.model(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=model.name,
                versions=sorted(self.dataplane.models[model.name], key=int),
                platform="onnxruntime_onnx",
                inputs=_tensor_metadata(model.inputs),
                outputs=_tensor_metadata(model.outputs),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _infer(self, request: pb.ModelInferRequest | ParsedInferRequest) -> EncodedInferResponse:
        message = request.message if isinstance(request, ParsedInferRequest) else request
        inputs = decode_request_inputs(request)
        requested = [output.name for output in message.outputs]
        if len(set(requested)) != len(requested):
            raise InvalidRequestError(f"an output is requested twice: {requested}")
        outcome = self.dataplane.infer(message.model_name, message.model_version, inputs, requested)
        response = pb.ModelInferResponse(
            model_name=outcome.model.name, model_version=outcome.model.version, id=message.id
        )
        response.parameters[COMPUTE_NS_PARAMETER].int64_param = outcome.compute_ns
        response.parameters[MODEL_SHA256_PARAMETER].string_param = outcome.model.sha256
        encoded = encode_infer_response(response, outcome.outputs)
        if self._series is not None:
            # Tensor bytes, not ByteSize(): on a parsed 0.8 MB request ByteSize() doubled the
            # server's per-call time (benchmarks/bench_server.py).
            series = self._series(outcome.model.name)
            series.request_bytes.inc(sum(a.nbytes for a in inputs.values()))
            series.response_bytes.inc(sum(a.nbytes for a in outcome.outputs.values()))
        return encoded

    def model_infer_encoded(
        self, request: pb.ModelInferRequest | ParsedInferRequest, context: grpc.ServicerContext
    ) -> EncodedInferResponse:
        """``ModelInfer`` as the server runs it: the answer's tensors are serialized with one copy."""
        message = request.message if isinstance(request, ParsedInferRequest) else request
        try:  # _answer's work spelled out: this is the per-call path
            response = self._infer(request)
        except Exception as exc:
            self._abort(context, self._model_label(message.model_name), exc)
        self._count_ok(response.message.model_name)
        return response

    def ModelInfer(
        self, request: pb.ModelInferRequest | ParsedInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        """Accepts a protobuf request (grpcio-testing) or the zero-copy parse; answers a protobuf message."""
        return self.model_infer_encoded(request, context).to_message()

    def model_stream_infer_encoded(
        self, request_iterator: Iterator[pb.ModelInferRequest | ParsedInferRequest], context: grpc.ServicerContext
    ) -> Iterator[EncodedInferResponse | pb.ModelStreamInferResponse]:
        """``ModelStreamInfer`` as the server runs it: answers as ``EncodedInferResponse``, errors as
        ``ModelStreamInferResponse(error_message=...)`` (``EncodedInferResponse.serialize_stream`` takes both)."""
        # Triton's semantics: a failed request is reported in its response; the stream goes on.
        for request in request_iterator:
            message = request.message if isinstance(request, ParsedInferRequest) else request
            try:
                response = self._infer(request)
            except InferenceError as exc:
                if self.metrics is not None:
                    self.metrics.record_request(self._model_label(message.model_name) or "", exc.code)
                yield pb.ModelStreamInferResponse(error_message=f"{exc.code}: {exc}")
                continue
            if self._series is not None:
                self._series(response.message.model_name).requests_ok.inc()
            yield response

    def ModelStreamInfer(
        self, request_iterator: Iterator[pb.ModelInferRequest | ParsedInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        for response in self.model_stream_infer_encoded(request_iterator, context):
            if isinstance(response, EncodedInferResponse):
                yield pb.ModelStreamInferResponse(infer_response=response.to_message())
            else:
                yield response


def inference_method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The V2 service's method handlers: the generated ones, but inference requests are parsed
    without copying their tensor bytes (``parse_infer_request``) and answers are serialized
    with one copy of their tensors (``EncodedInferResponse``)."""

    def unary(method: Callable[..., Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )

    return {
        "ServerLive": unary(servicer.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(servicer.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(servicer.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(servicer.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(servicer.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            servicer.model_infer_encoded,
            request_deserializer=parse_infer_request,
            response_serializer=EncodedInferResponse.serialize,
        ),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            servicer.model_stream_infer_encoded,
            request_deserializer=parse_infer_request,
            response_serializer=EncodedInferResponse.serialize_stream,
        ),
    }


def add_inference_servicer(servicer: InferenceServicer, server: grpc.Server) -> None:
    """``add_GRPCInferenceServiceServicer_to_server`` with ``inference_method_handlers``."""
    handlers = inference_method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGE_BUFFER_BYTES = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_allocator_tuned = False


def tune_allocator() -> bool:
    """Keep large buffers (tensors up to 32 MiB) in malloc's heap instead of fresh mmaps.

    By default glibc serves each 0.8 MB message buffer with its own mmap and unmaps it on
    free, so every call page-faults ~200 zeroed pages per buffer: at 4 concurrent clients
    that was ~0.5 ms of kernel time per call, more than all of splitinf's own work
    (benchmarks/bench_server.py, "faults/call"). Process-wide and idempotent; the price
    is that freed memory is kept for reuse (up to 128 MiB above the heap's top) instead of
    being returned to the system at once. Returns False where the C library is not glibc.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _LARGE_BUFFER_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 4 * _LARGE_BUFFER_BYTES)
    )
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


def _reflection_pool() -> Any:
    """Our private descriptor pool plus the health and reflection services, for server reflection."""
    pool = pb.DESCRIPTOR.pool
    for module in (health_pb2, reflection_pb2):
        with contextlib.suppress(TypeError):  # already added
            pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


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
    ):
        self.config = config
        self.grpc_server = grpc_server
        self.dataplane = dataplane
        self.health = health_servicer
        self.metrics = metrics
        self.port = port
        self.metrics_port: int | None = None
        self._metrics_http: Any = None
        self._stopped = threading.Event()

    def start_metrics_http(self) -> None:
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
        self.dataplane.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def __enter__(self) -> TailServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_server(config: ServerConfig) -> tuple[TailServer, int]:
    """Load and warm up the repository, then start serving; returns the server and the bound port.

    The returned server is already started and SERVING; ``port`` is the bound one (use
    ``port=0`` in tests).
    """
    tune_allocator()
    metrics = ServerMetrics()
    models = load_repository(
        config.repo,
        providers=config.providers,
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        graph_optimization=config.graph_optimization,
        max_batch_size=config.max_batch_size,
        batch_delay_ms=config.batch_delay_ms,
        warmup=config.warmup,
    )
    dataplane = DataPlane(
        models,
        max_inflight=config.max_inflight,
        instances=config.instances,
        metrics=metrics,
        batch_wait_when_idle=config.batch_wait_when_idle,
    )
    servicer = InferenceServicer(dataplane, metrics, config.server_name)
    # Admission in DataPlane refuses beyond max_inflight; the extra threads answer health,
    # metadata and refusals quickly. maximum_concurrent_rpcs keeps gRPC's own queue bounded.
    workers = config.max_inflight + 8
    interceptors = token_interceptors(config.token, tls=config.tls is not None)
    grpc_server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splitinf-grpc"),
        interceptors=interceptors,
        options=server_options(config),
        maximum_concurrent_rpcs=workers,
    )
    add_inference_servicer(servicer, grpc_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server, pool=_reflection_pool()
    )
    address = f"{config.host}:{config.port}"
    reason = "port 0 returned"
    if ":" in config.host and not config.host.startswith("["):
        address = f"[{config.host}]:{config.port}"
    try:
        if config.tls is not None:
            port = grpc_server.add_secure_port(address, config.tls.credentials())
        else:
            port = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        port = 0
        reason = str(exc)
    if port == 0:
        dataplane.close()
        raise ConfigError(f"cannot listen on {address} (in use, or not an address of this host): {reason}")
    server = TailServer(config.replace(port=port), grpc_server, dataplane, health_servicer, metrics, port)
    grpc_server.start()
    try:
        server.start_metrics_http()
    except OSError as exc:
        server.stop()
        raise ConfigError(
            f"cannot serve metrics on {config.host}:{config.metrics_port}: {exc.strerror or exc}; "
            "choose another --metrics-port (metrics_port in the config), or -1 for no metrics endpoint"
        ) from exc
    dataplane.set_ready(True)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %d model(s) on %s port %d", len(models), config.host, port)
    return server, port
