"""The tail server against real gRPC calls on 127.0.0.1 (port 0): every RPC, each bad input and its status."""

from __future__ import annotations

import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from onnx import TensorProto, helper

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.cloud.dataplane import DataPlane
from splitinf.cloud.repository import load_repository, sha256_bytes
from splitinf.cloud.servicer import InferenceServicer
from splitinf.contract.files import sha256_file
from splitinf.errors import ConfigError, IntegrityError
from splitinf.protocol import COMPUTE_NS_PARAMETER, MODEL_SHA256_PARAMETER, QUEUE_NS_PARAMETER, encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.protocol.tensors import decode_response_outputs
from splitinf.tools.testing.graphs import mlp

# The conftest fixtures' types (fixtures, not imports: tests/tools/chaos has its own conftest.py).
StartV2Server = Callable[..., Any]

TIMEOUT = 10.0


def broadcast_add() -> onnx.ModelProto:
    """y = a + b with independent symbolic lengths: onnxruntime fails when they cannot broadcast."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "broadcast_add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["A"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["B"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["Y"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def channel(start_v2_server: StartV2Server) -> Iterator[grpc.Channel]:
    running = start_v2_server({"mlp": mlp(), "add": broadcast_add()}, max_message_bytes=1024 * 1024)
    with grpc.insecure_channel(running.target) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def infer_request(model: str, **inputs: np.ndarray) -> pb.ModelInferRequest:
    return encode_request(pb.ModelInferRequest(model_name=model), inputs)


def expect_status(call: object, request: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def run_directly(model: onnx.ModelProto, **inputs: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)  # type: ignore[no-any-return]


def test_health_rpcs_and_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=TIMEOUT).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="1"), timeout=TIMEOUT).ready
    server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=TIMEOUT)
    assert server.name == "splitinf" and server.version
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"), timeout=TIMEOUT)
    assert meta.name == "mlp" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 4])]


def test_model_infer_equals_onnxruntime_and_reports_compute_and_sha(
    stub: pb_grpc.GRPCInferenceServiceStub, start_v2_server: StartV2Server
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    request = infer_request("mlp", x=x)
    request.id = "req-1"
    response = stub.ModelInfer(request, timeout=TIMEOUT)
    assert response.model_name == "mlp" and response.model_version == "1" and response.id == "req-1"
    np.testing.assert_allclose(decode_response_outputs(response)["y"], run_directly(mlp(), x=x)[0], rtol=1e-6)
    assert response.parameters[COMPUTE_NS_PARAMETER].int64_param > 0
    assert QUEUE_NS_PARAMETER in response.parameters and response.parameters[QUEUE_NS_PARAMETER].int64_param >= 0
    expected_sha = sha256_bytes(mlp().SerializeToString())
    assert response.parameters[MODEL_SHA256_PARAMETER].string_param == expected_sha


def test_stream_infer_reports_a_bad_request_and_goes_on(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    good = np.ones((1, 16), np.float32)
    requests = [infer_request("mlp", x=good), infer_request("nope", x=good), infer_request("mlp", x=2 * good)]
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=TIMEOUT))
    assert len(responses) == 3
    assert responses[0].error_message == "" and responses[2].error_message == ""
    assert "NOT_FOUND" in responses[1].error_message and "nope" in responses[1].error_message
    first = decode_response_outputs(responses[0].infer_response)["y"]
    third = decode_response_outputs(responses[2].infer_response)["y"]
    np.testing.assert_allclose(third, run_directly(mlp(), x=2 * good)[0], rtol=1e-6)
    assert not np.allclose(first, third)


def test_unknown_model_and_version_are_not_found(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = np.ones((1, 16), np.float32)
    assert "unknown model 'nope'" in expect_status(
        stub.ModelInfer, infer_request("nope", x=x), grpc.StatusCode.NOT_FOUND
    )
    request = infer_request("mlp", x=x)
    request.model_version = "7"
    assert "no version '7'" in expect_status(stub.ModelInfer, request, grpc.StatusCode.NOT_FOUND)
    # As Triton: ModelReady answers "not ready" for a model or version it does not have.
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=TIMEOUT).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="7"), timeout=TIMEOUT).ready
    expect_status(stub.ModelMetadata, pb.ModelMetadataRequest(name="mlp", version="3"), grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.ones((1, 16), np.float64)}, "'x': dtype float64 does not match the expected float32"),
        ({"x": np.ones((1, 15), np.float32)}, r"'x': shape [1, 15] does not match the expected ['?', 16]"),
        ({"x": np.ones((16,), np.float32)}, r"'x': shape [16] does not match"),
        ({"z": np.ones((1, 16), np.float32)}, "missing input(s) ['x']; unexpected input(s) ['z']"),
        ({}, "missing input(s) ['x']"),
    ],
)
def test_wrong_inputs_are_invalid_argument_naming_tensor_expected_and_got(
    stub: pb_grpc.GRPCInferenceServiceStub, inputs: dict[str, np.ndarray], message: str
) -> None:
    details = expect_status(stub.ModelInfer, infer_request("mlp", **inputs), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in details


def test_wrong_raw_length_unknown_datatype_and_unknown_output_are_invalid_argument(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = infer_request("mlp", x=np.ones((2, 16), np.float32))
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    assert "124 bytes, expected 128" in expect_status(stub.ModelInfer, request, grpc.StatusCode.INVALID_ARGUMENT)
    request = infer_request("mlp", x=np.ones((2, 16), np.float32))
    request.inputs[0].datatype = "BYTES"
    assert "BYTES" in expect_status(stub.ModelInfer, request, grpc.StatusCode.INVALID_ARGUMENT)
    request = infer_request("mlp", x=np.ones((2, 16), np.float32))
    request.outputs.add(name="logits")
    assert "unknown output(s) ['logits']" in expect_status(stub.ModelInfer, request, grpc.StatusCode.INVALID_ARGUMENT)


def test_oversized_message_is_resource_exhausted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    big = np.zeros((20_000, 16), np.float32)  # 1.28 MB > the 1 MiB limit of this server
    expect_status(stub.ModelInfer, infer_request("mlp", x=big), grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_onnxruntime_failure_is_internal_with_its_message(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = infer_request("add", a=np.ones(3, np.float32), b=np.ones(2, np.float32))
    details = expect_status(stub.ModelInfer, request, grpc.StatusCode.INTERNAL)
    assert "model 'add' failed in onnxruntime" in details and "Add" in details


def test_server_keeps_serving_after_every_bad_request(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    garbage = [
        infer_request("mlp", x=np.ones((1, 3), np.int64)),
        infer_request("add", a=np.ones(5, np.float32), b=np.ones(4, np.float32)),
        pb.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\x00" * 7]),
    ]
    for request in garbage * 5:
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request, timeout=TIMEOUT)
    ok = stub.ModelInfer(infer_request("add", a=np.ones(2, np.float32), b=np.ones(2, np.float32)), timeout=TIMEOUT)
    np.testing.assert_array_equal(decode_response_outputs(ok)["y"], [2, 2])


def test_bytes_that_are_not_a_request_are_refused_and_the_server_lives_on(
    channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:

    raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError):
        raw_call(b"\xff\xff\xff\xff not protobuf", timeout=TIMEOUT)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live


def test_version_selection_defaults_to_the_highest(
    write_v2_repository: Callable[..., Path], start_v2_server: StartV2Server, tmp_path: Path
) -> None:
    write_v2_repository(tmp_path, {"m": mlp(seed=1)}, version="1")
    write_v2_repository(tmp_path, {"m": mlp(seed=2)}, version="10")
    running = start_v2_server(repo=tmp_path)
    x = np.ones((1, 16), np.float32)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        latest = stub.ModelInfer(infer_request("m", x=x), timeout=TIMEOUT)
        request = infer_request("m", x=x)
        request.model_version = "1"
        first = stub.ModelInfer(request, timeout=TIMEOUT)
    assert latest.model_version == "10" and first.model_version == "1"
    np.testing.assert_allclose(decode_response_outputs(latest)["y"], run_directly(mlp(seed=2), x=x)[0], rtol=1e-6)
    np.testing.assert_allclose(decode_response_outputs(first)["y"], run_directly(mlp(seed=1), x=x)[0], rtol=1e-6)


def test_health_checking_and_reflection(start_v2_server: StartV2Server) -> None:
    running = start_v2_server()
    with grpc.insecure_channel(running.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        file = database.FindFileContainingSymbol("inference.ModelInferRequest")
        assert file.package == "inference"
        running.server.drain(grace_s=1.0)
    assert not running.server.dataplane.ready


def test_metrics_endpoint_counts_requests_failures_bytes_and_times(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(metrics_port=0)
    other = start_v2_server()  # a second server: its own registry, nothing shared
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            stub.ModelInfer(infer_request("mlp", x=np.ones((2, 16), np.float32)), timeout=TIMEOUT)
        expect_status(
            stub.ModelInfer, infer_request("mlp", x=np.ones((2, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT
        )
    assert running.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.server.metrics_port}/metrics", timeout=TIMEOUT).read()
    body = text.decode()
    assert 'splitinf_requests_total{code="OK",model="mlp"} 3.0' in body
    assert 'splitinf_requests_total{code="INVALID_ARGUMENT",model="mlp"} 1.0' in body
    assert 'splitinf_request_failures_total{code="INVALID_ARGUMENT",model="mlp"} 1.0' in body
    assert 'splitinf_compute_seconds_count{model="mlp"} 3.0' in body
    assert 'splitinf_compute_seconds_bucket{le="0.0005",model="mlp"}' in body
    assert 'splitinf_queue_seconds_count{model="mlp"} 3.0' in body
    assert 'splitinf_batch_size_sum{model="mlp"} 6.0' in body
    assert "splitinf_inflight_requests 0.0" in body
    request_bytes = running.server.metrics.registry.get_sample_value("splitinf_request_bytes_total", {"model": "mlp"})
    assert request_bytes is not None and request_bytes >= 3 * 2 * 16 * 4
    assert (
        other.server.metrics.registry.get_sample_value("splitinf_requests_total", {"model": "mlp", "code": "OK"})
        is None
    )


def test_manifest_mismatch_refuses_to_load(write_v2_repository: Callable[..., Path], tmp_path: Path) -> None:
    write_v2_repository(tmp_path, {"tail": mlp()})
    (tmp_path / "tail" / "1" / "manifest.json").write_text('{"format": 1, "parts": {"tail": {"sha256": "00ff"}}}')
    with pytest.raises(IntegrityError, match="refusing to load .*model.onnx: its sha256 is .* expects 00ff"):
        create_server(ServerConfig(repo=tmp_path, port=0, metrics_port=None))
    digest = sha256_file(tmp_path / "tail" / "1" / "model.onnx")
    (tmp_path / "tail" / "1" / "manifest.json").write_text(f'{{"parts": {{"tail": {{"sha256": "{digest}"}}}}}}')
    assert load_repository(tmp_path)["tail"]["1"].sha256 == digest


def test_empty_repository_and_busy_port_are_config_errors(start_v2_server: StartV2Server, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no models"):
        create_server(ServerConfig(repo=tmp_path, port=0, metrics_port=None))
    running = start_v2_server()
    with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1:"):
        create_server(ServerConfig(repo=running.repo, port=running.port, metrics_port=None))


def test_backpressure_refuses_beyond_max_inflight(start_v2_server: StartV2Server) -> None:
    # A long batching delay holds the first request inside the server, so the limit is reached deterministically.
    running = start_v2_server(max_inflight=1, max_batch_size=4, batch_delay_ms=1500, batch_wait_when_idle=True)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(infer_request("mlp", x=np.ones((1, 16), np.float32)), timeout=TIMEOUT)
        dataplane = running.server.dataplane
        assert wait_until(lambda: dataplane.inflight == 1)
        details = expect_status(
            stub.ModelInfer, infer_request("mlp", x=np.ones((1, 16), np.float32)), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert "limit of 1 requests in flight" in details
        assert first.result().model_name == "mlp"
        assert stub.ModelInfer(infer_request("mlp", x=np.ones((1, 16), np.float32)), timeout=TIMEOUT).outputs


def wait_until(predicate: object, timeout_s: float = 10.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if predicate():  # type: ignore[operator]
            return True
        done.wait(0.01)
    return False


@pytest.mark.parametrize("wait_when_idle", [True, False])
def test_dynamic_batching_answers_each_request_with_its_own_rows(
    start_v2_server: StartV2Server, wait_when_idle: bool
) -> None:
    running = start_v2_server(
        max_batch_size=8, batch_delay_ms=300, max_inflight=16, batch_wait_when_idle=wait_when_idle
    )
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1 + i % 2, 16)).astype(np.float32) for i in range(6)]  # 9 samples in all
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(infer_request("mlp", x=x), timeout=TIMEOUT) for x in inputs]
        responses = [f.result() for f in futures]
        too_big = infer_request("mlp", x=np.ones((9, 16), np.float32))
        assert "exceeds max_batch_size 8" in expect_status(stub.ModelInfer, too_big, grpc.StatusCode.INVALID_ARGUMENT)
    for x, response in zip(inputs, responses, strict=True):
        np.testing.assert_allclose(decode_response_outputs(response)["y"], run_directly(mlp(), x=x)[0], rtol=1e-5)
    registry = running.server.metrics.registry
    executions = registry.get_sample_value("splitinf_batch_size_count", {"model": "mlp"})
    samples = registry.get_sample_value("splitinf_batch_size_sum", {"model": "mlp"})
    assert samples == 9
    assert executions is not None and executions <= len(inputs)
    if wait_when_idle:  # Triton's rule: the first request always waits 300 ms for the others to join
        assert executions < len(inputs), "requests were not batched together"


def test_batching_config_from_config_pbtxt(
    write_v2_repository: Callable[..., Path], start_v2_server: StartV2Server, tmp_path: Path
) -> None:
    write_v2_repository(tmp_path, {"mlp": mlp()})
    (tmp_path / "mlp" / "config.pbtxt").write_text(
        'name: "mlp"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    )
    model = load_repository(tmp_path)["mlp"]["1"]
    assert (model.max_batch_size, model.batch_delay_s) == (4, 0.002)
    assert load_repository(tmp_path, max_batch_size=0)["mlp"]["1"].max_batch_size == 0


def test_servicer_unit_maps_errors_to_status_without_a_network() -> None:
    """grpcio-testing drives the servicer directly: the error -> status mapping in one place."""
    dataplane = DataPlane({}, max_inflight=2)
    dataplane.set_ready(True)
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    server = grpc_testing.server_from_dictionary(
        {service: InferenceServicer(dataplane)}, grpc_testing.strict_real_time()
    )
    call = server.invoke_unary_unary(
        service.methods_by_name["ModelInfer"], (), infer_request("ghost", x=np.ones((1, 2), np.float32)), None
    )
    _response, _metadata, code, details = call.termination()
    assert code == grpc.StatusCode.NOT_FOUND and "unknown model 'ghost'" in details
    call = server.invoke_unary_unary(service.methods_by_name["ServerLive"], (), pb.ServerLiveRequest(), None)
    response, _metadata, code, _details = call.termination()
    assert code == grpc.StatusCode.OK and response.live


def test_batching_does_not_wait_when_no_other_request_is_in_the_server(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(max_batch_size=8, batch_delay_ms=60_000)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # A deadline far below the batching delay: only an immediate run can answer in time.
        response = stub.ModelInfer(infer_request("mlp", x=np.ones((2, 16), np.float32)), timeout=5)
    np.testing.assert_allclose(
        decode_response_outputs(response)["y"], run_directly(mlp(), x=np.ones((2, 16), np.float32))[0], rtol=1e-6
    )


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_malformed_requests_do_not_leak(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(metrics_port=0)
    payload = np.ones((4096, 16), np.float32)  # 256 KiB per request: 400 leaked requests would be ~100 MB
    bad_requests = [
        infer_request("mlp", x=payload[:, :15].copy()),  # wrong shape
        infer_request(f"ghost-{0}", x=payload),  # unknown model
        pb.ModelInferRequest(model_name="mlp", raw_input_contents=[payload.tobytes()]),  # no tensor header
    ]
    with grpc.insecure_channel(running.target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def hammer(rounds: int) -> None:
            for index in range(rounds):
                request = bad_requests[index % len(bad_requests)]
                if index % len(bad_requests) == 1:
                    request.model_name = f"ghost-{index}"  # a new name every time
                with pytest.raises(grpc.RpcError):
                    stub.ModelInfer(request, timeout=TIMEOUT)

        hammer(60)  # warm up allocator pools
        before = current_rss_bytes()
        hammer(400)
        grown = current_rss_bytes() - before
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live
    assert grown < 40 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB over 400 bad requests"
    registry = running.server.metrics.registry
    assert registry.get_sample_value("splitinf_requests_total", {"model": "_unknown", "code": "NOT_FOUND"}) == 153
    assert registry.get_sample_value("splitinf_requests_total", {"model": "ghost-4", "code": "NOT_FOUND"}) is None
