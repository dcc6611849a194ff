"""Capacity one client cannot take (issue 14, finding 3), against a real server on port 0: idle streams
from one client are bounded and time out; health, liveness and other clients are answered meanwhile."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinf.cloud.config import ServerConfig
from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc

StartV2Server = Callable[..., Any]
TIMEOUT = 10.0
X = {"x": np.ones((1, 16), np.float32)}


class IdleStream:
    """A ModelStreamInfer call that sends nothing until told to; ``end()`` closes its request side."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub):
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = stub.ModelStreamInfer(self._iterate(), timeout=60)

    def _iterate(self) -> Iterator[pb.ModelInferRequest]:
        while (item := self._requests.get()) is not None:
            yield item

    def send(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        self._requests.put(request)
        return next(self.call)

    def end(self) -> None:
        self._requests.put(None)
        self.call.cancel()


def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


def refused_code(stream: IdleStream, wait_s: float = TIMEOUT) -> grpc.StatusCode | None:
    """The status a stream ended with within ``wait_s``, or None while it is still open."""
    done = threading.Event()
    stream.call.add_done_callback(lambda _call: done.set())
    return stream.call.code() if done.wait(wait_s) else None


def test_idle_streams_of_one_client_cannot_stop_the_server(start_v2_server: StartV2Server) -> None:
    # The defaults: 80 streams took all 72 threads of a server before (issue 14); now one client holds 8.
    limit, attempts = ServerConfig.max_streams_per_client, 80
    running = start_v2_server()
    with grpc.insecure_channel(running.target) as hog, grpc.insecure_channel(running.target) as other:
        stub = pb_grpc.GRPCInferenceServiceStub(hog)
        streams = [IdleStream(stub) for _ in range(attempts)]
        try:
            # Which streams the server admits depends on arrival order: wait for the refusals, then check.
            assert wait_until(lambda: sum(s.call.done() for s in streams) >= attempts - limit)
            refused = [s for s in streams if s.call.done()]
            assert len(refused) == attempts - limit
            assert {s.call.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert f"holds {limit} open streams, the limit per client" in str(refused[-1].call.details())
            health = health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            other_stub = pb_grpc.GRPCInferenceServiceStub(other)
            assert other_stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live
            assert other_stub.ModelInfer(encode_request(pb.ModelInferRequest(model_name="mlp"), X), timeout=TIMEOUT)
            # the streams that were admitted still serve
            held = next(s for s in streams if not s.call.done())
            answer = held.send(encode_request(pb.ModelInferRequest(model_name="mlp"), X))
            assert answer.infer_response.model_name == "mlp" and not answer.error_message
        finally:
            for stream in streams:
                stream.end()


def test_an_idle_stream_is_cancelled_and_frees_its_place(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(max_streams_per_client=1, stream_idle_timeout_s=0.3)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = IdleStream(stub)
        try:
            assert first.send(encode_request(pb.ModelInferRequest(model_name="mlp"), X)).infer_response.outputs
            assert refused_code(first) == grpc.StatusCode.CANCELLED  # idle for 0.3 s after its answer
            second = IdleStream(stub)
            assert second.send(encode_request(pb.ModelInferRequest(model_name="mlp"), X)).infer_response.outputs
            second.end()
        finally:
            first.end()


@pytest.mark.parametrize("key", ["max_streams", "max_streams_per_client"])
def test_stream_limits_must_be_positive(start_v2_server: StartV2Server, key: str) -> None:
    from splitinf.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        start_v2_server(**{key: 0})
