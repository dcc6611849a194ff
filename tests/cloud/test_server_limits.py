"""Per-model request caps and memory (issue 14, finding 4), against real servers on port 0: a request over
its model's batch or bytes limit is refused before decoding; the largest legal request does not keep its memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest

from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.tools.models import digits_main_path
from splitinf.tools.testing.graphs import mlp
from splitinf.tools.testing.servers import ServerProcess

StartV2Server = Callable[..., Any]
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


def undecodable_batch(model: str, batch: int) -> pb.ModelInferRequest:
    """A request for ``batch`` rows of 16 floats whose raw bytes are one row short: decoding would refuse it."""
    request = encode_request(pb.ModelInferRequest(model_name=model), {"x": np.ones((batch, 16), np.float32)})
    request.raw_input_contents[0] = request.raw_input_contents[0][: -16 * 4]
    return request


def refusal(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def test_batch_over_the_models_maximum_is_refused_before_decoding(
    start_v2_server: StartV2Server, write_v2_repository: Callable[..., Path], tmp_path: Path
) -> None:
    repo = write_v2_repository(tmp_path, {"capped": mlp(), "fixed": mlp(batch=2)})
    (repo / "capped" / "config.pbtxt").write_text("max_batch_size: 4\n")  # no dynamic batching
    running = start_v2_server(repo=repo)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert "batch 5 of tensor 'x' exceeds max_batch_size 4" in refusal(stub, undecodable_batch("capped", 5))
        assert "batch 3 of tensor 'x' exceeds max_batch_size 2" in refusal(stub, undecodable_batch("fixed", 3))
        assert "raw contents are" in refusal(stub, undecodable_batch("capped", 4))  # within the cap: decoded
        x = np.ones((4, 16), np.float32)
        assert stub.ModelInfer(encode_request(pb.ModelInferRequest(model_name="capped"), {"x": x}), timeout=TIMEOUT)


def test_request_over_max_request_bytes_is_refused_before_decoding(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(max_request_bytes=64 * 16 * 4)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        details = refusal(stub, undecodable_batch("mlp", 65))
        assert "the request's tensors are 4160 bytes, over the limit of 4096 (max_request_bytes)" in details
        x = np.ones((64, 16), np.float32)
        assert stub.ModelInfer(encode_request(pb.ModelInferRequest(model_name="mlp"), {"x": x}), timeout=TIMEOUT)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_the_largest_legal_request_does_not_keep_its_memory(
    write_v2_repository: Callable[..., Path], tmp_path: Path
) -> None:
    repo = write_v2_repository(tmp_path, {"digits": onnx.load(digits_main_path())})
    with ServerProcess(repo, intra_op_threads=1) as server:
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        with grpc.insecure_channel(server.target, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            def infer(batch: int) -> None:
                x = {"image": np.ones((batch, 1, 8, 8), np.float32)}
                stub.ModelInfer(encode_request(pb.ModelInferRequest(model_name="digits"), x), timeout=120)

            for _ in range(30):
                infer(1)
            steady = server.rss_mib()
            infer(240_000)  # 61 MB of tensors, under the 64 MiB default limits
            for _ in range(30):
                infer(1)
            after = server.rss_mib()
    assert after <= steady * 1.10, f"RSS {steady:.0f} MiB before the large request, {after:.0f} MiB after"
