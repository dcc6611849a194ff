"""The stock tritonclient[grpc] client against our server: onnxruntime's numbers, and the answers of
Triton's extensions (ModelConfig, RepositoryIndex, ModelStatistics, ModelReady) that its tools call.

tritonclient registers its own ``inference.*`` descriptors in protobuf's default pool; ours
live in a private pool (scripts/gen_protos.py), so both load in one process.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.tools.testing.graphs import mlp, two_in_two_out

# The conftest fixtures' types (fixtures, not imports: tests/tools/chaos has its own conftest.py).
StartV2Server = Callable[..., Any]


tritonclient_grpc = pytest.importorskip("tritonclient.grpc")


def test_stock_tritonclient_infer_equals_onnxruntime(start_v2_server: StartV2Server) -> None:
    model = two_in_two_out()
    running = start_v2_server({"tail": model})
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 8)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    direct = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y1, y2 = direct.run(["y1", "y2"], {"a": a, "b": b})

    client = tritonclient_grpc.InferenceServerClient(url=running.target)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tail")
        metadata = client.get_model_metadata("tail")
        assert [t.name for t in metadata.inputs] == ["a", "b"]
        inputs = [
            tritonclient_grpc.InferInput("a", list(a.shape), "FP32"),
            tritonclient_grpc.InferInput("b", list(b.shape), "FP32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("tail", inputs, outputs=[tritonclient_grpc.InferRequestedOutput("y2")])
        np.testing.assert_allclose(result.as_numpy("y2"), y2, rtol=1e-6, atol=1e-7)
        assert result.as_numpy("y1") is None  # only what was asked
        everything = client.infer("tail", inputs)
        np.testing.assert_allclose(everything.as_numpy("y1"), y1, rtol=1e-6, atol=1e-7)
        response = everything.get_response()
        assert response.parameters["splitinf_compute_ns"].int64_param > 0
        assert "splitinf_queue_ns" in response.parameters
        with pytest.raises(tritonclient_grpc.InferenceServerException, match="StatusCode.NOT_FOUND"):
            client.infer("ghost", inputs)
    finally:
        client.close()


# --- Triton's extensions: ModelConfig, RepositoryIndex, ModelStatistics, ModelReady -------------

BATCHING_CONFIG = """
max_batch_size: 4
dynamic_batching { max_queue_delay_microseconds: 1000 }
"""


@pytest.fixture
def triton_world(
    start_v2_server: StartV2Server, write_v2_repository: Callable[..., Path], tmp_path: Path
) -> Iterator[tuple[Any, Any]]:
    """A server with ``mlp`` (config.pbtxt: dynamic batching, every request through the batcher)
    and ``tail`` (no config.pbtxt: run directly), and a stock tritonclient connected to it."""
    repo = write_v2_repository(tmp_path / "repo", {"mlp": mlp(), "tail": two_in_two_out()})
    (repo / "mlp" / "config.pbtxt").write_text(BATCHING_CONFIG)
    running = start_v2_server(repo=repo, batch_wait_when_idle=True)
    client = tritonclient_grpc.InferenceServerClient(url=running.target)
    try:
        yield running, client
    finally:
        client.close()


def _infer_mlp(client: Any, batch: int) -> None:
    x = tritonclient_grpc.InferInput("x", [batch, 16], "FP32")
    x.set_data_from_numpy(np.ones((batch, 16), np.float32))
    client.infer("mlp", [x])


def _infer_tail(client: Any, batch: int, a_width: int = 8) -> None:
    a = tritonclient_grpc.InferInput("a", [batch, a_width], "FP32")
    a.set_data_from_numpy(np.ones((batch, a_width), np.float32))
    b = tritonclient_grpc.InferInput("b", [batch, 4], "FP32")
    b.set_data_from_numpy(np.ones((batch, 4), np.float32))
    client.infer("tail", [a, b])


def test_model_config_is_config_pbtxt_completed_from_the_model(triton_world: tuple[Any, Any]) -> None:
    _, client = triton_world
    from tritonclient.grpc import model_config_pb2 as triton_mc

    batching = client.get_model_config("mlp").config
    assert (batching.name, batching.platform, batching.backend) == ("mlp", "onnxruntime_onnx", "onnxruntime")
    assert batching.max_batch_size == 4
    assert batching.dynamic_batching.max_queue_delay_microseconds == 1000
    # Batching: dims without the batch dimension, as Triton writes them.
    assert [(t.name, t.data_type, list(t.dims)) for t in batching.input] == [("x", triton_mc.TYPE_FP32, [16])]
    assert [(t.name, t.data_type, list(t.dims)) for t in batching.output] == [("y", triton_mc.TYPE_FP32, [4])]

    plain = client.get_model_config("tail", "1").config
    assert plain.max_batch_size == 0 and not plain.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in plain.input] == [("a", [-1, 8]), ("b", [-1, 4])]
    assert [(t.name, list(t.dims)) for t in plain.output] == [("y1", [-1, 6]), ("y2", [-1, 4])]
    for model, version in (("ghost", ""), ("tail", "7")):
        with pytest.raises(tritonclient_grpc.InferenceServerException, match="StatusCode.NOT_FOUND"):
            client.get_model_config(model, version)


def test_repository_index_lists_every_version_and_its_state(triton_world: tuple[Any, Any]) -> None:
    running, client = triton_world
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("mlp", "1", "READY"), ("tail", "1", "READY")]
    running.server.begin_drain()
    draining = client.get_model_repository_index()
    assert {m.state for m in draining.models} == {"UNAVAILABLE"}
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert not stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10).models


def test_model_ready_is_false_for_a_missing_version_or_model(triton_world: tuple[Any, Any]) -> None:
    _, client = triton_world
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "7")
    assert not client.is_model_ready("ghost")


def test_inference_statistics_count_exactly_the_requests_sent(triton_world: tuple[Any, Any]) -> None:
    _, client = triton_world
    before_ms = time.time_ns() // 1_000_000
    for batch in (1, 2, 3):  # one after another: each alone in its dynamic batch
        _infer_mlp(client, batch)
    _infer_tail(client, 3)
    _infer_tail(client, 2)
    with pytest.raises(tritonclient_grpc.InferenceServerException, match="INVALID_ARGUMENT"):
        _infer_tail(client, 1, a_width=5)
    after_ms = time.time_ns() // 1_000_000

    stats = {s.name: s for s in client.get_inference_statistics().model_stats}
    assert set(stats) == {"mlp", "tail"}
    batched, plain = stats["mlp"], stats["tail"]
    assert (batched.version, batched.inference_count, batched.execution_count) == ("1", 6, 3)
    # A model without batching counts one inference per request, as Triton does.
    assert (plain.inference_count, plain.execution_count) == (2, 2)
    assert (batched.inference_stats.success.count, batched.inference_stats.fail.count) == (3, 0)
    assert (plain.inference_stats.success.count, plain.inference_stats.fail.count) == (2, 1)
    for model in (batched, plain):
        inference = model.inference_stats
        assert inference.queue.count == inference.compute_infer.count == inference.success.count
        assert inference.compute_infer.ns > 0
        assert inference.success.ns >= inference.queue.ns + inference.compute_infer.ns
        assert before_ms <= model.last_inference <= after_ms
    assert plain.inference_stats.fail.ns > 0

    only = client.get_inference_statistics("tail", "1").model_stats
    assert [(s.name, s.version, s.inference_count) for s in only] == [("tail", "1", 2)]
    for model, version in (("ghost", ""), ("tail", "7")):
        with pytest.raises(tritonclient_grpc.InferenceServerException, match="StatusCode.NOT_FOUND"):
            client.get_inference_statistics(model, version)


def test_inference_statistics_lose_no_concurrent_request(triton_world: tuple[Any, Any]) -> None:
    running, _ = triton_world
    threads, per_thread = 6, 15

    def send() -> None:
        client = tritonclient_grpc.InferenceServerClient(url=running.target)
        try:
            for _ in range(per_thread):
                _infer_tail(client, 1)
                _infer_mlp(client, 2)
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(send) for _ in range(threads)]:
            future.result()
    client = tritonclient_grpc.InferenceServerClient(url=running.target)
    try:
        stats = {s.name: s for s in client.get_inference_statistics().model_stats}
    finally:
        client.close()
    sent = threads * per_thread
    assert (stats["tail"].inference_stats.success.count, stats["tail"].execution_count) == (sent, sent)
    assert stats["mlp"].inference_stats.success.count == sent and stats["mlp"].inference_count == 2 * sent
    # Concurrent mlp requests share batches (at most 4 samples, two requests of 2).
    assert sent / 2 <= stats["mlp"].execution_count <= sent


def test_requests_refused_while_draining_count_as_failures(triton_world: tuple[Any, Any]) -> None:
    running, client = triton_world
    running.server.begin_drain()
    with pytest.raises(tritonclient_grpc.InferenceServerException, match="UNAVAILABLE"):
        _infer_tail(client, 1)
    (tail,) = client.get_inference_statistics("tail").model_stats
    assert (tail.inference_stats.success.count, tail.inference_stats.fail.count, tail.inference_count) == (0, 1, 0)
    assert tail.inference_stats.fail.ns > 0 and tail.last_inference > 0
