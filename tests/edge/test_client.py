"""The device client against real servers: results, measurements, and every error mapped to TransportError."""

from __future__ import annotations

import concurrent.futures
import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from splitinf.cloud.repository import sha256_bytes
from splitinf.edge.client import ChannelOptions, InferenceClient
from splitinf.errors import RemoteMismatchError, RemoteRejectedError, RemoteTimeoutError, RemoteUnavailableError
from splitinf.protocol import COMPUTE_NS_PARAMETER, QUEUE_NS_PARAMETER
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.tools.testing.graphs import mlp

# The conftest fixtures' types (fixtures, not imports: tests/tools/chaos has its own conftest.py).
StartV2Server = Callable[..., Any]


X = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)


def expected_y(x: np.ndarray = X) -> np.ndarray:
    session = ort.InferenceSession(mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


@pytest.fixture
def client(v2_server_port: int) -> Iterator[InferenceClient]:
    with InferenceClient(f"127.0.0.1:{v2_server_port}") as client:
        yield client


def test_infer_returns_outputs_and_measurements(client: InferenceClient) -> None:
    assert client.server_live(timeout_s=5) and client.server_ready(timeout_s=5) and client.model_ready("mlp", 5)
    result = client.infer("mlp", {"x": X}, timeout_s=5)
    np.testing.assert_allclose(result.outputs["y"], expected_y(), rtol=1e-6)
    assert result.model_sha256 == sha256_bytes(mlp().SerializeToString())
    assert 0 < result.server_compute_s < result.round_trip_s
    assert result.request_bytes > X.nbytes and result.response_bytes > 2 * 4 * 4
    assert result.model_version == "1"
    assert client.model_metadata("mlp", 5).inputs[0].name == "x"


def test_server_errors_are_rejected_with_their_status(client: InferenceClient) -> None:
    with pytest.raises(RemoteRejectedError) as info:
        client.infer("mlp", {"x": X[:, :3]}, timeout_s=5)
    assert info.value.code == "INVALID_ARGUMENT" and info.value.responded
    assert "shape [2, 3]" in str(info.value)
    with pytest.raises(RemoteRejectedError) as info:
        client.infer("ghost", {"x": X}, timeout_s=5)
    assert info.value.code == "NOT_FOUND"


def test_nothing_listening_is_unavailable_and_not_responded() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    with InferenceClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(RemoteUnavailableError) as info:
            client.infer("mlp", {"x": X}, timeout_s=5)
    assert info.value.code == "UNAVAILABLE" and not info.value.responded


def test_deadline_is_a_timeout(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(max_batch_size=4, batch_delay_ms=2000, batch_wait_when_idle=True)  # holds every call ~2 s
    with InferenceClient(running.target) as client:
        with pytest.raises(RemoteTimeoutError) as info:
            client.infer("mlp", {"x": X}, timeout_s=0.3)
    assert info.value.code == "DEADLINE_EXCEEDED" and not info.value.responded


class WrongAnswers(pb_grpc.GRPCInferenceServiceServicer):
    """A V2 server that answers, but not what was asked."""

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_name=request.model_name)
        if request.model_name == "garbled":
            response.outputs.add(name="y", datatype="FP32", shape=[2, 4])
            response.raw_output_contents.append(b"\0" * 5)
        if request.model_name == "queued":  # a server that says how long the request waited
            response.parameters[COMPUTE_NS_PARAMETER].int64_param = 2_000_000
            response.parameters[QUEUE_NS_PARAMETER].int64_param = 30_000_000
        if request.model_name == "odd":  # a server of another kind, with parameters of other types
            response.parameters[COMPUTE_NS_PARAMETER].string_param = "fast"
            response.parameters[QUEUE_NS_PARAMETER].bool_param = True
        return response


@pytest.fixture
def wrong_server() -> Iterator[str]:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(WrongAnswers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


def test_undecodable_answers_are_mismatches(wrong_server: str) -> None:
    with InferenceClient(wrong_server) as client:
        with pytest.raises(RemoteMismatchError, match="undecodable answer.*5 bytes, expected 32"):
            client.infer("garbled", {"x": X}, timeout_s=5)
        result = client.infer("empty", {"x": X}, timeout_s=5)  # judging the answer is the runtime's
        assert result.outputs == {} and result.model_sha256 is None and result.server_compute_s == 0.0


def test_gzip_compression_gives_the_same_answer(v2_server_port: int) -> None:
    options = ChannelOptions(compression="gzip")
    with InferenceClient(f"127.0.0.1:{v2_server_port}", options=options) as client:
        np.testing.assert_allclose(client.infer("mlp", {"x": X}, timeout_s=5).outputs["y"], expected_y(), rtol=1e-6)


def test_round_robin_spreads_calls_over_replicas(start_v2_server: StartV2Server) -> None:
    replicas = [start_v2_server(), start_v2_server()]
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    with InferenceClient(target, options=ChannelOptions(load_balancing="round_robin")) as client:
        for _ in range(20):
            client.infer("mlp", {"x": X}, timeout_s=5)
    counts = [
        r.server.metrics.registry.get_sample_value("splitinf_requests_total", {"model": "mlp", "code": "OK"})
        for r in replicas
    ]
    # round_robin only uses replicas already connected, so the first calls may all go to one.
    assert all(count and count >= 1 for count in counts), counts
    assert sum(c or 0 for c in counts) == 20


def test_channel_options_are_data() -> None:
    options = dict(ChannelOptions().grpc_options())
    assert options["grpc.enable_retries"] == 0
    assert options["grpc.keepalive_time_ms"] <= 2000 and options["grpc.keepalive_timeout_ms"] <= 2000
    assert options["grpc.max_reconnect_backoff_ms"] <= 2000
    assert "grpc.service_config" not in options
    assert '"round_robin"' in dict(ChannelOptions(load_balancing="round_robin").grpc_options())["grpc.service_config"]


def test_the_servers_queue_time_is_read_where_reported_and_tolerated_where_not(wrong_server: str) -> None:
    with InferenceClient(wrong_server) as client:
        queued = client.infer("queued", {"x": X}, timeout_s=5)
        assert queued.server_queue_s == pytest.approx(0.03) and queued.server_compute_s == pytest.approx(0.002)
        assert client.infer("empty", {"x": X}, timeout_s=5).server_queue_s is None
        odd = client.infer("odd", {"x": X}, timeout_s=5)
        assert odd.server_queue_s is None and odd.server_compute_s == 0.0
