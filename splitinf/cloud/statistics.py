"""Triton's per-model statistics (the ``ModelStatistics`` call): counts and cumulative durations.

One ``VersionStatistics`` per model version holds plain ints. The ``DataPlane`` adds one
answered request under the lock it already takes to release the request's admission, so the
hot path gains no lock and no allocation. The batcher counts its own executions (one thread
writes them). The meaning of each figure follows Triton's statistics extension:

- ``inference_count``: samples of successful requests (a batch of 8 counts 8; 1 per request
  for a model without a batch dimension); ``execution_count``: onnxruntime runs (a dynamic
  batch counts 1).
- ``success`` / ``fail``: requests and their time in the server's core, from arrival at the
  data plane to the answer's outputs (admission, validation, queue and compute).
- ``queue``: the wait for an execution slot or a batch; ``compute_infer``: onnxruntime's run
  (for a batched request, its batch's run); both per successful request.
- ``last_inference``: milliseconds since the epoch of the last answered request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["StatisticsSnapshot", "VersionStatistics"]


@dataclass(frozen=True)
class StatisticsSnapshot:
    """One model version's figures at one moment (the servicer turns them into Triton's message)."""

    name: str
    version: str
    last_inference_ms: int  # since the epoch; 0 before the first answer
    inference_count: int
    execution_count: int
    success_count: int
    success_ns: int
    fail_count: int
    fail_ns: int
    queue_ns: int
    compute_ns: int


class VersionStatistics:
    """One model version's counters; callers serialize updates (the DataPlane's lock)."""

    __slots__ = (
        "compute_ns",
        "direct_executions",
        "fail_count",
        "fail_ns",
        "inference_count",
        "last_answer_ns",
        "queue_ns",
        "success_count",
        "success_ns",
    )

    def __init__(self) -> None:
        self.inference_count = 0
        self.direct_executions = 0  # runs outside a batcher: one per successful request
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_ns = 0
        self.compute_ns = 0
        self.last_answer_ns = 0  # time.perf_counter_ns(); 0 before the first answer

    def record_success(
        self, batch: int, direct: bool, arrived_ns: int, finished_ns: int, queue_ns: int, compute_ns: int
    ) -> None:
        self.inference_count += batch
        self.direct_executions += direct
        self.success_count += 1
        self.success_ns += finished_ns - arrived_ns
        self.queue_ns += queue_ns
        self.compute_ns += compute_ns
        self.last_answer_ns = finished_ns

    def record_failure(self, arrived_ns: int, finished_ns: int) -> None:
        self.fail_count += 1
        self.fail_ns += finished_ns - arrived_ns
        self.last_answer_ns = finished_ns

    def snapshot(self, name: str, version: str, batched_executions: int) -> StatisticsSnapshot:
        """The counters now; ``batched_executions``: the runs of the model's batcher."""
        last_inference_ms = 0
        if self.last_answer_ns:
            # perf_counter has no epoch: its distance from now, subtracted from the wall clock's now.
            last_inference_ms = (time.time_ns() - (time.perf_counter_ns() - self.last_answer_ns)) // 1_000_000
        return StatisticsSnapshot(
            name=name,
            version=version,
            last_inference_ms=last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.direct_executions + batched_executions,
            success_count=self.success_count,
            success_ns=self.success_ns,
            fail_count=self.fail_count,
            fail_ns=self.fail_ns,
            queue_ns=self.queue_ns,
            compute_ns=self.compute_ns,
        )
