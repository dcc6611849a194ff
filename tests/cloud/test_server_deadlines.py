"""Deadlines honoured (issue 14, finding 5), against a real server on port 0 with a slow model:
requests whose deadline passes while they wait are dropped unrun and counted; later requests are prompt."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from splitinf.cloud.deadlines import Expiry, RunTimes
from splitinf.errors import RequestDroppedError
from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.tools.testing.graphs import matmul_chain

StartV2Server = Callable[..., Any]
SIZE = 512


def sample(registry: Any, name: str, labels: dict[str, str]) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_requests_past_their_deadline_are_not_computed(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(
        {"slow": matmul_chain(64, SIZE)}, intra_op_threads=1, graph_optimization="disable", max_message_bytes=8 << 20
    )
    registry = running.server.metrics.registry
    request = encode_request(pb.ModelInferRequest(model_name="slow"), {"x": np.ones((SIZE, SIZE), np.float32)})
    with grpc.insecure_channel(running.target, options=[("grpc.max_receive_message_length", 8 << 20)]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        started = time.perf_counter()
        stub.ModelInfer(request, timeout=30)  # one run: the model's typical time becomes known
        one_run_s = time.perf_counter() - started
        calls = [stub.ModelInfer.future(request, timeout=1.0) for _ in range(20)]
        answered = sum(1 for call in calls if call.exception() is None)
        codes = {call.code() for call in calls if call.exception() is not None}
        assert codes <= {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert answered < 20, f"one run takes {one_run_s:.3f}s, 20 cannot all fit in 1 s"
        started = time.perf_counter()
        stub.ModelInfer(request, timeout=30)
        late_request_s = time.perf_counter() - started
    computed = sample(registry, "splitinf_compute_seconds_count", {"model": "slow"}) - 2  # the two outside calls
    dropped = sum(
        sample(registry, "splitinf_requests_dropped_total", {"model": "slow", "reason": reason})
        for reason in ("deadline", "cancelled", "too_late")
    )
    # A run is started only with its typical time left, so every computed request was answered in
    # time; one grace run, for a run that began in time and overran on this shared machine.
    assert computed <= answered + 1, (computed, answered, one_run_s)
    assert computed + dropped >= 20
    assert late_request_s < 1.0 + 3 * one_run_s, (late_request_s, one_run_s)


def test_expiry_refuses_what_cannot_finish_in_time() -> None:
    Expiry.after(None).check("m", needed_s=1e9)  # no deadline: always runs
    with pytest.raises(RequestDroppedError) as info:
        Expiry.after(0.5).check("m", needed_s=2.0)
    assert info.value.reason == "too_late" and info.value.code == "DEADLINE_EXCEEDED"
    with pytest.raises(RequestDroppedError, match="deadline passed") as info:
        Expiry.after(-1.0).check("m")
    with pytest.raises(RequestDroppedError, match="cancelled"):
        Expiry.after(10.0, active=lambda: False).check("m")
    times = RunTimes(window=3)
    for seconds in (0.1, 5.0, 0.2, 0.3):
        times.record(seconds)
    assert times.typical_s() == 0.3  # median of the last three: one slow run does not move it
