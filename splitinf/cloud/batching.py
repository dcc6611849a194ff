"""Dynamic batching across requests (Triton's): one model's requests joined into one onnxruntime run."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitinf.cloud.deadlines import NO_EXPIRY, Expiry, RunTimes
from splitinf.cloud.metrics import ModelSeries, ServerMetrics
from splitinf.cloud.repository import LoadedModel
from splitinf.errors import InferenceError, ModelExecutionError, RequestDroppedError

__all__ = ["Batcher", "BatchResult"]

# (outputs, compute_ns, queue_ns): the request's own rows of the batch's outputs and its times.
BatchResult = tuple[dict[str, np.ndarray], int, int]


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    batch: int
    enqueued_ns: int
    future: concurrent.futures.Future[BatchResult]
    expiry: Expiry = NO_EXPIRY


class Batcher:
    """Collects requests for one model and runs them as one batch (at most ``max_batch_size``
    samples, waiting at most ``batch_delay_s`` for more).

    Requests whose non-batch dimensions differ from the batch's first request wait for the
    next batch. The queue needs no bound of its own: DataPlane admission bounds it.
    ``in_flight()`` (requests for this model admitted by the DataPlane) lets the batcher run
    at once when no other request could join, instead of always waiting the full delay.
    Requests whose caller gave up (a cancelled future) or whose deadline passed, or that cannot
    finish in the model's typical run time (``run_times``), are dropped before the run.
    """

    _STOP = object()

    def __init__(
        self,
        model: LoadedModel,
        metrics: ServerMetrics | None = None,
        in_flight: Callable[[], int] | None = None,
        run_times: RunTimes | None = None,
    ):
        self.model = model
        self.run_times = run_times or RunTimes()
        self._series: ModelSeries | None = metrics.model(model.name) if metrics is not None else None
        self._in_flight = in_flight
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._carry: _Pending | None = None
        # Successful onnxruntime runs (Triton's execution_count); only the batcher's thread writes it.
        self.executions = 0
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{model.name}", daemon=True)
        self._thread.start()

    def submit(
        self, inputs: Mapping[str, np.ndarray], batch: int, expiry: Expiry = NO_EXPIRY
    ) -> concurrent.futures.Future[BatchResult]:
        """Queue one request; cancelling the returned future (before its batch runs) drops it."""
        future: concurrent.futures.Future[BatchResult] = concurrent.futures.Future()
        self._queue.put(_Pending(inputs, batch, time.perf_counter_ns(), future, expiry))
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
                _fail(batch, exc)

    def _still_wanted(self, batch: list[_Pending]) -> list[_Pending]:
        """The batch less what nobody waits for or what cannot finish in time (those fail, unrun)."""
        wanted = []
        needed_s = self.run_times.typical_s()
        for pending in batch:
            if not pending.future.set_running_or_notify_cancel():
                continue  # its caller gave up waiting and counted it
            try:
                pending.expiry.check(self.model.name, needed_s)
            except RequestDroppedError as exc:
                pending.future.set_exception(exc)
                continue
            wanted.append(pending)
        return wanted

    def _run(self, batch: list[_Pending]) -> None:
        batch = self._still_wanted(batch)
        if not batch:
            return
        started = time.perf_counter_ns()
        if len(batch) == 1:
            joined = dict(batch[0].inputs)
        else:
            joined = {name: np.concatenate([p.inputs[name] for p in batch], axis=0) for name in batch[0].inputs}
        total = sum(p.batch for p in batch)
        try:
            outputs = self.model.run(joined)
        except InferenceError as exc:
            _fail(batch, exc)
            return
        compute_ns = time.perf_counter_ns() - started
        self.run_times.record(compute_ns / 1e9)
        if self._series is not None:
            self._series.compute_seconds.observe(compute_ns / 1e9)
            self._series.batch_size.observe(total)
        bad = [name for name, value in outputs.items() if value.ndim == 0 or value.shape[0] != total]
        if bad:
            _fail(
                batch,
                ModelExecutionError(
                    f"model {self.model.name!r}: output(s) {bad} do not keep the batch dimension ({total}); "
                    "turn dynamic batching off for this model"
                ),
            )
            return
        self.executions += 1
        offset = 0
        for pending in batch:
            part = {name: value[offset : offset + pending.batch] for name, value in outputs.items()}
            offset += pending.batch
            pending.future.set_result((part, compute_ns, started - pending.enqueued_ns))


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
