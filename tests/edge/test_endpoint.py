"""The device's local V2 endpoint, called with stock tritonclient: a real tail server, a real
runtime behind the endpoint, a real link through the fault proxy, severed and healed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_runtime import FAST_POLICY as POLICY  # tests/edge is on sys.path (rootdir-less test dirs)
from tritonclient.utils import InferenceServerException

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.edge.config import DeviceConfig
from splitinf.edge.endpoint import LATENCY_STAGES, serve_endpoint
from splitinf.edge.runtime import Runtime
from splitinf.tools.faults.proxy import DirectionFaults, FaultProxy, FaultSettings
from splitinf.tools.testing.plans import MLP_FALLBACK, MLP_FULL, run_mlp, write_mlp_plan_dir


def rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 16)).astype(np.float32)


@pytest.fixture
def device(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, FaultProxy, int, Runtime]]:
    """A tail server, the fault proxy in front of it, a runtime through the proxy, and its endpoint;
    ``request.param`` (indirect parametrization) is the device's budget in seconds, 0.3 by default."""
    plan = write_mlp_plan_dir(tmp_path / "plan", cuts=("relu_1",), local=False)
    server, server_port = create_server(ServerConfig(repo=plan / "server", port=0, metrics_port=None))
    proxy = FaultProxy(f"127.0.0.1:{server_port}").start()
    config = DeviceConfig(
        server=proxy.address,
        budget_s=getattr(request, "param", 0.3),
        policy=POLICY,
        probe_timeout_s=0.3,
        light_probe_interval_s=0.05,
        retry_backoff_s=0.005,
        retry_backoff_max_s=0.02,
    )
    runtime = Runtime(plan, config)
    endpoint, port = serve_endpoint(runtime, "127.0.0.1", 0)
    try:
        yield endpoint, proxy, port, runtime
    finally:
        endpoint.stop(grace=0)
        runtime.close()
        proxy.stop()
        server.stop(grace=0)


def ask(
    client: triton.InferenceServerClient, x: np.ndarray, model: str = "mlp", timeout_s: float = 10
) -> triton.InferResult:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("y")], client_timeout=timeout_s)


def parameters(result: triton.InferResult) -> dict[str, Any]:
    response = result.get_response()
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in response.parameters.items()}


def poll(predicate: Any, timeout_s: float = 15.0) -> Any:
    """Call ``predicate`` until it returns something truthy; each call is a real request, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
    raise AssertionError("condition not reached before the deadline")


def test_stock_tritonclient_gets_the_full_models_answers_through_split_fallback_and_recovery(
    device: tuple[Any, FaultProxy, int, Runtime],
) -> None:
    _, proxy, port, _runtime = device
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    metadata = client.get_model_metadata("mlp", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("x", "FP32", ["1", "16"])]
    assert [t["name"] for t in metadata["outputs"]] == ["y"]

    # healthy link: split, equal to the full model up to float rounding
    for seed in range(3):
        answer = ask(client, rows(seed))
        np.testing.assert_allclose(answer.as_numpy("y"), run_mlp(MLP_FULL, rows(seed)), rtol=1e-5, atol=1e-6)
        said = parameters(answer)
        assert (said["splitinf_path"], said["splitinf_kind"]) == ("split:relu_1:fp32", "split")
        assert said["splitinf_server_ns"] > 0 and said["splitinf_network_ns"] > 0
        stages = sum(said[f"splitinf_{stage}_ns"] for stage in LATENCY_STAGES if stage != "total")
        assert abs(stages - said["splitinf_total_ns"]) <= 5  # rounding of each stage to whole ns

    # severed link: the endpoint keeps answering, from the fallback, and says so
    proxy.set(FaultSettings(upstream=DirectionFaults(blackhole=True), downstream=DirectionFaults(blackhole=True)))
    answer = ask(client, rows(5))
    said = parameters(answer)
    assert said["splitinf_kind"] == "fallback" and said["splitinf_path"] == "fallback"
    assert said["splitinf_fallback_reason"] == "timeout" and said["splitinf_attempted"] == "split:relu_1:fp32"
    np.testing.assert_allclose(answer.as_numpy("y"), run_mlp(MLP_FALLBACK, rows(5)), rtol=1e-5, atol=1e-6)
    assert said["splitinf_wait_ns"] > 0  # the lost call's time is its own stage
    local = ask(client, rows(6))
    assert parameters(local)["splitinf_kind"] == "fallback" and parameters(local)["splitinf_mode"] == "fallback"

    # healed: the probes bring it back, and answers are split again
    proxy.clear()
    healed = poll(lambda: (a := ask(client, rows(7))) and parameters(a)["splitinf_kind"] == "split" and a)
    np.testing.assert_allclose(healed.as_numpy("y"), run_mlp(MLP_FULL, rows(7)), rtol=1e-5, atol=1e-6)
    client.close()


def test_wrong_requests_get_the_right_status_and_the_endpoint_keeps_serving(
    device: tuple[Any, FaultProxy, int, Runtime],
) -> None:
    _, _, port, _ = device
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as unknown:
        ask(client, rows(0), model="nope")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match=r"shape \[2, 16\]") as shape:
        ask(client, np.zeros((2, 16), dtype=np.float32))
    assert shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert parameters(ask(client, rows(1)))["splitinf_kind"] == "split"
    client.close()


def test_health_and_a_renamed_model(tmp_path: Path) -> None:
    plan = write_mlp_plan_dir(tmp_path / "plan", cuts=("x",), local=False)
    with Runtime(plan, DeviceConfig(server=None)) as runtime:  # no server at all: every answer is local
        endpoint, port = serve_endpoint(runtime, model_name="digits")
        with endpoint, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            client = triton.InferenceServerClient(f"127.0.0.1:{port}")
            assert client.get_server_metadata(as_json=True)["name"] == "splitinf-device"
            answer = ask(client, rows(2), model="digits")
            assert parameters(answer)["splitinf_path"] == "fallback"
            with pytest.raises(InferenceServerException, match="serves 'digits'"):
                client.get_model_metadata("mlp")
            client.close()


@pytest.mark.parametrize("device", [30.0], indirect=True)
def test_a_callers_deadline_shorter_than_the_budget_is_the_requests_budget(
    device: tuple[Any, FaultProxy, int, Runtime],
) -> None:
    _, proxy, port, _ = device
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert parameters(ask(client, rows(0)))["splitinf_kind"] == "split"
    proxy.set(FaultSettings(upstream=DirectionFaults(blackhole=True), downstream=DirectionFaults(blackhole=True)))
    # the device would wait 30 s for the severed link; the caller's 2 s deadline makes it fall back in time
    answer = ask(client, rows(1), timeout_s=2.0)
    said = parameters(answer)
    assert said["splitinf_kind"] == "fallback" and said["splitinf_fallback_reason"] == "timeout"
    assert said["splitinf_total_ns"] < 2e9
    client.close()
