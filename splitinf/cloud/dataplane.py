"""The server's core, with no protobuf and no grpc: model lookup, admission, draining, validation,
execution (directly or through a ``Batcher``), the metrics of each request and its model's statistics.

It raises ``InferenceError``s; ``splitinf.cloud.errors`` turns them into gRPC statuses.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from splitinf.cloud.batching import Batcher, BatchResult
from splitinf.cloud.deadlines import NO_EXPIRY, Expiry, RunTimes
from splitinf.cloud.metrics import ServerMetrics
from splitinf.cloud.repository import LoadedModel
from splitinf.cloud.statistics import StatisticsSnapshot, VersionStatistics
from splitinf.errors import (
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestDroppedError,
    ServerBusyError,
    ServerUnavailableError,
)

__all__ = ["UNKNOWN_MODEL_LABEL", "DataPlane", "InferOutcome"]

# The metrics label of every model name this server does not serve: clients choose those names,
# so they share one label and cannot grow the metrics without bound.
UNKNOWN_MODEL_LABEL = "_unknown"

ModelKey = tuple[str, str]  # (name, version)
# (batch size, ran outside a batcher, result): one request's execution.
_Executed = tuple[int, bool, BatchResult]

_SHOWN_CHARS = 64


def _shown(name: str) -> str:
    """A client-chosen name as an error message shows it: quoted, at most ``_SHOWN_CHARS`` of it."""
    if len(name) <= _SHOWN_CHARS:
        return repr(name)
    return f"{name[:_SHOWN_CHARS]!r}... ({len(name)} characters)"


@dataclass(frozen=True)
class InferOutcome:
    model: LoadedModel
    outputs: dict[str, np.ndarray]
    compute_ns: int
    request_bytes: int = 0
    queue_ns: int = 0  # from arrival to the model run starting (admission, instance slot, batch queue)


class DataPlane:
    """The server core: models, admission, draining, validation, execution and metrics."""

    def __init__(
        self,
        models: Mapping[str, Mapping[str, LoadedModel]],
        *,
        max_inflight: int = 64,
        instances: int = 1,
        metrics: ServerMetrics | None = None,
        batch_wait_when_idle: bool = False,
        release_memory: Callable[[], None] | None = None,
        large_request_bytes: int = 16 << 20,
    ):
        self.models = {name: dict(versions) for name, versions in models.items()}
        # Called once a call of at least large_request_bytes has ended, so its memory leaves the process.
        self._release_memory = release_memory
        self._large_request_bytes = large_request_bytes
        self._latest = {name: versions[max(versions, key=int)] for name, versions in self.models.items() if versions}
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._inflight = 0
        self._idle_waiters = 0
        # Per-call counters take the plain Lock (one C call); waiting for idle uses the Condition over it.
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._draining = False
        self._ready = False
        self._model_inflight: dict[ModelKey, int] = {}
        # Requests of a batching model run inline (in their own thread, skipping the batcher) when
        # nothing else for that model is in the server; they cannot join any batch anyway.
        self._model_inline: dict[ModelKey, int] = {}
        self._adaptive_batching = not batch_wait_when_idle
        # A plain Lock for one instance: threading.Semaphore is Python code, a Lock is one C call.
        self._instance_slots: dict[ModelKey, threading.Lock | threading.Semaphore] = {
            (name, version): threading.Lock() if instances == 1 else threading.Semaphore(instances)
            for name, versions in self.models.items()
            for version in versions
        }
        self._statistics = {
            (name, version): VersionStatistics() for name, versions in self.models.items() for version in versions
        }
        self._run_times = {
            (name, version): RunTimes() for name, versions in self.models.items() for version in versions
        }
        for name, versions in self.models.items():
            for version, model in versions.items():
                run_times = self._run_times[(name, version)]
                for seconds in model.warm_up_seconds:  # timed at load: known before the first request
                    run_times.record(seconds)
                if metrics is not None:
                    metrics.typical_compute_seconds.labels(model=name, version=version).set_function(
                        run_times.typical_s
                    )
        if metrics is not None:
            # Read when scraped, instead of inc()/dec() under a lock on every call.
            metrics.inflight.set_function(lambda: self._inflight)
        self._batchers = {
            (name, version): Batcher(
                model,
                metrics,
                None if batch_wait_when_idle else self._in_flight_counter((name, version)),
                self._run_times[(name, version)],
            )
            for name, versions in self.models.items()
            for version, model in versions.items()
            if model.max_batch_size > 0
        }

    # --- state ---
    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    @property
    def ready(self) -> bool:
        return self._ready and not self._draining

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
            raise ModelNotFoundError(f"unknown model {_shown(name)}; this server has {sorted(self.models)}")
        if not version:
            return self._latest[name]
        try:
            return versions[version]
        except KeyError:
            raise ModelNotFoundError(
                f"model {name!r} has no version {_shown(version)}; available: {sorted(versions, key=int)}"
            ) from None

    def check_request_size(self, name: str, version: str, tensors: Sequence[tuple[str, str, Sequence[int]]]) -> None:
        """Refuse (INVALID_ARGUMENT) a request over its model's batch or bytes limit, from its tensors'
        (name, datatype, shape) before they are decoded; an unknown model is NOT_FOUND."""
        self.model(name, version).check_request_size(tensors)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Triton's answer: False (not an error) for a model or version this server does not have."""
        versions = self.models.get(name)
        return self.ready and versions is not None and (not version or version in versions)

    def statistics(self, name: str = "", version: str = "") -> list[StatisticsSnapshot]:
        """Triton's ``ModelStatistics``: every model for an empty ``name``, every version for an empty
        ``version``; an unknown model or version is ``ModelNotFoundError``."""
        if name:
            self.model(name, version)  # ModelNotFoundError for a model or version this server does not have
            keys = [(name, v) for v in ([version] if version else sorted(self.models[name], key=int))]
        else:
            keys = list(self._statistics)
        with self._mutex:
            return [
                self._statistics[key].snapshot(*key, self._batchers[key].executions if key in self._batchers else 0)
                for key in keys
            ]

    # --- inference ---
    def infer(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        requested: Sequence[str] = (),
        expiry: Expiry = NO_EXPIRY,
    ) -> InferOutcome:
        """Run ``inputs`` through the model; ``requested`` outputs only, when any are named.

        ``expiry``: the call's deadline and liveness; work it makes useless is dropped unrun
        (``RequestDroppedError``), counted in ``splitinf_requests_dropped_total``.
        """
        model = self.model(name, version)
        key = (model.name, model.version)
        arrived = time.perf_counter_ns()
        try:
            if not self._ready:
                raise ServerUnavailableError(f"model {name!r} is not ready yet")
            if requested and len(set(requested)) != len(requested):
                raise InvalidRequestError(f"an output is requested twice: {list(requested)}")
            self._admit(key)
        except InferenceError:
            with self._mutex:
                self._statistics[key].record_failure(arrived, time.perf_counter_ns())
            raise
        executed: _Executed | None = None
        try:
            expiry.check(model.name)
            executed = self._execute(model, key, inputs, requested, expiry)
        except RequestDroppedError as exc:
            if self.metrics is not None:
                self.metrics.dropped.labels(model=model.name, reason=exc.reason).inc()
            raise
        finally:
            self._release(key, arrived, executed)
        _batch, _direct, (outputs, compute_ns, queue_ns) = executed
        if requested:
            outputs = {out: outputs[out] for out in requested}
        # Tensor bytes, not the message's ByteSize(): on a parsed 0.8 MB request ByteSize()
        # doubled the server's per-call time (benchmarks/bench_server.py).
        request_bytes = sum(a.nbytes for a in inputs.values())
        if self.metrics is not None:
            series = self.metrics.model(model.name)
            series.queue_seconds.observe(queue_ns / 1e9)
            series.request_bytes.inc(request_bytes)
            series.response_bytes.inc(sum(a.nbytes for a in outputs.values()))
        return InferOutcome(model, outputs, compute_ns, request_bytes, queue_ns)

    def release_memory_after(self, outcome: InferOutcome) -> Callable[[], None] | None:
        """What to call once ``outcome``'s call has ended (its buffers freed) so a large request's
        memory leaves the process; None for an ordinary request."""
        if outcome.request_bytes < self._large_request_bytes:
            return None
        return self._release_memory

    def record_answer(self, name: str | None, code: str) -> None:
        """Count one answered inference request by model and status name (``"OK"`` or e.g. ``"NOT_FOUND"``)."""
        if self.metrics is None or name is None:
            return
        if code == "OK":
            self.metrics.model(name).requests_ok.inc()
        else:
            self.metrics.record_request(name if name in self.models else UNKNOWN_MODEL_LABEL, code)

    def _execute(
        self,
        model: LoadedModel,
        key: ModelKey,
        inputs: Mapping[str, np.ndarray],
        requested: Sequence[str],
        expiry: Expiry,
    ) -> _Executed:
        batch = model.validate(inputs, requested)
        batcher = self._batchers.get(key)
        if batcher is None:
            return batch, True, self._run_direct(model, inputs, expiry)
        if self._adaptive_batching and self._enter_inline(key):
            try:
                return batch, True, self._run_direct(model, inputs, expiry)
            finally:
                self._leave_inline(key)
        future = batcher.submit(inputs, batch, expiry)
        try:
            return batch, False, future.result(timeout=expiry.remaining())
        except concurrent.futures.TimeoutError:
            future.cancel()  # the batcher drops it unrun
            raise RequestDroppedError(f"model {model.name!r}: the call's deadline passed in the batch queue") from None

    def _run_direct(self, model: LoadedModel, inputs: Mapping[str, np.ndarray], expiry: Expiry) -> BatchResult:
        arrived = time.perf_counter_ns()
        key = (model.name, model.version)
        slot = self._instance_slots[key]
        remaining = expiry.remaining()
        if not (slot.acquire() if remaining is None else slot.acquire(timeout=max(remaining, 0))):
            raise RequestDroppedError(f"model {model.name!r}: the call's deadline passed waiting for the model")
        try:
            expiry.check(model.name, self._run_times[key].typical_s())
            started = time.perf_counter_ns()
            outputs = model.run(inputs)
            compute_ns = time.perf_counter_ns() - started
        finally:
            slot.release()
        self._run_times[key].record(compute_ns / 1e9)
        if self.metrics is not None:
            series = self.metrics.model(model.name)
            series.compute_seconds.observe(compute_ns / 1e9)
            series.batch_size.observe(
                next(iter(inputs.values())).shape[0] if model.has_batch_dimension and inputs else 1
            )
        return outputs, compute_ns, started - arrived

    # --- admission ---
    def _admit(self, key: ModelKey) -> None:
        with self._mutex:
            if self._draining:
                raise ServerUnavailableError("the server is shutting down; send the request to another replica")
            if self._inflight >= self.max_inflight:
                raise ServerBusyError(
                    f"the server is at its limit of {self.max_inflight} requests in flight; retry later"
                )
            self._inflight += 1
            self._model_inflight[key] = self._model_inflight.get(key, 0) + 1

    def _release(self, key: ModelKey, arrived_ns: int, executed: _Executed | None) -> None:
        """End an admitted request and add it to its model's statistics (None: it failed)."""
        finished = time.perf_counter_ns()
        with self._mutex:
            self._inflight -= 1
            self._model_inflight[key] -= 1
            if executed is None:
                self._statistics[key].record_failure(arrived_ns, finished)
            else:
                batch, direct, (_outputs, compute_ns, queue_ns) = executed
                self._statistics[key].record_success(batch, direct, arrived_ns, finished, queue_ns, compute_ns)
            if self._idle_waiters:
                self._lock.notify_all()

    def _in_flight_counter(self, key: ModelKey) -> Callable[[], int]:
        """Requests for ``key`` in the server that could join its batch (those running inline cannot)."""
        return lambda: self._model_inflight.get(key, 0) - self._model_inline.get(key, 0)

    def _enter_inline(self, key: ModelKey) -> bool:
        with self._lock:
            if self._model_inflight.get(key, 0) - self._model_inline.get(key, 0) != 1:
                return False
            self._model_inline[key] = self._model_inline.get(key, 0) + 1
            return True

    def _leave_inline(self, key: ModelKey) -> None:
        with self._lock:
            self._model_inline[key] -= 1
